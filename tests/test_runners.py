"""The step runners build the same step command for local, docker and kubernetes runners."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from freshet_airflow import control, dag_settings, runners
from freshet_airflow.operators import DDPTrainOperator, FreshetStepOperator, parse_manifest, resolve_nproc


def write_config(tmp_path, mode: str, gpus: int = 0) -> str:
    path = tmp_path / f"{mode}.yaml"
    path.write_text(yaml.safe_dump({
        "labels": ["a", "b"], "artifact_root": str(tmp_path / "artifacts"),
        "mlflow": {"tracking_uri": "http://mlflow:5000"},
        "crawl": {"sources": [{"name": "s", "url": "https://example.org/feed/"}]},
        "runner": {"mode": mode, "image": "freshet:test", "gpus": gpus, "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
                   "container_config_path": "/opt/freshet/configs/pipeline.yaml"},
        "train": {"nproc_per_node": "auto", "cpu_processes": 2},
    }))
    dag_settings.pipeline_config.cache_clear()
    return str(path)


def test_local_runner_runs_the_step_module_in_the_worker(tmp_path):
    operator = runners.step("clean", write_config(tmp_path, "local"))
    assert isinstance(operator, FreshetStepOperator)
    assert operator.command()[1:3] == ["-m", "tasks.clean"]
    assert operator.arguments[operator.arguments.index("--input") + 1] == "validate"
    assert "{{ run_id }}" in operator.arguments


def test_docker_runner_runs_the_same_command_in_our_image(tmp_path):
    from airflow.providers.docker.operators.docker import DockerOperator

    operator = runners.step("clean", write_config(tmp_path, "docker"))
    assert isinstance(operator, DockerOperator)
    assert operator.image == "freshet:test"
    assert operator.command[:3] == ["python", "-m", "tasks.clean"]
    assert "/opt/freshet/configs/pipeline.yaml" in operator.command
    assert operator.environment["FRESHET_DAG_RUN_ID"] == "{{ run_id }}"


def test_docker_train_requests_gpus_and_launches_torchrun(tmp_path):
    operator = runners.train_step(write_config(tmp_path, "docker", gpus=1))
    assert operator.command[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nproc-per-node=gpu" in operator.command
    assert operator.device_requests[0].count == 1


def test_kubernetes_runner_writes_the_manifest_where_the_pod_sidecar_reads_it(tmp_path):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    operator = runners.step("evaluate", write_config(tmp_path, "kubernetes"))
    assert isinstance(operator, KubernetesPodOperator)
    assert operator.cmds == ["python"]
    assert operator.arguments[:2] == ["-m", "tasks.evaluate"]
    assert operator.arguments[-2:] == ["--xcom-file", "/airflow/xcom/return.json"]
    assert operator.do_xcom_push


def test_ddp_operator_divides_cores_among_ranks(tmp_path):
    operator = runners.train_step(write_config(tmp_path, "local"))
    assert isinstance(operator, DDPTrainOperator)
    operator.env["FRESHET_DAG_RUN_ID"] = "manual__x"
    command = operator.command()
    nproc = resolve_nproc("auto", 2)
    assert f"--nproc-per-node={nproc}" in command and "--standalone" in command
    assert command[command.index("-m", 2) + 1] == "tasks.train"
    threads = int(operator.process_env()["OMP_NUM_THREADS"])
    assert threads == max(1, len(os.sched_getaffinity(0)) // nproc)


def test_manifest_is_the_last_manifest_line_of_the_output():
    output = 'log line\n{"step": "clean", "run_id": "r"}\nmore log\n'
    assert parse_manifest(output, "clean")["run_id"] == "r"
    with pytest.raises(ValueError, match="printed no manifest"):
        parse_manifest("only logs\n", "clean")


def compress_manifest(verdict) -> dict:
    """A compress manifest's JSON with the gate verdict `verdict` (built by the gate policy), as compress writes it."""
    from tasks.compress import CompressFacts
    from tasks.gate_policy import final_verdict

    facts = CompressFacts(gate=final_verdict(verdict.facts(), [], "fp32"), serving_variant="fp32",
                          serving_artifact=None, serving_model=None, variants={}, champion_version=None)
    return {"step": "compress", "facts": facts.dump()}


def test_gate_callable_short_circuits_on_rejection():
    from tasks.config import GatePolicy
    from tasks.gate_policy import judge_candidate

    policy = GatePolicy(floors={"frozen.macro_f1": 0.5})
    rejected = judge_candidate(policy, {"frozen": {"macro_f1": 0.3, "rows": 50}}, None)
    passed = judge_candidate(policy, {"frozen": {"macro_f1": 0.8, "rows": 50}}, None)
    assert control.gate_passed(compress_manifest(rejected)) is False
    assert control.gate_passed(compress_manifest(passed)) is True


def test_on_kill_ends_the_whole_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    script = (f"import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
              f"open('{marker}','w').write(str(p.pid)); time.sleep(60)")
    operator = FreshetStepOperator(task_id="sleepy", step="noop", arguments=[])
    operator.command = lambda: [sys.executable, "-c", script]
    operator._process = subprocess.Popen(operator.command(), start_new_session=True)
    for _ in range(100):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.05)
    grandchild = int(marker.read_text())
    operator.on_kill()
    time.sleep(0.2)
    assert operator._process.poll() is not None
    assert not _alive(grandchild), "the step's own child outlived the killed task"


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by init) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_only_network_steps_retry_with_backoff_whatever_the_runner(tmp_path):
    for mode in ("local", "docker"):
        config_path = write_config(tmp_path, mode)
        crawl = runners.step("crawl", config_path)
        assert crawl.retries == 3 and crawl.retry_exponential_backoff
        assert crawl.retry_delay.total_seconds() == 30 and crawl.max_retry_delay.total_seconds() == 600
        assert runners.step("evaluate", config_path).retries == 0
    # An explicit choice in the DAG file still wins.
    assert runners.step("register", write_config(tmp_path, "local"), retries=7).retries == 7


def test_training_runs_in_the_configured_pool(tmp_path):
    config_path = write_config(tmp_path, "local")
    assert "pool" not in dag_settings.training_settings(config_path)  # no pool unless one is configured (it must exist)
    with open(config_path) as handle:
        data = yaml.safe_load(handle)
    data["schedule"] = {"training_pool": "freshet_training"}
    with open(config_path, "w") as handle:
        yaml.safe_dump(data, handle)
    dag_settings.pipeline_config.cache_clear()
    operator = runners.train_step(config_path, **dag_settings.training_settings(config_path))
    assert operator.pool == "freshet_training" and operator.pool_slots == 1 and operator.retries == 1


def test_decide_is_a_step_like_the_others_and_its_verdict_drives_a_short_circuit(tmp_path):
    from freshet_airflow import task

    config_path = write_config(tmp_path, "docker")
    decide = task("decide", config_path)
    assert decide.command[:3] == ["python", "-m", "tasks.decide"]
    assert "--force-training={{ params.force_training }}" in decide.command
    should_train = task("should_train", config_path)
    assert type(should_train).__name__ == "ShortCircuitOperator" and should_train.retries == 0
    from tasks.config import load_config
    from tasks.decide import DecideFacts
    from tasks.decide import decide as decide_policy

    train, reason = decide_policy(load_config(config_path), has_champion=True, new_rows=3, drift={})
    facts = DecideFacts(train=train, reason=reason, has_champion=True, forced=False, last_training=None,
                        untrained_snapshots=[], drift={}, production_drift={"pending": [], "consumed": []})
    assert control.training_decided({"step": "decide", "facts": facts.dump()}) == (False, reason)
    assert reason.startswith("only 3 new rows")


def test_the_cli_runs_every_registered_step_decide_included(capsys):
    from tasks.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["step", "decide", "--help"])
    assert exited.value.code == 0
    assert "--force-training" in capsys.readouterr().out
    assert main(["step", "nonsense"]) == 2


FAILING_RANK = '''
import os, sys
from torch.distributed.elastic.multiprocessing.errors import record

@record
def main():
    if os.environ["RANK"] == "1":
        if os.environ.get("HOW") == "step-error":
            print("freshet train: error: train rank 1: the shard of row 7 is empty", file=sys.stderr)
            return 2
        raise ValueError("rank one cannot parse row 7")
    import time
    time.sleep(30)  # rank 0 waits; torch elastic ends it when rank 1 fails
    return 0

raise SystemExit(main())
'''


@pytest.mark.parametrize("how", ["exception", "step-error"])
def test_a_failed_ranks_own_reason_reaches_the_training_tasks_exception(tmp_path, how):
    """Rank 1 (whose output the task log does not show) fails: the exception names its reason, from its torch
    elastic error file (an exception, `@record`) or its own error line (a StepError printed by the step CLI),
    never only torch elastic's "ChildFailedError ... error_file: <N/A>"."""
    from freshet_airflow.operators import StepFailed

    (tmp_path / "failing_rank.py").write_text(FAILING_RANK)
    operator = DDPTrainOperator(task_id="train", arguments=[], nproc_per_node=2, max_restarts=0,
                                env={"PYTHONPATH": str(tmp_path), "HOW": how})
    operator.module = "failing_rank"
    with pytest.raises(StepFailed) as failed:
        operator.execute(context={})
    message = str(failed.value)
    assert message.startswith("step train exited with 1: rank 1")
    if how == "exception":
        assert "rank 1 (its error file): ValueError: rank one cannot parse row 7" in message
        assert 'raise ValueError("rank one cannot parse row 7")' in message, "the traceback's last lines"
    else:
        assert "rank 1: freshet train: error: train rank 1: the shard of row 7 is empty" in message
    assert "ChildFailedError" not in message and "<N/A>" not in message


def test_the_training_steps_own_error_is_the_tasks_exception(tmp_path):
    """The real `torchrun -m tasks.train`: a step error (here a missing config) is what the task says."""
    from freshet_airflow.operators import StepFailed

    missing = tmp_path / "missing.yaml"
    operator = DDPTrainOperator(task_id="train", nproc_per_node=1,
                                arguments=["--config", str(missing), "--run-id", "r1", "--logical-date", "2026-11-01"])
    with pytest.raises(StepFailed, match=f"exited with 1: freshet train: error: config file not found: {missing}$"):
        operator.execute(context={})


def test_a_steps_failure_names_its_own_error_line_not_the_last_line_mentioning_error():
    from freshet_airflow.operators import failure_reason

    lines = ["INFO loading", "2026-12-07 freshet validate: error: batch rejected: 3 rows lack a label",
             "WARNING error_handler: no error file", "ERROR something else"]
    assert failure_reason("validate", lines) == "freshet validate: error: batch rejected: 3 rows lack a label"
    crash = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "KeyError: 'label'"]
    assert failure_reason("clean", crash) == "KeyError: 'label'"
