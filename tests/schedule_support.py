"""Builders for scheduling and report tests: a day's real upstream manifests with validation metrics."""

from __future__ import annotations

from tasks.contract import StepContext, execute
from tasks.records import RECORD_SCHEMA, write_parquet
from tests.pipeline_support import fake_upstream


def ingest(config, store, run_id, day, rows, psi=None):
    """Real clean/augment/validate manifests and history entry for `rows`; validate carries the row
    counts and drift metrics the real step reports."""
    upstream = fake_upstream(config, store, run_id, day, rows)

    def validate_body(context: StepContext) -> None:
        write_parquet(rows, context.out_dir / "valid.parquet", schema=RECORD_SCHEMA)
        (context.out_dir / "gx.json").write_text("{}")
        context.add_output("valid", "valid.parquet", "dataset", rows=len(rows))
        context.add_output("gx_result", "gx.json", "report")
        context.metrics.update({"rows_in": len(rows), "rows_valid": len(rows), "drift.label_psi": psi,
                                "drift.length_psi": None})

    upstream["validate"] = execute("validate", validate_body, config, {}, run_id=run_id, store=store,
                                   logical_date=day, extra_fingerprint={"rows": len(rows), "psi": psi})
    return upstream
