"""freshet's Airflow side: the step-runner factory and the DDP training operator.

Airflow adds `plugins/` to `sys.path`, so DAG files import `freshet_airflow` directly; the package
is also installed with the project (pyproject) for tests and containers.
"""

from freshet_airflow.factory import gate, gate_passed, step, train_step
from freshet_airflow.operators import DDPTrainOperator, FreshetStepOperator

__all__ = ["DDPTrainOperator", "FreshetStepOperator", "gate", "gate_passed", "step", "train_step"]
