"""The crawl's accounting: what crawling one source did (pages listed, fetched, failed; records new, changed,
quarantined; retries and errors by kind; the incidents themselves, capped), written to crawl_report.json and
summed into the crawl step's metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.sources.errors import CrawlError, GuardRefusedError, RobotsDisallowedError

MAX_INCIDENTS_PER_SOURCE = 100  # keeps the report small when a source misbehaves wholesale


@dataclass
class SourceReport:
    """What crawling one source did; written to crawl_report.json and summed into the metrics."""

    source: str
    url: str
    pages_listed: int = 0
    pages_selected: int = 0
    pages_fetched: int = 0
    pages_not_modified: int = 0
    pages_unchanged: int = 0  # fetched (200) but byte-identical to the last crawl
    skipped_robots: int = 0
    refused_by_guard: int = 0
    pages_failed: int = 0  # still failing after retries: skipped, kept pending for a later crawl
    pages_deferred: int = 0  # pending from an earlier crawl, not yet due for a retry
    pages_resumed: int = 0  # done by an earlier attempt of this run, taken from its checkpoint
    retries: int = 0
    retry_causes: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    records_new: int = 0
    records_changed: int = 0
    records_unchanged: int = 0
    records_quarantined: int = 0
    records_duplicate: int = 0  # same normalised text as a record of another id: not emitted
    incidents: list[dict[str, str]] = field(default_factory=list)
    failed_pages: list[dict[str, Any]] = field(default_factory=list)  # {url, reason, detail, attempts}
    duplicates: list[dict[str, str | None]] = field(default_factory=list)  # {id, url, kept_id}

    def note(self, error: CrawlError) -> None:
        """Count a skipped URL (robots, guard, bad response) and keep its details for the report."""
        if isinstance(error, RobotsDisallowedError):
            self.skipped_robots += 1
        else:
            self.errors += 1
            self.errors_by_kind[error.kind] = self.errors_by_kind.get(error.kind, 0) + 1
            if isinstance(error, GuardRefusedError):
                self.refused_by_guard += 1
        if len(self.incidents) < MAX_INCIDENTS_PER_SOURCE:
            self.incidents.append({"kind": error.kind, "url": error.url, "detail": error.detail})

    def page_failed(self, error: CrawlError) -> None:
        """A page skipped after its retries (already noted as an error): listed by URL, reason and attempts."""
        self.pages_failed += 1
        if len(self.failed_pages) < MAX_INCIDENTS_PER_SOURCE:
            self.failed_pages.append({"url": error.url, "reason": error.kind, "detail": error.detail,
                                      "attempts": error.attempts})

    def duplicate(self, record_id: str, url: str | None, kept_id: str) -> None:
        self.records_duplicate += 1
        if len(self.duplicates) < MAX_INCIDENTS_PER_SOURCE:
            self.duplicates.append({"id": record_id, "url": url, "kept_id": kept_id})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
