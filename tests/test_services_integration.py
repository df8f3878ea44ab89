"""The production configuration on real services, then its UIs in a real browser.

PostgreSQL (fresh databases for Airflow, MLflow and MLflow's users) and Redis on loopback; the MLflow
tracking server started through mlflow/entrypoint.sh (basic auth, artifact proxy to a local
directory); Airflow 3.3 on PostgreSQL with api-server, scheduler, dag-processor and a Celery worker:
`LocalExecutor,CeleryExecutor`, the train task routed to the Celery worker by configs/integration.yaml
(runner.train_executor/train_queue), every other task on the LocalExecutor. The test triggers the DAG
through the REST API, checks the registry through MLflow's REST API, then logs into both UIs with
headless Chromium (Playwright) and takes screenshots (pytest tmp dir; also docs/img/ with
FRESHET_SAVE_SCREENSHOTS=1).

PostgreSQL, Redis and /usr/bin/chromium must be there: a missing one is an error naming it and how to
start it (.ci/services.sh does all three). Every process is killed by process group and every database
dropped on teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import httpx
import pytest

from tasks.demo.site import serve
from tests import services
from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus

pytestmark = pytest.mark.slow
LABELS = ["alpha", "beta", "gamma"]
DAG_ID = "freshet"
MODEL = "freshet-integration"  # mlflow.model_name in configs/integration.yaml
RUN_TIMEOUT_S = 600  # ~3 min on 2 idle cores; much more when the machine is shared
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _mlflow_env(home, names, port: int, admin: str, password: str) -> dict[str, str]:
    return {
        **os.environ,
        # entrypoint.sh runs `python` and `mlflow` from PATH: this venv's.
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": services.pg_url(names["mlflow"]),
        "MLFLOW_ARTIFACTS_DESTINATION": str(home / "mlflow-artifacts"),
        "MLFLOW_AUTH_DATABASE_URI": services.pg_url(names["mlflowauth"]),
        "MLFLOW_AUTH_CONFIG_TEMPLATE": str(REPO / "mlflow" / "basic_auth.ini"),
        "MLFLOW_RUNTIME_DIR": str(home / "mlflow-runtime"),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},127.0.0.1,localhost:{port},localhost",
    }


def _airflow_env(home, names, ports: dict[str, int], mlflow_uri: str, mlflow_auth: tuple[str, str],
                 site_url: str, queue: str, passwords_file) -> dict[str, str]:
    from cryptography.fernet import Fernet

    api = f"http://127.0.0.1:{ports['api']}"
    return {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": services.pg_url(names["airflow"]),
        # The first executor is the default (every task but train); train names CeleryExecutor.
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + services.pg_url(names["airflow"]),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        # Loopback ports of our own, so a second Airflow on this machine does not collide.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["logs"]),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports["scheduler_health"]),
        "FRESHET_CONFIG": str(REPO / "configs" / "integration.yaml"),
        "FRESHET_ARTIFACT_ROOT": str(home / "artifacts"),
        "FRESHET_SITE_URL": site_url,
        "FRESHET_TRAIN_QUEUE": queue,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MLFLOW_TRACKING_USERNAME": mlflow_auth[0],
        "MLFLOW_TRACKING_PASSWORD": mlflow_auth[1],
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def test_integration_config_routes_only_training_to_celery(monkeypatch, tmp_path):
    """Fast, no services: configs/integration.yaml puts train (only) on the CeleryExecutor and its queue."""
    from freshet_airflow import dag_settings, runners

    for name, value in {"FRESHET_ARTIFACT_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                        "FRESHET_SITE_URL": "http://127.0.0.1:8765/", "FRESHET_TRAIN_QUEUE": "it-queue"}.items():
        monkeypatch.setenv(name, value)
    dag_settings.pipeline_config.cache_clear()
    config_path = str(REPO / "configs" / "integration.yaml")
    try:
        train = runners.train_step(config_path)
        crawl = runners.step("crawl", config_path)
    finally:
        dag_settings.pipeline_config.cache_clear()
    assert (train.executor, train.queue) == ("CeleryExecutor", "it-queue")
    assert crawl.executor is None and crawl.queue != "it-queue"


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _airflow_token(api: str, username: str, password: str) -> str:
    response = httpx.post(f"{api}/auth/token", json={"username": username, "password": password}, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Everything up, one DAG run triggered over REST and finished; yields what the tests check."""
    services.require_services()
    started = time.perf_counter()
    home = tmp_path_factory.mktemp("services")
    (home / "logs").mkdir()
    (home / "airflow").mkdir()
    processes = services.Processes(home / "logs")
    corpus = home / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in synthetic_corpus(400, LABELS, seed=5)))
    # A manual run without a logical date works on the day it runs (UTC) and takes every page up to
    # it; the two days before are then backfilled, finding nothing new.
    today = dt.datetime.now(dt.UTC).date()
    backfill_days = [today - dt.timedelta(days=2), today - dt.timedelta(days=1)]
    ports = {name: services.free_port() for name in ("mlflow", "api", "logs", "scheduler_health")}
    mlflow_uri = f"http://127.0.0.1:{ports['mlflow']}"
    api = f"http://127.0.0.1:{ports['api']}"
    mlflow_auth = ("admin", secrets.token_urlsafe(18))
    airflow_password = secrets.token_urlsafe(18)
    queue = f"freshet-it-{uuid.uuid4().hex[:8]}"
    # Seeded like the compose airflow-init does, so no generated password is printed.
    passwords_file = home / "airflow" / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps({"admin": airflow_password}))
    passwords_file.chmod(0o600)
    # A SIGTERM (CI timeout, `timeout`) would end pytest without teardown: turn it into an exception.
    previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    client = httpx.Client(base_url=api, timeout=30)
    try:
        with services.databases("airflow", "mlflow", "mlflowauth") as names, \
                serve(corpus, backfill_days[0], days=2, initial_fraction=0.7) as site:
            try:
                mlflow_env = _mlflow_env(home, names, ports["mlflow"], *mlflow_auth)
                env = _airflow_env(home, names, ports, mlflow_uri, mlflow_auth, site.url, queue, passwords_file)
                airflow = [sys.executable, "-m", "airflow"]
                # The production entrypoint as is; the later --host/--port win over its defaults.
                processes.start("mlflow", ["bash", str(REPO / "mlflow" / "entrypoint.sh"), "--host", "127.0.0.1",
                                           "--port", str(ports["mlflow"]), "--workers", "1"], mlflow_env)
                migrate = subprocess.run([*airflow, "db", "migrate"], env=env, capture_output=True, text=True,
                                         timeout=300, check=False)
                assert migrate.returncode == 0, f"airflow db migrate:\n{migrate.stdout[-3000:]}{migrate.stderr[-3000:]}"
                processes.start("api-server", [*airflow, "api-server", "--host", "127.0.0.1",
                                               "--port", str(ports["api"])], env)
                processes.start("scheduler", [*airflow, "scheduler"], env)
                processes.start("dag-processor", [*airflow, "dag-processor"], env)
                processes.start("celery-worker", [*airflow, "celery", "worker", "--queues", queue, "--concurrency", "1",
                                                  "--celery-hostname", f"{queue}@%h", "--skip-serve-logs"], env)
                services.wait_until("MLflow /health", lambda: services.http_ok(f"{mlflow_uri}/health"), 180, processes)
                services.wait_until("Airflow api-server", lambda: services.http_ok(f"{api}/api/v2/monitor/health"), 180,
                                    processes)
                client.headers["Authorization"] = f"Bearer {_airflow_token(api, 'admin', airflow_password)}"
                services.wait_until(f"DAG {DAG_ID} parsed by the dag-processor",
                                    lambda: client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 180, processes)
                client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
                triggered = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {}})
                assert triggered.status_code == 200, triggered.text
                run_id = triggered.json()["dag_run_id"]

                def finished():
                    state = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
                    return state if state in ("success", "failed") else None

                run_started = time.perf_counter()
                state = services.wait_until(f"DAG run {run_id}", finished, RUN_TIMEOUT_S, processes, interval_s=3)
                run_seconds = time.perf_counter() - run_started
                task_instances = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()
                backfill = _backfill(client, backfill_days, processes)
                yield {
                    "backfill": backfill, "backfill_days": backfill_days,
                    "home": home, "api": api, "mlflow_uri": mlflow_uri, "mlflow_auth": mlflow_auth, "queue": queue,
                    "airflow_auth": ("admin", airflow_password), "run_id": run_id, "state": state,
                    "task_instances": {ti["task_id"]: ti for ti in task_instances["task_instances"]},
                    "processes": processes,
                    "run_seconds": run_seconds, "setup_seconds": time.perf_counter() - started - run_seconds,
                }
            finally:
                # Before the databases are dropped and the demo site stops.
                processes.stop()
                client.close()
    finally:
        processes.stop()  # again: idempotent, and covers a failure before the block above
        signal.signal(signal.SIGTERM, previous_handler)
        print(f"\nservices integration: {time.perf_counter() - started:.0f} s in all; logs in {home / 'logs'}")


def _backfill(client: httpx.Client, days: list[dt.date], processes) -> dict:
    """Backfill `days` through the REST API and the running scheduler; their runs, tasks and new_data XCom."""
    started = time.perf_counter()
    created = client.post("/api/v2/backfills", json={
        "dag_id": DAG_ID, "from_date": f"{days[0]}T00:00:00Z", "to_date": f"{days[-1]}T00:00:00Z",
        "max_active_runs": 1, "reprocess_behavior": "none"})
    assert created.status_code == 200, created.text

    def runs():
        listed = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"run_type": "backfill"}).json()["dag_runs"]
        done = [run for run in listed if run["state"] in ("success", "failed")]
        return sorted(done, key=lambda run: run["logical_date"]) if len(done) == len(days) else None

    finished = services.wait_until(f"backfill of {days[0]}..{days[-1]}", runs, RUN_TIMEOUT_S, processes, interval_s=3)
    result = {"id": created.json()["id"], "seconds": time.perf_counter() - started, "runs": []}
    for run in finished:
        tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'])}/taskInstances").json()
        xcom = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'])}/taskInstances/new_data/"
                          "xcomEntries/new_data")
        result["runs"].append({**run, "task_states": {ti["task_id"]: ti["state"] for ti in tis["task_instances"]},
                               "new_data": xcom.json().get("value") if xcom.status_code == 200 else xcom.text})
    return result


def _explain(stack) -> str:
    states = {task: ti["state"] for task, ti in stack["task_instances"].items()}
    logs = "\n".join(stack["processes"].log_tail(name, 25) for name in ("scheduler", "celery-worker"))
    return f"run {stack['run_id']}: {stack['state']}, tasks {states}\n{logs}"


def test_dag_run_via_rest_succeeds_with_training_on_the_celery_worker(stack):
    tis = stack["task_instances"]
    assert stack["state"] == "success", _explain(stack)
    assert {"crawl", "new_data", "validate", "clean", "augment", "decide", "should_train", "train", "evaluate", "compress", "register", "gate",
            "promote"} <= set(tis), sorted(tis)
    assert {ti["state"] for ti in tis.values()} == {"success"}, _explain(stack)
    train = tis["train"]
    assert train["executor"] == "CeleryExecutor" and train["queue"] == stack["queue"], train
    # Only this test's worker listens on that queue; its log shows it ran the train workload.
    assert "train" in (stack["home"] / "logs" / "celery-worker.log").read_text(errors="replace")
    local = {task: ti["executor"] for task, ti in tis.items() if task != "train"}
    assert all(executor in (None, "LocalExecutor") for executor in local.values()), local
    durations = ", ".join(f"{task} {ti['duration']:.0f}" for task, ti in tis.items() if ti.get("duration") is not None)
    print(f"\nDAG run {stack['run_id']}: {stack['run_seconds']:.0f} s ({durations} s); "
          f"services up in {stack['setup_seconds']:.0f} s")


def test_backfill_of_past_days_runs_through_the_scheduler_and_ends_green_with_nothing_new(stack):
    """`POST /api/v2/backfills` over two past days: the scheduler runs both logical dates; each crawl is
    bounded by its date (1 page, then 2, all already fetched: 304) and `new_data` ends the run green."""
    from tasks.contract import read_manifest
    from tasks.store import ArtifactStore

    backfill = stack["backfill"]
    runs = backfill["runs"]
    assert [run["logical_date"][:10] for run in runs] == [day.isoformat() for day in stack["backfill_days"]], runs
    store = ArtifactStore(str(stack["home"] / "artifacts"))
    for pages, run in enumerate(runs, start=1):
        assert run["state"] == "success" and run["run_type"] == "backfill", run
        states = run["task_states"]
        assert states["crawl"] == "success" and states["new_data"] == "success", states
        assert {state for task, state in states.items() if task not in ("crawl", "new_data")} == {"skipped"}, states
        crawl = read_manifest(store, run["dag_run_id"], "crawl")
        assert crawl.logical_date[:10] == run["logical_date"][:10]
        assert crawl.metrics["rows_new"] == 0 and crawl.metrics["pages_not_modified"] == pages, crawl.metrics
        new_data = run["new_data"]
        new_data = json.loads(new_data) if isinstance(new_data, str) and new_data.startswith("{") else new_data
        assert isinstance(new_data, dict) and new_data["ingest"] is False, new_data
        assert new_data["reason"].startswith(f"nothing new up to {run['logical_date'][:10]}"), new_data
    print(f"\nbackfill {backfill['id']}: {len(runs)} runs in {backfill['seconds']:.0f} s")


def test_champion_is_registered_on_the_tracking_server(stack):
    auth = stack["mlflow_auth"]
    response = httpx.get(f"{stack['mlflow_uri']}/api/2.0/mlflow/registered-models/alias",
                         params={"name": MODEL, "alias": "champion"}, auth=auth, timeout=30)
    assert response.status_code == 200, response.text
    version = response.json()["model_version"]
    tags = {tag["key"]: tag["value"] for tag in version.get("tags", [])}
    assert version["version"] == "1" and "champion" in version["aliases"], version
    assert tags["airflow.dag_run_id"] == stack["run_id"] and tags["freshet.gate"] == "passed", tags
    # Artifacts went through the server's proxy into its destination, not to a client-side path.
    stored = [path for path in (stack["home"] / "mlflow-artifacts").rglob("*") if path.is_file()]
    assert stored, "no artifact reached the MLflow artifacts destination"


def test_tracking_server_refuses_anonymous_and_wrong_credentials(stack):
    url = f"{stack['mlflow_uri']}/api/2.0/mlflow/registered-models/alias"
    params = {"name": MODEL, "alias": "champion"}
    assert httpx.get(url, params=params, timeout=30).status_code == 401
    assert httpx.get(url, params=params, auth=("admin", "not-the-password"), timeout=30).status_code == 401
    assert httpx.get(f"{stack['mlflow_uri']}/health", timeout=30).status_code == 200  # probes need no credentials


# ------------------------------------------------------------------------------------------ UI

@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        user_data = stack["home"] / "chromium-profile"
        context = playwright.chromium.launch_persistent_context(
            str(user_data), executable_path=services.CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
            # Answered only to MLflow's basic-auth challenge; Airflow gets its own login form.
            http_credentials={"username": stack["mlflow_auth"][0], "password": stack["mlflow_auth"][1],
                              "origin": stack["mlflow_uri"]})
        try:
            yield context
        finally:
            context.close()


def _screenshot(page, stack, name: str):
    path = stack["home"] / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FRESHET_SAVE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "img"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


@contextlib.contextmanager
def _evidence_on_failure(page, stack, name: str):
    """On a failed UI assertion keep what the browser showed (screenshot and text) next to the logs."""
    try:
        yield
    except Exception:
        page.screenshot(path=str(stack["home"] / f"FAILED-{name}.png"), full_page=True)
        (stack["home"] / f"FAILED-{name}.txt").write_text(f"{page.url}\n\n{page.locator('body').inner_text()}")
        raise


def test_airflow_ui_shows_the_finished_run(stack, browser):
    from playwright.sync_api import expect

    assert stack["state"] == "success", _explain(stack)
    page = browser.new_page()
    page.goto(f"{stack['api']}/dags/{DAG_ID}/runs/{quote(stack['run_id'], safe='')}")
    with _evidence_on_failure(page, stack, "airflow"):
        # Not logged in: the simple auth manager's login form, which then returns to the run.
        page.locator("input[type=password]").wait_for(timeout=60_000)
        page.locator("input:not([type=password])").first.fill(stack["airflow_auth"][0])
        page.locator("input[type=password]").fill(stack["airflow_auth"][1])
        page.locator("button[type=submit]").click()
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/**", timeout=60_000)
        expect(page.get_by_text(stack["run_id"]).first).to_be_visible(timeout=60_000)
        # The run's task-instance table: one row per task, each linked by its id and in state Success.
        tasks = stack["task_instances"]
        expect(page.get_by_text(f"{len(tasks)} Task Instances")).to_be_visible(timeout=60_000)
        for task in tasks:
            row = page.get_by_role("row").filter(has=page.get_by_role("link", name=task, exact=True)).last
            expect(row).to_contain_text("Success")
    path = _screenshot(page, stack, "airflow-grid.png")
    assert path.stat().st_size > 10_000


def test_mlflow_ui_shows_the_champion_alias(stack, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(f"{stack['mlflow_uri']}/#/models/{MODEL}")
    with _evidence_on_failure(page, stack, "mlflow"):
        expect(page.get_by_text(MODEL).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Version 1").first).to_be_visible(timeout=60_000)
        # The alias chips of version 1: promote moved `champion` onto it (register set `challenger`).
        expect(page.get_by_text("champion").first).to_be_visible(timeout=60_000)
    path = _screenshot(page, stack, "mlflow-registered-model.png")
    assert path.stat().st_size > 10_000
