"""`freshet demo`: the whole pipeline on the embedded default, for consecutive logical dates.

Builds the demo corpus (Debian package synopses labelled by Section), serves it day by day from
the local demo site, runs the real Airflow DAG (`airflow dags test`, SQLite) once per date with
MLflow on SQLite and local artifacts, then prints what happened and how to look at it.

It closes the loop each day: the day's newly published texts (ids and texts, no labels) go to the batch
scorer's drop folder (`score.input`) and the `freshet_score` DAG scores them with the champion before the
pipeline sees their labels; after the pipeline, the `freshet_monitor` DAG compares those predictions with the
champion's reference and, now that the day's labels are in, measures their real macro-F1 next to the
label-free estimate. A breach makes the next day's `decide` train with the reason "production drift".

`--model DIR` runs it on another encoder (a local Hugging Face directory, or a hub id where there is
network): the config is written to `<home>/config.yaml` with `train.model` replaced. `--config my.yaml`
runs your own pipeline config the same way; the demo site is started only for a config whose first
source is a `jsonl_feed` on a loopback address (the demo's shape), otherwise your sources are crawled.

`--label-studio URL` adds the labelling loop (`tasks.demo.labelling`): each day the texts the champion scored go
through `freshet_label` to a Label Studio project with its predictions as pre-annotations, the demo's annotator
labels them from the corpus's truth through Label Studio's API, and the day's pipeline run pulls them back (a
crawl source of kind `label_studio`) and learns from them; the summary compares the champion on the texts
uncertainty sampling picked with a random control. The token is read from `--label-studio-token-env`
($LABEL_STUDIO_TOKEN). An unreachable server or a refused token stops the demo before anything runs (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks import model_registry
from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.contract import read_manifest
from tasks.demo.airflow_home import REPO, airflow_env, prepare_airflow
from tasks.demo.annotator import AnnotationRound
from tasks.demo.corpus import CorpusError, extend_debian_corpus
from tasks.demo.dag_log import TaskFailure, failed_tasks, last_error_line
from tasks.demo.labelling import (
    DEFAULT_TOKEN_ENV,
    QUEUE_VIEW,
    UNLABELLED_FRACTION,
    DemoLabelling,
    LabellingSetupError,
    labelling_table,
    summarize_day,
    with_label_studio,
)
from tasks.demo.site import serve
from tasks.demo.ui import MLFLOW_PORT, absolute_tracking_uri, mlflow_ui_command, ui_command
from tasks.labelling.label_studio import LabelStudioError
from tasks.store import ArtifactStore, atomic_write_text

DAG_ID = "freshet"


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


@dataclass(frozen=True)
class DagOutcome:
    """How one `airflow dags test` went: its exit code, the tasks that failed for good (dag_log), its log."""

    dag_id: str
    exit_code: int
    failures: tuple[TaskFailure, ...]
    log_path: Path

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or bool(self.failures)

    def describe(self) -> list[str]:
        """Lines naming each failed task and its error (or the log's last error line when no task ran)."""
        if not self.failed:
            return []
        lines = [f"  {self.dag_id} FAILED (airflow exit {self.exit_code}): {failure.describe()}"
                 for failure in self.failures]
        if not lines:
            last = last_error_line(self.log_path.read_text(errors="replace").splitlines()) if self.log_path.exists() else None
            lines.append(f"  {self.dag_id} FAILED (airflow exit {self.exit_code}): {last or 'no error line in the log'}")
        return [*lines, f"  log: {self.log_path}"]


def run_dag(env: dict[str, str], logical_date: dt.date, log_path: Path, dag_id: str = DAG_ID,
            conf: dict[str, Any] | None = None) -> DagOutcome:
    """`airflow dags test` of `dag_id` for the date (with `conf` as the run's params), its output in `log_path`."""
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date.isoformat()]
    if conf:
        command += ["--conf", json.dumps(conf)]
    with open(log_path, "w") as log:
        code = subprocess.run(command, check=False, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    failures = failed_tasks(log_path.read_text(errors="replace").splitlines())
    return DagOutcome(dag_id, code, tuple(failures), log_path)


def find_run(store: ArtifactStore, logical_date: dt.date, since: str, step: str = "crawl") -> str | None:
    """The run this invocation made for the logical date: its `step` (crawl: the pipeline's run) committed after
    `since` (ISO time). Airflow names manual runs itself, and an earlier invocation's run of the date must not
    be reported."""
    for directory in store.run_directories():
        manifest = store.read_json("runs", directory, step, "manifest.json")
        if (manifest and (manifest.get("logical_date") or "")[:10] == logical_date.isoformat()
                and manifest.get("created_at", "") >= since):
            return manifest["run_id"]
    return None


def uses_demo_site(config: PipelineConfig) -> bool:
    """Whether the config crawls the demo site: a jsonl_feed (the site's shape) on a loopback address."""
    source = config.crawl.sources[0]
    if source.kind != "jsonl_feed":
        return False
    host = urlsplit(source.url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_model(config_path: Path, model: str, home: Path) -> Path:
    """The config at `config_path` with `train.model` set to `model` (a directory becomes absolute, since the
    steps may run elsewhere), written to `<home>/config.yaml`; loading it runs the config-load preflight.

    Only that key changes: the rest stays as written (`${VAR}`s unexpanded, defaults left to the code).
    """
    import yaml

    directory = Path(model).expanduser()
    value = str(directory.resolve()) if directory.exists() else model
    data = yaml.safe_load(config_path.read_text()) or {}
    data.setdefault("train", {})["model"] = value
    target = home / "config.yaml"
    atomic_write_text(target, f"# {config_path} with train.model set by `freshet demo --model`\n"
                      + yaml.safe_dump(data, sort_keys=False))
    load_config(target)
    return target


# ------------------------------------------------------------------------- the production loop


def drop_folder(config: PipelineConfig, logical_date: dt.date) -> Path | None:
    """The local folder `score.input` names for the date (None: not set, or not a local folder of files)."""
    pattern = config.score.input
    if not pattern or "://" in pattern:
        return None
    folder = Path(pattern.replace("{date}", logical_date.isoformat())).parent
    return None if any(char in str(folder) for char in "*?[") else folder


def drop_published_texts(config: PipelineConfig, site_url: str, logical_date: dt.date,
                         with_unlabelled: bool = False) -> int | None:
    """The day's newly published texts, without their labels, into the score drop folder (with the site's
    unlabelled texts: `with_unlabelled`); how many."""
    import urllib.request

    folder = drop_folder(config, logical_date)
    if folder is None:
        return None
    records = []
    for part in ("feed", "unlabelled") if with_unlabelled else ("feed",):
        with urllib.request.urlopen(f"{site_url.rstrip('/')}/{part}/{logical_date.isoformat()}.jsonl",
                                    timeout=30) as page:
            records += [json.loads(line) for line in page.read().decode("utf-8").splitlines() if line.strip()]
    text = "".join(json.dumps({"id": record["id"], "text": record["text"]}) + "\n" for record in records)
    atomic_write_text(folder / "published.jsonl", text)
    return len(records)


def aliases(config: PipelineConfig) -> dict[str, str]:
    import mlflow

    try:
        model = model_registry.client(config).get_registered_model(config.mlflow.model_name)
    except mlflow.exceptions.MlflowException:  # no model registered yet
        return {}
    return dict(model.aliases)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
    try:
        if args.model:
            config_path = with_model(config_path, args.model, home)
        if args.label_studio:
            config_path = with_label_studio(config_path, home, args.label_studio, args.label_studio_token_env,
                                            args.rows_per_day)
        config = load_config(config_path)
    except ConfigError as error:
        print(f"freshet demo: {error}", file=sys.stderr)
        return 2
    store = ArtifactStore(config.artifact_root)
    env = airflow_env(home, config_path)
    started = time.perf_counter()
    since = dt.datetime.now(dt.UTC).isoformat()

    # Every day publishes about the same number of packages, the first included: the model starts from
    # little data and each day adds as much again, so the learning curve has room to rise. A home that
    # already ran days goes on with the next ones.
    demo_site = uses_demo_site(config)
    corpus = home / "demo" / "corpus.jsonl"
    try:
        labelling = prepare_labelling(config, corpus, demo_site, fresh_home=plan.first_day == 0)
    except (LabellingSetupError, LabelStudioError) as error:
        flag = f"--label-studio {args.label_studio}: " if args.label_studio else ""
        print(f"freshet demo: the labelling loop cannot run: {flag}{error}", file=sys.stderr)
        return 2
    if demo_site and extend_corpus(config, corpus, plan) == 0:
        print(f"freshet demo: nothing new: every package of the demo's sections was published in the "
              f"{plan.first_day} day(s) this home has run ({home}). Start over with `python -m tasks.demo --fresh`"
              " (or `make demo` after `make clean`).")
        return 0
    prepare_airflow(env, config)
    conf = {"force_training": True} if args.force_training else None
    days = run_days(config, store, env, home, plan, corpus if demo_site else None, since, conf, labelling)
    print_summary(config, store, home, days)
    print(f"demo wall time: {time.perf_counter() - started:.0f} s\n")
    print("\n".join(ui_hints(config, config_path, home, labelling)))
    if days.failed:
        again = shlex.join(["freshet", "demo", "--config", str(config_path), "--home", str(home), "--days", "1",
                            "--force-training"])
        print(f"\nfreshet demo: FAILED on {days.failed}. After fixing the cause, `{again}` runs the next day and"
              " trains whatever decide's thresholds say: the rows the failed round accepted wait for it, so no new"
              " files are needed.", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="freshet demo", description=__doc__,
                                     epilog="Exit status: 0 when every run succeeded, 1 when a run failed (the summary "
                                            "names the failed task and its error), 2 for bad arguments or config.")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--home", default=os.environ.get("FRESHET_HOME", str(REPO / ".freshet")))
    parser.add_argument("--days", type=int, default=2, help="consecutive logical dates to run")
    parser.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 1))
    parser.add_argument("--rows-per-day", type=int, default=2000,
                        help="packages the demo site publishes per day (a stratified sample of the Debian index)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo state first")
    parser.add_argument("--model", default=None,
                        help="train.model for this demo: a local Hugging Face model directory, or a hub id")
    parser.add_argument("--label-studio", metavar="URL", default=None,
                        help="add the labelling loop: the day's picks go to the Label Studio at URL (a project of this "
                             "home's), the demo's annotator labels them, the pipeline learns from them")
    parser.add_argument("--label-studio-token-env", metavar="VAR", default=DEFAULT_TOKEN_ENV,
                        help=f"the environment variable holding Label Studio's API token (default {DEFAULT_TOKEN_ENV})")
    parser.add_argument("--force-training", action="store_true",
                        help="start every run of this invocation with the DAG param force_training=true: decide "
                             "trains whatever schedule.min_new_rows and drift say (a retry after fixing a failed "
                             "round, which trains the rows waiting since, with or without new files)")
    args = parser.parse_args(argv)
    if args.days < 1 or args.rows_per_day < 1:
        parser.error(f"--days and --rows-per-day must be at least 1 (got {args.days} and {args.rows_per_day})")
    return args


def print_summary(config: PipelineConfig, store: ArtifactStore, home: Path, days: DaysRun) -> None:
    """Every day's summary, the monitor's table, the registry's aliases and the learning curve."""
    # lazy: the summary and the curve read the steps' facts, whose modules load torch (5 s measured): wanted only
    # once there are runs to report, not for `freshet demo --help` or a setup error
    from tasks.demo.learning_curve import build as build_learning_curve
    from tasks.demo.summary import monitor_table

    print("\n".join(["", "=" * 78, "freshet demo summary", "=" * 78, *days.summary,
                     *(monitor_table(days.monitored) if days.monitored else []),
                     *(labelling_table(days.labelled) if days.labelled else [])]))
    print(f"\nregistry: {config.mlflow.model_name} aliases {json.dumps(aliases(config))}")
    if days.run_ids:
        # Over every day this home has run, not only this invocation's: the criterion is about the whole curve.
        try:
            _, paths = build_learning_curve(config, store, None, home / "reports")
        except FileNotFoundError as error:  # no run got past validate yet (the first one failed there)
            print(f"\n{error}")
        else:
            print(f"\n{paths['markdown'].read_text()}")
            print(f"learning curve: {paths['png']} (table: {paths['markdown']}, {paths['csv']}; also in MLflow"
                  " as the run 'learning-curve')")


def ui_hints(config: PipelineConfig, config_path: Path, home: Path,
             labelling: DemoLabelling | None = None) -> list[str]:
    """How to open the UIs over this demo's stores: commands with absolute paths, for any directory."""
    # The steps resolved a relative tracking path against this directory; `freshet ui` would take the config's.
    here, tracking_uri = Path.cwd(), config.mlflow.tracking_uri
    same = absolute_tracking_uri(tracking_uri, here) == absolute_tracking_uri(tracking_uri, config_path.parent)
    mlflow = (f"{shlex.join(ui_command('mlflow', config_path, home, None if same else here))}     (mlflow ui on"
              f" :{MLFLOW_PORT} over {absolute_tracking_uri(tracking_uri, here)})"
              if mlflow_ui_command(config, config_path, here) else f"{tracking_uri} (the tracking server's own UI)")
    airflow = (f"{shlex.join(ui_command('airflow', config_path, home))}     (airflow standalone on :8080,"
               f" parallelism 4; admin password in {home}/airflow/simple_auth_manager_passwords.json.generated)")
    title = ("Look at it (from any directory; in the checkout, `make airflow-ui` / `make mlflow-ui` with CONFIG= and"
             " FRESHET_HOME= run the same):")
    hints = [title, f"  Airflow UI:  {airflow}", f"  MLflow UI:   {mlflow}"]
    if labelling is not None:
        with contextlib.suppress(LabelStudioError):  # the demo is over: a server gone since only loses the link
            project = labelling.project_url()
            hints.append(f"  Label Studio: {project or labelling.connection.url}     (project"
                         f" {labelling.connection.project!r}; the tab {QUEUE_VIEW!r} shows the champion's"
                         " pre-annotations)")
    return hints


@dataclass
class DaysRun:
    """What `run_days` did: the summary lines, the pipeline runs, each day's monitor figures (and labelling
    figures, with the labelling loop), and the first failed DAG run ("day N (date): task X ...", None when every
    run succeeded)."""

    summary: list[str]
    run_ids: list[str]
    monitored: list[dict[str, Any]]
    failed: str | None = None
    labelled: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def run_day_dags(env: dict[str, str], logical_date: dt.date, log_path: Path, conf: dict[str, Any] | None,
                 production: bool, labelling: DemoLabelling | None = None
                 ) -> tuple[list[DagOutcome], AnnotationRound | str | None]:
    """One day's DAG runs: batch scoring (with `production`), the labelling queue and the annotator (with
    `labelling`), the pipeline, then the monitor; and the annotator's pass (its error in words when it failed)."""
    outcomes: list[DagOutcome] = []
    annotation: AnnotationRound | str | None = None
    if production:
        print(f"running DAG freshet_score for {logical_date} ...", flush=True)
        outcomes.append(run_dag(env, logical_date, log_path.with_name(f"score-{logical_date}.log"), "freshet_score"))
    if production and labelling is not None:
        print(f"running DAG freshet_label for {logical_date}, then the demo's annotator ...", flush=True)
        outcomes.append(run_dag(env, logical_date, log_path.with_name(f"label-{logical_date}.log"), "freshet_label"))
        try:
            annotation = labelling.annotate()
        except LabelStudioError as error:
            annotation = str(error)
    print(f"running DAG {DAG_ID} for {logical_date} (log: {log_path}) ...", flush=True)
    outcomes.append(run_dag(env, logical_date, log_path, conf=conf))
    if production:
        print(f"running DAG freshet_monitor for {logical_date} ...", flush=True)
        outcomes.append(run_dag(env, logical_date, log_path.with_name(f"monitor-{logical_date}.log"),
                                "freshet_monitor"))
    return outcomes, annotation


def prepare_labelling(config: PipelineConfig, corpus: Path, demo_site: bool, fresh_home: bool) -> DemoLabelling | None:
    """The labelling loop the config asks for (`label.label_studio`; None: not asked for), checked before anything
    runs: it needs the demo's corpus and its scored texts, and a server that answers and takes the token."""
    labelling = DemoLabelling.of(config, corpus)
    if labelling is None:
        return None
    if not demo_site:
        raise LabellingSetupError("the demo's annotator answers from the demo corpus: the labelling loop needs the "
                                  "demo site (a config whose first crawl source is a jsonl_feed on loopback)")
    if drop_folder(config, config.schedule.start_date) is None:
        raise LabellingSetupError("score.input must name a local drop folder: the labelling loop picks from the "
                                  "texts the champion scored")
    labelling.check(fresh_home)
    return labelling


def serve_days(stack: contextlib.ExitStack, config: PipelineConfig, plan: DemoPlan, corpus: Path | None,
               labelling: DemoLabelling | None) -> str | None:
    """The demo site serving `corpus` for the planned days (its URL), or None when the config's own sources are
    crawled; either way, which days this run covers."""
    last_day = plan.first_day + plan.days - 1
    if corpus is None:
        print(f"crawling the config's own sources ({', '.join(s.name for s in config.crawl.sources)});"
              f" this run: day(s) {plan.first_day + 1}..{last_day + 1}")
        return None
    source = urlsplit(config.crawl.sources[0].url)
    # Every corpus row names its day, so the site publishes exactly the planned days.
    site = stack.enter_context(serve(corpus, plan.start_date, days=last_day, initial_fraction=0.0,
                                     host=str(source.hostname or "127.0.0.1"), port=source.port or 80,
                                     unlabelled_fraction=UNLABELLED_FRACTION if labelling else 0.0))
    print(f"demo site: {site.url} publishing about {plan.rows_per_day} packages a day from {plan.start_date}"
          f"; this run: day(s) {plan.first_day + 1}..{last_day + 1}")
    return str(site.url)


def summarize_labelling(store: ArtifactStore, labelling: DemoLabelling, logical_date: dt.date, since: str,
                        run_id: str | None, annotation: AnnotationRound | str | None) -> tuple[list[str], dict[str, Any]]:
    """The day's labelling round: what was queued, what the annotator labelled, what the pipeline pulled back."""
    label_run = find_run(store, logical_date, since, "label")
    pipeline = {step: manifest for step in ("crawl", "clean")
                if run_id and (manifest := read_manifest(store, run_id, step))}
    lines, figures = summarize_day(store, labelling, read_manifest(store, label_run, "label") if label_run else None,
                                   pipeline, annotation)
    return lines, {"date": logical_date.isoformat(), **figures}


def first_failure(day: int, logical_date: dt.date, failed: Sequence[DagOutcome],
                  annotation: AnnotationRound | str | None) -> str | None:
    """The day's first failure in words ("day N (date): task X ..."), None when the day went through."""
    if failed:
        first = failed[0]
        reason = first.failures[0].describe() if first.failures else f"airflow exit {first.exit_code}"
        return f"day {day + 1} ({logical_date}): {first.dag_id} {reason}"
    if isinstance(annotation, str):
        return f"day {day + 1} ({logical_date}): the demo's annotator: {annotation}"
    return None


def run_one_day(days: DaysRun, config: PipelineConfig, store: ArtifactStore, env: dict[str, str], home: Path,
                plan: DemoPlan, day: int, site_url: str | None, since: str, conf: dict[str, Any] | None,
                labelling: DemoLabelling | None) -> None:
    """One planned day: its DAG runs, then its summary, monitor and labelling figures, and its failure into `days`."""
    # lazy: as in print_summary (the steps' facts types load torch, 5 s measured)
    from tasks.demo.summary import summarize_production, summarize_run

    logical_date = plan.logical_date(day)
    log_path = home / "logs" / f"dag-{logical_date}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    day_started = time.perf_counter()
    # The day's texts are scored (by yesterday's champion) before the pipeline learns their labels.
    production = site_url is not None and drop_published_texts(
        config, site_url, logical_date, with_unlabelled=labelling is not None) is not None
    outcomes, annotation = run_day_dags(env, logical_date, log_path, conf, production, labelling)
    write_demo_state(home, plan, day + 1)
    run_id = find_run(store, logical_date, since)
    days.run_ids += [run_id] if run_id else []
    failed = [outcome for outcome in outcomes if outcome.failed]
    failed_parts = [outcome.dag_id for outcome in failed] + (["annotator"] if isinstance(annotation, str) else [])
    verdict = ("FAILED: " + ", ".join(failed_parts)) if failed_parts else "ok"
    days.summary += [f"--- day {day + 1}, {logical_date} ({time.perf_counter() - day_started:.0f} s): {verdict}"]
    days.summary += summarize_run(store, run_id) if run_id else [f"  no run recorded; see {log_path}"]
    if conf and conf.get("force_training") and run_id and read_manifest(store, run_id, "decide") is None:
        days.summary.append("  force_training did not apply: the run ended before decide")
    for outcome in failed:
        days.summary += outcome.describe()
    if production:
        lines, figures = summarize_production(store, logical_date, find_run(store, logical_date, since, "score"),
                                              find_run(store, logical_date, since, "monitor"))
        days.summary += lines
        days.monitored.append(figures)
    if production and labelling is not None:
        lines, figures = summarize_labelling(store, labelling, logical_date, since, run_id, annotation)
        days.summary += lines
        days.labelled.append(figures)
    days.failed = first_failure(day, logical_date, failed, annotation)


def run_days(config: PipelineConfig, store: ArtifactStore, env: dict[str, str], home: Path, plan: DemoPlan,
             corpus: Path | None, since: str, conf: dict[str, Any] | None = None,
             labelling: DemoLabelling | None = None) -> DaysRun:
    """The planned days, one after the other (the demo site serving `corpus` when the config crawls it): each
    day's texts scored before the pipeline learns their labels, queued for labelling and annotated (with
    `labelling`), the pipeline (with `conf` as its params), then the monitor. A failed DAG run (or annotator)
    ends the days: the next ones would meet the same cause."""
    days = DaysRun([], [], [])
    last_day = plan.first_day + plan.days - 1
    with contextlib.ExitStack() as stack:
        site_url = serve_days(stack, config, plan, corpus, labelling)
        for day in range(plan.first_day, last_day + 1):
            run_one_day(days, config, store, env, home, plan, day, site_url, since, conf, labelling)
            if days.failed:
                if day < last_day:
                    days.summary.append(f"  the day(s) after it ({day + 2}..{last_day + 1}) were not run")
                break
    return days


if __name__ == "__main__":
    raise SystemExit(main())
