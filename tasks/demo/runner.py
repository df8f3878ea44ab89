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
from pathlib import Path
from urllib.parse import urlsplit

from tasks.config import PipelineConfig, load_config
from tasks.contract import read_manifest
from tasks.manifest import Manifest
from tasks.pipeline import STEP_NAMES
from tasks.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
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


def ensure_corpus(config: PipelineConfig, path: Path, max_rows: int) -> None:
    from tasks.demo.corpus import CorpusError, build_debian_corpus

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        counts = build_debian_corpus(path, config.labels, max_rows=max_rows)
    except CorpusError:
        if os.geteuid() != 0:
            raise
        # A fresh machine may have empty apt lists; as root we can fill them once.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        counts = build_debian_corpus(path, config.labels, max_rows=max_rows)
    print(f"demo corpus: {sum(counts.values())} packages in {len(counts)} sections -> {path}")


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


def find_run(store: ArtifactStore, logical_date: dt.date) -> str | None:
    """The run id whose crawl ran for this logical date (Airflow names manual runs itself)."""
    for directory in store.run_directories():
        manifest = store.read_json("runs", directory, "crawl", "manifest.json")
        if manifest and (manifest.get("logical_date") or "")[:10] == logical_date.isoformat():
            return manifest["run_id"]
    return None


def _f1(value) -> str:
    return "   -  " if value is None else f"{value:.3f}"


def summarize_run(store: ArtifactStore, run_id: str) -> list[str]:
    manifests: dict[str, Manifest] = {step: m for step in STEP_NAMES if (m := read_manifest(store, run_id, step))}
    lines = [f"run {run_id}: steps completed: {', '.join(manifests) or 'none'}"]
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
    os.environ["FRESHET_HOME"] = str(home)
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    store = ArtifactStore(config.artifact_root)
    env = airflow_env(home, config_path)
    started = time.perf_counter()

    # Every day publishes about the same number of packages, the first included: the model starts from
    # little data and each day adds as much again, so the learning curve has room to rise.
    publication_days = max(args.days, 1)
    corpus = home / "demo" / "corpus.jsonl"
    ensure_corpus(config, corpus, args.rows_per_day * publication_days)
    prepare_airflow(env, config)

    from tasks.demo.site import serve

    source = urlsplit(config.crawl.sources[0].url)
    summary: list[str] = []
    run_ids: list[str] = []
    # One day: everything is published on it (days=0), whatever the fraction.
    initial_fraction = 1 / publication_days if publication_days > 1 else 0.0
    with serve(corpus, args.start_date, days=publication_days - 1, initial_fraction=initial_fraction,
               host=str(source.hostname or "127.0.0.1"), port=source.port or 80) as site:
        print(f"demo site: {site.url} publishing about {args.rows_per_day} packages a day from {args.start_date}"
              f" for {publication_days} day(s)")
        for offset in range(args.days):
            logical_date = args.start_date + dt.timedelta(days=offset)
            log_path = home / "logs" / f"dag-{logical_date}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            day_started = time.perf_counter()
            print(f"running DAG {DAG_ID} for {logical_date} (log: {log_path}) ...", flush=True)
            code = run_dag(env, logical_date, log_path)
            run_id = find_run(store, logical_date)
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
