"""Promote the registered candidate: `champion` moves to it, the old champion keeps `previous`.

Check-and-set: if the champion changed since the gate compared against it, promotion refuses
rather than overwrite. A rejected candidate is never promoted (the DAG skips this step; called
anyway, it records why and moves nothing). Version tags record each tenure of a version as
`champion` (since, until, who, why, promotion or rollback), so "which version was champion at time T"
is answerable from MLflow alone (`tasks.model_registry.champion_at`, `freshet history --at T`).
`rollback` is the pure function behind `freshet rollback` (and for a DAG task to call).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Literal

from pydantic import Field

from tasks import model_registry
from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute, manifest_only
from tasks.manifest import Manifest, StepError, StepFacts, airflow_identity
from tasks.register import RegisterFacts
from tasks.store import ArtifactStore

STEP = "promote"
log = logging.getLogger("freshet.promote")


def _identity() -> str:
    """Who moved the alias: the Airflow run when there is one, else the local user."""
    import getpass

    airflow = airflow_identity()
    if airflow:
        return "airflow " + " ".join(f"{key}={value}" for key, value in airflow.items())
    return getpass.getuser()


class PromoteFacts(StepFacts):
    """Promoted or not; when not, why (the gate's reasons) and which version stayed a challenger; when promoted,
    the champion, the one it replaced, and whether the alias moved in this run ("no": a retry after the move)."""

    promoted: bool
    reasons: list[str] = Field(default_factory=list)
    version: str | None = None
    champion: str | None = None
    previous: str | None = None
    changed: Literal["yes", "no"] | None = None


def move_champion(config: PipelineConfig, version: str, expected_champion: str | None, reason: str,
                  who: str | None = None) -> dict[str, str | None]:
    """Point `champion` at `version` if the champion is still `expected_champion`; keep `previous`."""
    client = model_registry.client(config)
    name = config.mlflow.model_name
    current = model_registry.version_by_alias(config, model_registry.CHAMPION)
    current_version = str(current.version) if current else None
    if current_version == version:  # a retry after the move: the same outcome, nothing moved twice
        previous = model_registry.version_by_alias(config, model_registry.PREVIOUS)
        return {"champion": version, "previous": str(previous.version) if previous else None, "changed": "no"}
    if current_version != expected_champion:
        raise StepError(
            f"promote: champion of {name} is version {current_version} but the gate compared the candidate "
            f"against {expected_champion}; refusing to overwrite a champion the gate never saw (re-run evaluate)"
        )
    now = dt.datetime.now(dt.UTC).isoformat()
    who = who or _identity()
    if current_version is not None:
        client.set_registered_model_alias(name, model_registry.PREVIOUS, current_version)
        model_registry.end_tenure(client, name, current_version, now, ended_by=f"promotion of version {version} by {who}")
    client.set_registered_model_alias(name, model_registry.CHAMPION, version)
    model_registry.start_tenure(client, name, version, now, kind="promotion", by=who, why=reason)
    client.set_model_version_tag(name, version, "freshet.promotion_reason", reason)
    for key, value in airflow_identity().items():
        client.set_model_version_tag(name, version, f"freshet.promoted_by.airflow.{key}", value)
    return {"champion": version, "previous": current_version, "changed": "yes"}


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    def body(context: StepContext) -> None:
        registration = RegisterFacts.of(context.input("register"))
        gate = registration.gate
        if not gate.passed:
            context.facts.update(PromoteFacts(promoted=False, reasons=gate.reasons, version=registration.version).dump())
            context.metrics["promoted"] = False
            log.info("promote: version %s not promoted: %s", registration.version, "; ".join(gate.reasons))
            return
        moved = move_champion(config, registration.version, registration.compared_champion,
                              reason=f"passed the gate in run {run_id}")
        context.facts.update(PromoteFacts(promoted=True, **moved).dump())
        context.metrics["promoted"] = True
        context.metrics["champion_version"] = int(str(moved["champion"]))
        log.info("promote: %s@champion -> version %s (previous: %s)", config.mlflow.model_name, moved["champion"], moved["previous"])

    return execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                   config_sections=("mlflow",), track=manifest_only)


def rollback(config: PipelineConfig, who: str, why: str, expected_champion: str | None = None,
             identity: dict[str, str] | None = None) -> dict[str, str]:
    """Move `champion` back to `previous`; both versions record who, why and when (audit tags).

    Pure apart from the registry it is given through `config`: a DAG task can call it with the
    triggering user and reason. `expected_champion` (optional) refuses if the champion moved meanwhile.
    `identity` ({dag_id, dag_run_id, try_number}) names the Airflow run asking; default: the one our
    step operators set in the environment, if any. Returns {"champion", "demoted", "at", "who", "why"}.
    """
    if not who.strip() or not why.strip():
        raise StepError("rollback: say who rolls back and why (both are recorded on the versions)")
    client = model_registry.client(config)
    name = config.mlflow.model_name
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    previous = model_registry.version_by_alias(config, model_registry.PREVIOUS)
    if champion is None or previous is None:
        raise StepError(f"rollback: {name} needs both a champion and a previous version "
                        f"(champion={champion and champion.version}, previous={previous and previous.version})")
    if expected_champion is not None and str(champion.version) != str(expected_champion):
        raise StepError(f"rollback: champion of {name} is version {champion.version}, not {expected_champion}; "
                        f"refusing to roll back a champion the caller did not mean")
    now = dt.datetime.now(dt.UTC).isoformat()
    client.set_registered_model_alias(name, model_registry.CHAMPION, previous.version)
    client.delete_registered_model_alias(name, model_registry.PREVIOUS)
    model_registry.end_tenure(client, name, str(champion.version), now, ended_by=f"rollback by {who}: {why}")
    client.set_model_version_tag(name, champion.version, "freshet.rolled_back", f"{now} by {who}: {why}")
    client.set_model_version_tag(name, champion.version, "freshet.rolled_back_by", who)
    client.set_model_version_tag(name, champion.version, "freshet.rolled_back_why", why)
    client.set_model_version_tag(name, champion.version, "freshet.rolled_back_at", now)
    model_registry.start_tenure(client, name, str(previous.version), now, kind="rollback", by=who, why=why)
    client.set_model_version_tag(name, previous.version, "freshet.promotion_reason", f"rollback by {who}: {why}")
    for key, value in (airflow_identity() if identity is None else identity).items():
        client.set_model_version_tag(name, champion.version, f"freshet.rolled_back_by.airflow.{key}", value)
    return {"champion": str(previous.version), "demoted": str(champion.version), "at": now, "who": who, "why": why}


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
