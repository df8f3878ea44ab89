"""`freshet demo`: the whole pipeline on the embedded default, for consecutive logical dates.

Builds the demo corpus (Debian package synopses labelled by Section), serves it day by day from
the local demo site, runs the real Airflow DAG (`airflow dags test`, SQLite) once per date with
MLflow on SQLite and local artifacts, then prints what happened and how to look at it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.config import PipelineConfig, load_config
from tasks.contract import read_manifest
from tasks.manifest import Manifest
from tasks.pipeline import STEP_NAMES
from tasks.store import ArtifactStore, atomic_write_text

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "freshet"


def airflow_env(home: Path, config_path: Path) -> dict[str, str]:
    """Airflow standalone-style settings on SQLite, sized for a 2-core laptop."""
    return {
        **os.environ,
        "FRESHET_HOME": str(home),
        "FRESHET_CONFIG": str(config_path),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET", "freshet-demo-" + "x" * 64),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH")])),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }


@dataclass(frozen=True)
class DemoPlan:
    """Which demo days this invocation runs: a home remembers how far earlier invocations got."""

    start_date: dt.date
    rows_per_day: int
    first_day: int  # days already run in this home
    days: int

    def logical_date(self, day: int) -> dt.date:
        return self.start_date + dt.timedelta(days=day)


def plan_days(home: Path, start_date: dt.date, rows_per_day: int, days: int) -> DemoPlan:
    """Go on after the days this home has run, at the same daily volume; refuse a home it cannot go on."""
    state = read_demo_state(home)
    if state is None:
        if (home / "demo" / "corpus.jsonl").exists():
            raise DemoError(f"{home} holds a demo corpus from an older freshet without a record of its days; "
                            "start over with --fresh")
        return DemoPlan(start_date, rows_per_day, 0, days)
    if state["rows_per_day"] != rows_per_day or state["start_date"] != start_date.isoformat():
        raise DemoError(f"{home} runs a demo from {state['start_date']} at {state['rows_per_day']} packages a day; "
                        f"go on with the same --start-date and --rows-per-day, or start over with --fresh")
    return DemoPlan(start_date, rows_per_day, int(state["days_run"]), days)


def read_demo_state(home: Path) -> dict[str, Any] | None:
    path = home / "demo" / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_demo_state(home: Path, plan: DemoPlan, days_run: int) -> None:
    state = {"start_date": plan.start_date.isoformat(), "rows_per_day": plan.rows_per_day, "days_run": days_run}
    atomic_write_text(home / "demo" / "state.json", json.dumps(state, indent=2))


class DemoError(RuntimeError):
    """The demo cannot run on this home; the message says how to go on."""


def extend_corpus(config: PipelineConfig, path: Path, plan: DemoPlan) -> int:
    """The corpus holds every day up to this invocation's last: new packages for the new days."""
    from tasks.demo.corpus import CorpusError, extend_debian_corpus

    path.parent.mkdir(parents=True, exist_ok=True)
    def extend() -> int:
        return extend_debian_corpus(path, config.labels, rows_per_day=plan.rows_per_day, first_day=plan.first_day,
                                    days=plan.days)

    try:
        added = extend()
    except CorpusError:
        if os.geteuid() != 0:
            raise
        # A fresh machine may have empty apt lists; as root we can fill them once.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        added = extend()
    print(f"demo corpus: {added} new packages for day(s) {plan.first_day + 1}..{plan.first_day + plan.days} -> {path}")
    return added


def prepare_airflow(env: dict[str, str], config: PipelineConfig) -> None:
    """Migrate the metadata DB and create the training pool (the scheduler leaves tasks of a missing pool queued)."""
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if config.schedule.training_pool:
        subprocess.run([*airflow, "pools", "set", config.schedule.training_pool, str(config.schedule.training_pool_slots),
                        "freshet: training jobs (one GPU job at a time)"],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_dag(env: dict[str, str], logical_date: dt.date, log_path: Path) -> int:
    command = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, logical_date.isoformat()]
    with open(log_path, "w") as log:
        return subprocess.run(command, check=False, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def find_run(store: ArtifactStore, logical_date: dt.date, since: str) -> str | None:
    """The run this invocation made for the logical date: its crawl committed after `since` (ISO time).
    Airflow names manual runs itself, and an earlier invocation's run of the date must not be reported."""
    for directory in store.run_directories():
        manifest = store.read_json("runs", directory, "crawl", "manifest.json")
        if (manifest and (manifest.get("logical_date") or "")[:10] == logical_date.isoformat()
                and manifest.get("created_at", "") >= since):
            return manifest["run_id"]
    return None


def _f1(value) -> str:
    return "   -  " if value is None else f"{value:.3f}"


def summarize_run(store: ArtifactStore, run_id: str) -> list[str]:
    manifests: dict[str, Manifest] = {step: m for step in STEP_NAMES if (m := read_manifest(store, run_id, step))}
    lines = [f"run {run_id}: steps completed: {', '.join(manifests) or 'none'}"]
    crawl = manifests.get("crawl")
    if crawl is not None and not crawl.metrics.get("rows_new") and not crawl.metrics.get("rows_quarantined"):
        lines.append("  ended at new_data: the crawl found nothing new")
    if "crawl" in manifests:
        lines.append(f"  rows crawled {manifests['crawl'].metrics.get('rows_new')}"
                     f" (pages fetched {manifests['crawl'].metrics.get('pages_fetched')},"
                     f" not modified {manifests['crawl'].metrics.get('pages_not_modified')})")
    if "validate" in manifests:
        lines.append(f"  quarantined by validation {manifests['validate'].metrics.get('rows_quarantined')},"
                     f" valid {manifests['validate'].metrics.get('rows_valid')}")
    if "clean" in manifests:
        metrics = manifests["clean"].metrics
        lines.append(f"  cleaned rows {metrics.get('rows_out')} (train {metrics.get('rows_train')},"
                     f" validation {metrics.get('rows_validation')}, test {metrics.get('rows_test')})")
    if "augment" in manifests:
        lines.append(f"  augmented rows {manifests['augment'].metrics.get('rows_augmented')}")
    decision = read_manifest(store, run_id, "decide")
    if decision is not None:
        lines.append(f"  training: {'yes' if decision.facts['train'] else 'no'} - {decision.facts['reason']}")
        if not decision.facts["train"]:
            lines.append("  ended at should_train")
    if "train" in manifests:
        metrics = manifests["train"].metrics
        lines.append(f"  trained {metrics.get('steps')} steps on {metrics.get('rows_train')} rows"
                     f" ({metrics.get('rows_replay')} replayed), {metrics.get('samples_per_second', 0):.0f} samples/s,"
                     f" warm start from version {manifests['train'].facts.get('champion_version')}")
    if "evaluate" in manifests:
        evaluation = manifests["evaluate"]
        lines.append("  macro-F1      candidate  champion")
        for slice_name in ("frozen", "fresh", "old"):
            candidate = evaluation.metrics.get(f"candidate.{slice_name}.macro_f1")
            if candidate is not None:
                lines.append(f"    {slice_name:<11} {_f1(candidate)}     {_f1(evaluation.metrics.get(f'champion.{slice_name}.macro_f1'))}"
                             f"   ({evaluation.metrics.get(f'{slice_name}.rows')} rows)")
    if "compress" in manifests:
        compress = manifests["compress"]
        gate = compress.facts["gate"]
        lines.append(f"  gate: {'PASS' if gate['passed'] else 'REJECT'}"
                     + ("" if gate["passed"] else " - " + "; ".join(gate["reasons"])))
        for variant, facts in compress.facts.get("variants", {}).items():
            lines.append(f"  {variant}: size x{facts['size_ratio']:.2f}, latency x{facts['latency_ratio_batch1']:.2f} (batch 1)"
                         f" x{facts['latency_ratio_batch32']:.2f} (batch 32), macro-F1 delta"
                         f" {facts['macro_f1_delta'].get('frozen', float('nan')):+.4f} (frozen)")
        lines.append(f"  serving variant: {compress.facts['serving_variant']}")
    if "register" in manifests:
        lines.append(f"  registered version {manifests['register'].facts['version']}")
    if "promote" in manifests:
        facts = manifests["promote"].facts
        lines.append(f"  promoted: champion -> {facts.get('champion')}, previous -> {facts.get('previous')}"
                     if facts.get("promoted") else f"  not promoted: {'; '.join(facts.get('reasons', []))}")
    elif "register" in manifests:
        lines.append("  promotion skipped by the gate")
    return lines


def aliases(config: PipelineConfig) -> dict[str, str]:
    import mlflow

    from tasks import model_registry

    try:
        model = model_registry.client(config).get_registered_model(config.mlflow.model_name)
    except mlflow.exceptions.MlflowException:  # no model registered yet
        return {}
    return dict(model.aliases)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freshet demo", description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--home", default=os.environ.get("FRESHET_HOME", str(REPO / ".freshet")))
    parser.add_argument("--days", type=int, default=2, help="consecutive logical dates to run")
    parser.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 1))
    parser.add_argument("--rows-per-day", type=int, default=2000,
                        help="packages the demo site publishes per day (a stratified sample of the Debian index)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo state first")
    args = parser.parse_args(argv)
    if args.days < 1 or args.rows_per_day < 1:
        parser.error(f"--days and --rows-per-day must be at least 1 (got {args.days} and {args.rows_per_day})")

    home = Path(args.home).resolve()
    if args.fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    try:
        plan = plan_days(home, args.start_date, args.rows_per_day, args.days)
    except DemoError as error:
        print(f"freshet demo: {error}", file=sys.stderr)
        return 2
    os.environ["FRESHET_HOME"] = str(home)
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    store = ArtifactStore(config.artifact_root)
    env = airflow_env(home, config_path)
    started = time.perf_counter()
    since = dt.datetime.now(dt.UTC).isoformat()

    # Every day publishes about the same number of packages, the first included: the model starts from
    # little data and each day adds as much again, so the learning curve has room to rise. A home that
    # already ran days goes on with the next ones.
    corpus = home / "demo" / "corpus.jsonl"
    if extend_corpus(config, corpus, plan) == 0:
        print(f"freshet demo: nothing new: every package of the demo's sections was published in the "
              f"{plan.first_day} day(s) this home has run ({home}). Start over with `python -m tasks.demo --fresh`"
              " (or `make demo` after `make clean`).")
        return 0
    prepare_airflow(env, config)

    from tasks.demo.site import serve

    source = urlsplit(config.crawl.sources[0].url)
    summary: list[str] = []
    run_ids: list[str] = []
    last_day = plan.first_day + plan.days - 1
    # Every corpus row names its day, so the site publishes exactly the planned days.
    with serve(corpus, plan.start_date, days=last_day, initial_fraction=0.0,
               host=str(source.hostname or "127.0.0.1"), port=source.port or 80) as site:
        print(f"demo site: {site.url} publishing about {plan.rows_per_day} packages a day from {plan.start_date}"
              f"; this run: day(s) {plan.first_day + 1}..{last_day + 1}")
        for day in range(plan.first_day, last_day + 1):
            logical_date = plan.logical_date(day)
            log_path = home / "logs" / f"dag-{logical_date}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            day_started = time.perf_counter()
            print(f"running DAG {DAG_ID} for {logical_date} (log: {log_path}) ...", flush=True)
            code = run_dag(env, logical_date, log_path)
            write_demo_state(home, plan, day + 1)
            run_id = find_run(store, logical_date, since)
            run_ids += [run_id] if run_id else []
            summary += [f"--- {logical_date} ({time.perf_counter() - day_started:.0f} s, airflow exit {code})"]
            summary += summarize_run(store, run_id) if run_id else [f"  no run recorded; see {log_path}"]
    print("\n".join(["", "=" * 78, "freshet demo summary", "=" * 78, *summary]))
    print(f"\nregistry: {config.mlflow.model_name} aliases {json.dumps(aliases(config))}")
    if run_ids:
        from tasks.demo.learning_curve import build

        _, paths = build(config, store, run_ids, home / "reports")
        print(f"\n{paths['markdown'].read_text()}")
        print(f"learning curve: {paths['png']} (table: {paths['markdown']}, {paths['csv']}; also in MLflow"
              " as the run 'learning-curve')")
    print(f"demo wall time: {time.perf_counter() - started:.0f} s\n")
    print("Look at it:")
    print(f"  Airflow UI:  FRESHET_HOME={home} make airflow-ui     (airflow standalone on :8080, parallelism 4;"
          f" admin password in {home}/airflow/simple_auth_manager_passwords.json.generated)")
    print(f"  MLflow UI:   FRESHET_HOME={home} make mlflow-ui      (mlflow ui on :5000 over {config.mlflow.tracking_uri})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
