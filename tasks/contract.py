"""The step contract: artifact references, manifests, idempotent execution and the step CLI.

A step is `run(config, inputs, *, run_id, store, ...) -> Manifest`. It reads only its input
manifests and config, writes only under `runs/<run_id>/<step>/` (staged, then committed in one
rename with the manifest inside), and a rerun whose fingerprint (config section + input digests +
any extra inputs such as the champion version) is unchanged returns the stored manifest untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.config import ConfigError, PipelineConfig, digest_json, load_config
from tasks.manifest import ArtifactRef, Manifest, MetricValue, StepError
from tasks.store import ArtifactStore, digest_path, safe_run_id
from tasks.tracking import is_tracked, log_manifest, mark_tracked, step_run

log = logging.getLogger("freshet")


@dataclass
class StepContext:
    """What a step body sees: its config, inputs, a staging directory and its output registry."""

    step: str
    run_id: str
    config: PipelineConfig
    store: ArtifactStore
    inputs: Mapping[str, Manifest]
    out_dir: Path
    logical_date: str | None = None
    fingerprint: str = ""
    outputs: dict[str, ArtifactRef] = field(default_factory=dict)
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> Manifest:
        try:
            return self.inputs[name]
        except KeyError as error:
            raise StepError(f"{self.step}: missing input manifest {name!r}; got {sorted(self.inputs)}") from error

    def input_path(self, manifest: str, output: str) -> Path:
        return self.store.local_path(self.input(manifest).output(output).uri)

    def add_output(
        self,
        name: str,
        relative_path: str,
        kind: Literal["dataset", "model", "file", "directory", "report"],
        rows: int | None = None,
        **meta: Any,
    ) -> ArtifactRef:
        staged = self.out_dir / relative_path
        if not staged.exists():
            raise StepError(f"{self.step}: output {name!r} was not written at {relative_path}")
        ref = ArtifactRef(
            uri=self.store.step_uri(self.run_id, self.step, relative_path),
            kind=kind,
            digest=digest_path(staged),
            rows=rows,
            meta=meta,
        )
        self.outputs[name] = ref
        return ref

    def mlflow_run(self) -> AbstractContextManager[Any]:
        """The step's MLflow run, active, for a body whose work needs a run before the commit (MLflow makes a model
        version only from a model logged in a run). It is the run `track` records into after the commit; the record
        itself (evidence, tags, metrics) belongs in `track`, which a recovery repeats."""
        return step_run(self.config, self.run_id, self.step, self.logical_date)


StepBody = Callable[[StepContext], None]
StepTrack = Callable[[Manifest], None]


def manifest_only(manifest: Manifest) -> None:
    """The `track` of a step whose MLflow record is the manifest alone (its metrics, tags and manifest.json, which
    the contract logs for every tracked step)."""


def step_fingerprint(
    step: str,
    config: PipelineConfig,
    inputs: Mapping[str, Manifest],
    logical_date: str | None,
    config_sections: Sequence[str] = (),
    extra_fingerprint: Mapping[str, Any] | None = None,
) -> str:
    """What decides a step's result: its config sections, input fingerprints and extra inputs."""
    return digest_json(
        {
            "step": step,
            "config": config.section_hash(*config_sections),
            "inputs": {name: manifest.fingerprint for name, manifest in sorted(inputs.items())},
            "logical_date": logical_date,
            "extra": dict(extra_fingerprint or {}),
        }
    )


def reusable(store: ArtifactStore, run_id: str, step: str, fingerprint: str) -> Manifest | None:
    """The committed manifest of this fingerprint, which `execute` reuses, or None: `execute` runs the body. Also for
    a process that follows another one's `execute` (a DDP rank other than 0) and must know which way it went."""
    existing = read_manifest(store, run_id, step)
    return existing if existing is not None and existing.fingerprint == fingerprint else None


def execute(
    step: str,
    body: StepBody,
    config: PipelineConfig,
    inputs: Mapping[str, Manifest],
    *,
    run_id: str,
    store: ArtifactStore,
    logical_date: str | None = None,
    config_sections: Sequence[str] = (),
    extra_fingerprint: Mapping[str, Any] | None = None,
    track: StepTrack | None = None,
) -> Manifest:
    """Run a step body once per fingerprint; return the committed manifest.

    `track(manifest)` records the step's evidence (artifacts, datasets, tags, metric histories) in its MLflow run
    once the manifest is committed, from the manifest and its committed artifacts only: after a kill past the
    commit, a rerun skips `body` and runs `track` alone. The contract opens the run and logs the manifest first
    (`manifest_only`: nothing more); without `track` the step has no MLflow run. A reused manifest was tracked
    when it was made, so it is not tracked again.
    """
    fingerprint = step_fingerprint(step, config, inputs, logical_date, config_sections, extra_fingerprint)
    existing = reusable(store, run_id, step, fingerprint)
    if existing is not None:
        log.info("%s: inputs unchanged since %s, reusing manifest %s", step, existing.created_at, existing.uri)
        if track is not None and not is_tracked(config, run_id, step, fingerprint):
            # Killed after the commit, before its MLflow record was complete: finish the record, once.
            log.info("%s: completing the MLflow record of the committed manifest", step)
            _record(config, run_id, step, logical_date, existing, track)
        return existing.model_copy(update={"reused": True})

    with store.staging(run_id, step) as out_dir:
        context = StepContext(
            step=step, run_id=run_id, config=config, store=store, inputs=inputs,
            out_dir=out_dir, logical_date=logical_date, fingerprint=fingerprint,
        )
        body(context)
        manifest = Manifest(
            step=step,
            run_id=run_id,
            uri=store.step_uri(run_id, step, "manifest.json"),
            fingerprint=fingerprint,
            config_hash=config.config_hash,
            logical_date=logical_date,
            inputs={name: manifest.fingerprint for name, manifest in inputs.items()},
            outputs=context.outputs,
            metrics=context.metrics,
            facts=context.facts,
            created_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        (out_dir / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        fault_drill(step, "staged")
        store.commit(out_dir, run_id, step)
    if track is not None:
        _record(config, run_id, step, logical_date, manifest, track)
    return manifest


def _record(config: PipelineConfig, run_id: str, step: str, logical_date: str | None, manifest: Manifest,
            track: StepTrack) -> None:
    with step_run(config, run_id, step, logical_date):
        log_manifest(manifest)
        track(manifest)
        fault_drill(step, "tracked")
        mark_tracked(manifest.fingerprint)


FAULT_DRILL = "FRESHET_FAULT_DRILL"
FAULT_POINTS = ("staged", "tracked")  # outputs written but not committed; committed, its MLflow run still open


def fault_drill(step: str, point: str) -> None:
    """Fault drill: `FRESHET_FAULT_DRILL=<step>:<point>` SIGKILLs this step's process group there, as a lost
    machine or an OOM kill would, so an operator (and tests/test_kill_anywhere.py) can check that a rerun
    finishes the work with nothing lost or doubled."""
    if os.environ.get(FAULT_DRILL) == f"{step}:{point}":
        log.warning("fault drill: killing %s at %s", step, point)
        os.killpg(os.getpgid(0), signal.SIGKILL)


def logical_day(logical_date: str | None) -> dt.date | None:
    """The data day of a logical date: the date part of an ISO date or timestamp (an offset is taken in UTC)."""
    if logical_date is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(logical_date)
    except ValueError as error:
        raise StepError(f"logical date {logical_date!r} is not an ISO date or timestamp") from error
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date()


def read_manifest(store: ArtifactStore, run_id: str, step: str) -> Manifest | None:
    data = store.read_json("runs", safe_run_id(run_id), step, "manifest.json")
    return None if data is None else Manifest.model_validate(data)


# ----------------------------------------------------------------------------------------- CLI


def build_parser(step: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{step}", description=description)
    parser.add_argument("--config", required=True, help="pipeline YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="typed config override, e.g. train.epochs=1 (repeatable)")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--logical-date", default=None, help="ISO date of the data interval (Airflow logical date)")
    parser.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME[=MANIFEST_URI]",
                        help="an upstream manifest; NAME alone means this run's manifest of step NAME")
    parser.add_argument("--xcom-file", default=None,
                        help="also write the manifest here (KubernetesPodOperator reads /airflow/xcom/return.json)")
    return parser


def resolve_inputs(store: ArtifactStore, run_id: str, specs: Sequence[str]) -> dict[str, Manifest]:
    import fsspec

    manifests: dict[str, Manifest] = {}
    for spec in specs:
        name, _, uri = spec.partition("=")
        if uri:
            with fsspec.open(uri, "r") as handle:
                manifest = Manifest.model_validate_json(handle.read())
        else:
            found = read_manifest(store, run_id, name)
            if found is None:
                raise StepError(f"input {name!r}: no manifest for run {run_id!r} at {store.step_uri(run_id, name, 'manifest.json')}")
            manifest = found
        manifests[name] = manifest
    return manifests


def parse_bool(value: str) -> bool:
    """A command-line boolean as Airflow renders params into templates (True/False), or true/false, 1/0."""
    normalised = value.strip().lower()
    if normalised in ("true", "1", "yes"):
        return True
    if normalised in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def cli(step: str, run: Callable[..., Manifest], argv: Sequence[str] | None = None, description: str = "",
        options: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Shared `__main__`: parse, run, print the manifest as the last stdout line (the XCom value).

    `options` adds step-specific flags ({"--force-training": {"dest": "force", "type": parse_bool, ...}}),
    passed to `run` as keyword arguments named by their `dest`.
    """
    logging.basicConfig(level=os.environ.get("FRESHET_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser(step, description)
    for flag, settings in (options or {}).items():
        parser.add_argument(flag, **settings)
    args = parser.parse_args(argv)
    extra = {str(settings["dest"]): getattr(args, str(settings["dest"])) for settings in (options or {}).values()}
    try:
        config = load_config(args.config, args.overrides)
        store = ArtifactStore(config.artifact_root)
        inputs = resolve_inputs(store, args.run_id, args.inputs)
        manifest = run(config, inputs, run_id=args.run_id, store=store, logical_date=args.logical_date, **extra)
    except (ConfigError, StepError) as error:
        print(f"freshet {step}: error: {error}", file=sys.stderr)
        return 2
    line = manifest.model_dump_json()
    if args.xcom_file:
        Path(args.xcom_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.xcom_file).write_text(line)
    print(line, flush=True)
    return 0


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
