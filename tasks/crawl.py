"""Crawl step: fetch the new and changed records of every configured source, politely and safely.

Source kinds (`kind` in the pipeline YAML): `jsonl_feed` (here: robots.txt, the page index
`feed/index.json`, then every JSON-lines page dated on or before the logical date), and `html_site`,
`feed`, `json_api`, `local`, `debian_index` (in `tasks.sources`). Every kind fetches through
`SourceSession`: conditional GETs (If-None-Match / If-Modified-Since) so unchanged documents cost a
304, robots.txt honoured with protego, requests paced per host, retried with exponential backoff and
jitter (honouring Retry-After), capped in size, limited to the content types the kind reads, and
refused when the host resolves to a private, loopback, link-local, unspecified or cloud-metadata
address (unless the source opts in with `allow_private_network`); redirects are followed by hand,
each hop re-checked. Every response has a deadline (`response_deadline_s`, connect to last byte) and,
after a grace period, a minimum transfer rate. Local files get the same byte cap and "not modified" by
size and mtime. Only records whose id is new or whose text changed since earlier crawls are emitted,
and of records with the same normalised text under different ids only the first (the others are
counted as duplicates).

A page that still fails after its retries is skipped, listed in the report's `failed_pages` and kept
`pending` in the crawl state, with a backoff, so a later crawl retries it; the rest of the crawl
commits. The step fails on source-level failures (robots.txt, an index or sitemap unreachable) and
when more than `max_failed_page_fraction` of a source's pages failed, naming them. Progress within a
run is checkpointed under the store's work dir, so a retry of a killed or failed crawl resumes from the
pages it already has.

The crawl state (page validators, the content hash of every emitted record) is written into the step
output and copied to `state/crawl/<source>.json` only after the manifest is committed, so a crash
mid-crawl loses nothing and duplicates nothing, and a rerun of the same run id reuses the manifest
without crawling. Progress goes to the log (stderr) every `crawl.progress_every_s`; the per-source
report (fetched, not modified, skipped by robots, refused by the guard, errors by kind, failed pages,
duplicates) goes to crawl_report.json, the manifest metrics and MLflow.

    python -m tasks.crawl --config configs/demo.yaml --run-id manual-1 --logical-date 2025-01-03
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import httpx
import mlflow
import pandas as pd

from tasks.config import PipelineConfig, SourceConfig
from tasks.contract import StepContext, cli, execute, logical_day, step_fingerprint
from tasks.inbox import post_batch
from tasks.manifest import Manifest, StepFacts
from tasks.records import QUARANTINE_SCHEMA, RECORD_SCHEMA, write_parquet
from tasks.sources import SOURCE_KINDS, crawl_source
from tasks.sources.fetch import HostPacer, SourceFetcher
from tasks.sources.report import SourceReport
from tasks.sources.session import STATE_PREFIX, CrawlCheckpoint, SourceCrawl, read_crawl_state, source_location
from tasks.sources.transport import open_client
from tasks.store import ArtifactStore
from tasks.tracking import log_dataset

log = logging.getLogger("freshet.crawl")

STEP = "crawl"
CONFIG_SECTIONS = ("crawl",)


class CrawlFacts(StepFacts):
    """None: the crawl's counts are its metrics (the new_data control reads those) and what it did per source is
    its `report` output. Typed all the same, so a fact written without a field here fails where it is written."""


def publish_crawl_state(store: ArtifactStore, manifest: Manifest, sources: Sequence[SourceConfig]) -> None:
    """Copy each source's committed crawl state to `state/crawl/` unless the global one is as new."""
    state_dir = manifest.output("crawl_state").uri
    for source in sources:
        with fsspec.open(f"{state_dir}/{source.name}.json", "r") as handle:
            committed = json.load(handle)
        current = store.read_json(*STATE_PREFIX, f"{source.name}.json")
        if current is None or current.get("generation", 0) < committed["generation"]:
            if manifest.reused:
                log.info("crawl %s: restoring crawl state generation %d from run %s", source.name,
                         committed["generation"], committed["run_id"])
            store.write_json(committed, *STATE_PREFIX, f"{source.name}.json")


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None, client: httpx.Client | None = None) -> Manifest:
    """Crawl every configured source; `client` is injectable (tests use `httpx.MockTransport`)."""
    until = logical_day(logical_date)
    # The checkpoints of this run's earlier attempts count only for the same config and logical date.
    fingerprint = step_fingerprint(STEP, config, inputs, logical_date, CONFIG_SECTIONS)

    def body(context: StepContext) -> None:
        crawls = crawl_sources(config, store, client, run_id, logical_date, until, fingerprint)
        write_outputs(context, crawls, run_id, logical_date)
        context.metrics.update(crawl_metrics(crawls))
        context.facts.update(CrawlFacts().dump())
        log_reports([crawl.report for crawl in crawls])

    def track(manifest: Manifest) -> None:
        # From the committed artifacts only: after a kill past the commit, the rerun skips `body` and tracks here.
        mlflow.log_artifact(str(store.local_path(manifest.output("report").uri)))
        # The crawled batch as a dataset output; validate logs the same name and digest as its input.
        records = manifest.output("records")
        log_dataset(pd.read_parquet(store.local_path(records.uri)), records, name=f"{config.name}.records",
                    context="output")

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=CONFIG_SECTIONS, track=track)
    publish_crawl_state(store, manifest, config.crawl.sources)
    # Committed: the checkpoints have served (a rerun of this run id reuses the manifest instead).
    shutil.rmtree(store.work_dir(run_id, STEP), ignore_errors=True)
    post_batch(store, manifest)  # after the state: a batch is never in the inbox without its state advanced
    return manifest


def crawl_sources(config: PipelineConfig, store: ArtifactStore, client: httpx.Client | None, run_id: str,
                  logical_date: str | None, until: dt.date | None, fingerprint: str) -> list[SourceCrawl]:
    """Every configured source crawled in turn, each from its state and resumable from its checkpoint."""
    http = client or open_client(config.crawl)
    pacer = HostPacer(config.crawl.min_interval_s)
    work_dir = store.work_dir(run_id, STEP)
    crawls: list[SourceCrawl] = []
    try:
        for source in config.crawl.sources:
            fetcher = SourceFetcher(http, config.crawl, source, SourceReport(source.name, source_location(source)),
                                    pacer, SOURCE_KINDS[source.kind].accepts)
            checkpoint = CrawlCheckpoint(work_dir / f"{source.name}.checkpoint.json", fingerprint,
                                         config.crawl.checkpoint_every_pages, config.crawl.checkpoint_every_s)
            crawls.append(crawl_source(fetcher, read_crawl_state(store, source.name), until, run_id, logical_date,
                                       checkpoint))
    finally:
        if client is None:
            http.close()
    return crawls


def write_outputs(context: StepContext, crawls: Sequence[SourceCrawl], run_id: str, logical_date: str | None) -> None:
    """The records and the quarantine of every source, each source's new state, and the crawl report."""
    rows = sorted((row for crawl in crawls for row in crawl.rows.values()), key=lambda row: row["id"])
    quarantined = [row for crawl in crawls for row in crawl.quarantined]
    sources = [crawl.report.source for crawl in crawls]
    write_parquet(rows, context.out_dir / "records.parquet", schema=RECORD_SCHEMA)
    context.add_output("records", "records.parquet", "dataset", rows=len(rows), sources=sources)
    write_parquet(quarantined, context.out_dir / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
    context.add_output("quarantine", "quarantine.parquet", "dataset", rows=len(quarantined), sources=sources)
    for crawl in crawls:
        state_path = context.out_dir / "crawl_state" / f"{crawl.report.source}.json"
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(crawl.state, sort_keys=True))
    context.add_output("crawl_state", "crawl_state", "directory", sources=sources)
    report = {"run_id": run_id, "logical_date": logical_date,
              "sources": {crawl.report.source: crawl.report.to_dict() for crawl in crawls}}
    (context.out_dir / "crawl_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    context.add_output("report", "crawl_report.json", "report")


def crawl_metrics(crawls: Sequence[SourceCrawl]) -> dict[str, Any]:
    """The sources' counts summed; errors by kind as their own metrics (errors.too_large, ...), so MLflow can
    chart and compare them."""
    reports = [crawl.report for crawl in crawls]
    metrics: dict[str, Any] = {
        "rows_new": sum(len(crawl.rows) for crawl in crawls),
        "rows_quarantined": sum(len(crawl.quarantined) for crawl in crawls),
        "pages_fetched": sum(item.pages_fetched for item in reports),
        "pages_not_modified": sum(item.pages_not_modified for item in reports),
        "bytes": sum(item.bytes for item in reports),
        "errors": sum(item.errors for item in reports),
        "skipped_robots": sum(item.skipped_robots for item in reports),
        "refused_by_guard": sum(item.refused_by_guard for item in reports),
        "retries": sum(item.retries for item in reports),
        "records_changed": sum(item.records_changed for item in reports),
        "pages_failed": sum(item.pages_failed for item in reports),
        "records_duplicate": sum(item.records_duplicate for item in reports),
    }
    for item in reports:
        for kind, count in item.errors_by_kind.items():
            metrics[f"errors.{kind}"] = int(metrics.get(f"errors.{kind}") or 0) + count
    return metrics


def log_reports(reports: Sequence[SourceReport]) -> None:
    for item in reports:
        log.info("crawl %s: fetched %d, not modified %d, resumed %d, failed %d, deferred %d, skipped by robots "
                 "%d, refused by guard %d, errors %s, records new %d changed %d duplicate %d quarantined %d",
                 item.source, item.pages_fetched, item.pages_not_modified, item.pages_resumed, item.pages_failed,
                 item.pages_deferred, item.skipped_robots, item.refused_by_guard, item.errors_by_kind or 0,
                 item.records_new, item.records_changed, item.records_duplicate, item.records_quarantined)
        for failed in item.failed_pages:
            log.warning("crawl %s: page failed, pending for a later crawl: %s (%s: %s)", item.source,
                        failed["url"], failed["reason"], failed["detail"])


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
