"""freshet's steps and the pieces they share. Imports no Airflow."""

import os

# MLflow phones home on import unless told not to; freshet runs offline and in air-gapped clusters.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
