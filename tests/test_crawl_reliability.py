"""tasks.crawl against a site with a few bad pages: deadlines, minimum rates, failed pages kept pending,
the failed-share bound, checkpoints within a run, and duplicates under different URLs.

`BadPagesSite` is a local HTTP server (127.0.0.1, port 0) whose pages can stall before their headers,
drip their headers or body, or answer 500. The limits in `make_config` are tight (a 0.5 s deadline,
a 0.2 s grace period) so that each slow page costs a fraction of a second, not its drip time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from tasks import crawl
from tasks.config import PipelineConfig
from tasks.contract import FAULT_DRILL, read_manifest
from tasks.manifest import Manifest, StepError
from tasks.records import read_rows
from tasks.sources import guard
from tasks.sources.session import SourceSession
from tasks.store import ArtifactStore
from tasks.tracking import TRACKED_TAG

DEADLINE_S = 0.5
GRACE_S = 0.2
MIN_BYTES_PER_S = 200.0
LOGICAL_DATE = "2025-01-02"


@dataclass
class Page:
    body: bytes
    status: int = 200
    stall_s: float = 0.0  # before the status line
    drip_bytes: int = 0  # when set, the body goes out this many bytes at a time...
    drip_every_s: float = 0.0  # ...with this pause between
    drip_headers: bool = False  # the status line and headers too, a byte at a time


def article(text: str, label: str = "alpha") -> bytes:
    return (f'<html><head><meta name="label" content="{label}"></head><body><article><p class="text">{text}</p>'
            "</article></body></html>").encode()


class BadPagesSite:
    """Pages by path, a sitemap of them all, robots.txt; `requests` counts requests per path."""

    def __init__(self, pages: dict[str, Page]) -> None:
        self.pages = pages
        self.requests: Counter[str] = Counter()
        self.closing = threading.Event()  # wakes stalled handlers when the test ends
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                site.requests[self.path] += 1
                try:
                    self.answer(site.document(self.path))
                except OSError:  # the crawler gave up on this response and closed the connection
                    self.close_connection = True

            def answer(self, page: Page | None) -> None:
                if page is None:
                    page = Page(b"", status=404)
                if site.closing.wait(page.stall_s):
                    return
                etag = '"' + hashlib.sha256(page.body).hexdigest()[:16] + '"'
                if page.status == 200 and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content_type = "application/xml" if self.path.endswith(".xml") else (
                    "text/plain" if self.path.endswith(".txt") else "text/html; charset=utf-8")
                head = (f"HTTP/1.1 {page.status} X\r\nContent-Type: {content_type}\r\nContent-Length: "
                        f"{len(page.body)}\r\nETag: {etag}\r\n\r\n").encode()
                if not page.drip_headers and not page.drip_bytes:
                    self.wfile.write(head + page.body)  # one write: two would wait on the client's delayed ACK
                    return
                if page.drip_headers:
                    for position in range(len(head)):
                        self.wfile.write(head[position:position + 1])
                        if site.closing.wait(page.drip_every_s):
                            return
                else:
                    self.wfile.write(head)
                step = page.drip_bytes or len(page.body) or 1
                for position in range(0, len(page.body), step):
                    self.wfile.write(page.body[position:position + step])
                    if page.drip_bytes and site.closing.wait(page.drip_every_s):
                        return

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def document(self, path: str) -> Page | None:
        if path == "/robots.txt":
            return self.pages.get(path) or Page(b"User-agent: *\nDisallow: /private/\n")
        if path == "/sitemap.xml":
            return self.pages.get(path) or Page((
                "<?xml version='1.0'?><urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
                + "".join(f"<url><loc>{name}</loc></url>" for name in self.pages if name.endswith(".html"))
                + "</urlset>").encode())
        return self.pages.get(path)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def bad_pages() -> dict[str, Page]:
    """Good pages, a duplicate pair, and four pages that fail in four ways."""
    return {
        "/good-1.html": Page(article("alpha one: the first good article")),
        "/good-2.html": Page(article("beta two: the second good article", "beta")),
        "/good-3.html": Page(article("gamma three: the third good article", "gamma")),
        "/dup-a.html": Page(article("The same story, published twice")),
        # The same text but for case and spacing: a copy, not a different article.
        "/dup-b.html": Page(article("the  SAME story,   published twice")),
        # 20 B/s: under min_bytes_per_s once the grace period is over (30 s to send it all).
        "/slow.html": Page(article("s" * 600), drip_bytes=1, drip_every_s=0.05),
        # 300 B/s: fast enough for the minimum rate, but 20 s for the whole body.
        "/trickle.html": Page(article("t" * 6000), drip_bytes=30, drip_every_s=0.1),
        # Nothing at all for 3 s (a busy server): every attempt runs into the deadline.
        "/stall.html": Page(article("never seen"), stall_s=3.0),
        "/error.html": Page(article("fixed now: the page is back", "beta"), status=500),
    }


pytestmark = pytest.mark.usefixtures("pauses")  # conftest.py: delays recorded, never slept


@pytest.fixture()
def site() -> Iterator[BadPagesSite]:
    server = BadPagesSite(bad_pages())
    yield server
    server.close()


def make_config(tmp_path: Path, mlflow_uri: str, url: str, source_settings: dict[str, Any] | None = None,
                **crawl_settings: Any) -> PipelineConfig:
    source = {"name": "site", "kind": "html_site", "url": url, "allow_private_network": True,
              "follow_links": False, "text": {"method": "selector", "selector": "p.text"},
              "label": {"selector": "meta[name=label]", "attribute": "content"}, **(source_settings or {})}
    return PipelineConfig.model_validate({
        "labels": ["alpha", "beta", "gamma"], "artifact_root": str(tmp_path / "artifacts"),
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "test-crawl-reliability"},
        "crawl": {"sources": [source], "max_retries": 1, "backoff_base_s": 0.0, "response_deadline_s": DEADLINE_S,
                  "min_rate_grace_s": GRACE_S, "min_bytes_per_s": MIN_BYTES_PER_S, "failed_page_backoff_s": 0.0,
                  **crawl_settings},
    })


def run_crawl(config: PipelineConfig, run_id: str) -> tuple[Manifest, dict[str, dict[str, Any]], dict[str, Any]]:
    """The manifest, the emitted rows by page path, and the source's crawl report."""
    store = ArtifactStore(config.artifact_root)
    manifest = crawl.run(config, {}, run_id=run_id, store=store, logical_date=LOGICAL_DATE)
    rows = {row["id"].rsplit("/", 1)[1]: row for row in read_rows(store.local_path(manifest.output("records").uri))}
    report = json.loads(store.local_path(manifest.output("report").uri).read_text())["sources"]["site"]
    return manifest, rows, report


def crawl_state(config: PipelineConfig) -> dict[str, Any]:
    state = ArtifactStore(config.artifact_root).read_json("state", "crawl", "site.json")
    assert state is not None
    return dict(state)


def path_of(url: str) -> str:
    return "/" + url.rsplit("/", 1)[1]


GOOD = {"good-1.html", "good-2.html", "good-3.html", "dup-a.html"}
FAILED = {"/slow.html": "too_slow", "/trickle.html": "deadline", "/stall.html": "deadline",
          "/error.html": "server_error"}


# ------------------------------------------------------------------------------------ failed pages


def test_bad_pages_are_skipped_and_recorded_while_the_rest_commits(tmp_path: Path, mlflow_uri: str,
                                                                   site: BadPagesSite) -> None:
    config = make_config(tmp_path, mlflow_uri, site.url)
    manifest, rows, report = run_crawl(config, "day-1")

    assert set(rows) == GOOD  # dup-b.html is a copy of dup-a.html
    assert {path_of(item["url"]): item["reason"] for item in report["failed_pages"]} == FAILED
    assert {item["attempts"] for item in report["failed_pages"]} == {2}  # max_retries=1
    assert report["pages_failed"] == 4 and manifest.metrics["pages_failed"] == 4
    assert all(site.requests[path] == 2 for path in FAILED)

    [duplicate] = report["duplicates"]
    assert path_of(duplicate["url"]) == "/dup-b.html" and duplicate["kept_id"].endswith("/dup-a.html")
    assert report["records_duplicate"] == 1 and manifest.metrics["records_duplicate"] == 1
    assert report["records_new"] == len(GOOD)

    state = crawl_state(config)
    assert {path_of(url): entry["reason"] for url, entry in state["pending"].items()} == FAILED
    assert all(entry["attempts"] == 2 and entry["failures"] == 1 and entry["retry_after"]
               for entry in state["pending"].values())
    assert not {path_of(url) for url in state["pages"]} & set(FAILED)  # no validators for what never arrived

    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    [step_run] = mlflow.search_runs(experiment_names=["test-crawl-reliability"], output_format="list",
                                    filter_string="tags.`freshet.step` = 'crawl' and tags.`freshet.run_id` = 'day-1'")
    assert step_run.data.metrics["pages_failed"] == 4 and step_run.data.metrics["records_duplicate"] == 1
    logged = mlflow.artifacts.load_dict(f"{step_run.info.artifact_uri}/crawl_report.json")
    assert {path_of(item["url"]) for item in logged["sources"]["site"]["failed_pages"]} == set(FAILED)


def test_a_later_crawl_retries_pending_pages_and_clears_the_ones_that_recovered(
        tmp_path: Path, mlflow_uri: str) -> None:
    pages = bad_pages()
    site = BadPagesSite({path: pages[path] for path in ("/good-1.html", "/good-2.html", "/good-3.html",
                                                         "/dup-a.html", "/error.html")}
                        | {"/down.html": Page(b"", status=503)})
    try:
        config = make_config(tmp_path, mlflow_uri, site.url)
        run_crawl(config, "day-1")
        first_state = crawl_state(config)
        good_1 = next(url for url in first_state["pages"] if url.endswith("/good-1.html"))

        site.pages["/error.html"].status = 200  # fixed
        site.pages["/good-1.html"].stall_s = 3.0  # a page that worked now times out
        site.pages["/dup-c.html"] = Page(article("The same story, published twice"))  # a copy under a new URL
        _manifest, rows, report = run_crawl(config, "day-2")
    finally:
        site.close()

    assert set(rows) == {"error.html"}
    assert site.requests["/down.html"] == 4  # retried (2 attempts) by each crawl
    pending = crawl_state(config)["pending"]
    assert {path_of(url): entry["failures"] for url, entry in pending.items()} == {"/down.html": 2, "/good-1.html": 1}
    # Still pending, it keeps the validators of its last good fetch, so the next crawl can get a 304.
    assert crawl_state(config)["pages"][good_1] == first_state["pages"][good_1]
    # Duplicates are checked against earlier crawls too.
    assert [path_of(item["url"]) for item in report["duplicates"]] == ["/dup-c.html"]
    assert report["duplicates"][0]["kept_id"].endswith("/dup-a.html")


def test_pending_pages_wait_for_their_backoff(tmp_path: Path, mlflow_uri: str) -> None:
    site = BadPagesSite({"/good.html": Page(article("fine")), "/error.html": Page(article("down"), status=500)})
    try:
        config = make_config(tmp_path, mlflow_uri, site.url, failed_page_backoff_s=3600)
        run_crawl(config, "day-1")
        [entry] = crawl_state(config)["pending"].values()
        assert site.requests["/error.html"] == 2

        _, _, report = run_crawl(config, "day-2")
        assert site.requests["/error.html"] == 2  # not due yet: not requested
        assert report["pages_deferred"] == 1 and report["pages_failed"] == 0
        assert list(crawl_state(config)["pending"].values()) == [entry]  # kept as it was, still to be retried
    finally:
        site.close()


def test_too_many_failed_pages_fail_the_source_naming_them(tmp_path: Path, mlflow_uri: str) -> None:
    site = BadPagesSite({"/good.html": Page(article("fine")), "/down-1.html": Page(b"", status=503),
                         "/down-2.html": Page(b"", status=500)})
    try:
        config = make_config(tmp_path, mlflow_uri, site.url, max_failed_page_fraction=0.5)
        with pytest.raises(StepError, match=r"crawl source 'site': 2 of 3 pages failed, more than "
                                            r"max_failed_page_fraction=0\.5: .*/down-1\.html \(server_error: "
                                            r"HTTP 503 \(after 2 attempts\)\); .*/down-2\.html"):
            run_crawl(config, "day-1")
        store = ArtifactStore(config.artifact_root)
        assert read_manifest(store, "day-1", "crawl") is None
        assert store.read_json("state", "crawl", "site.json") is None

        # The retry of the failed run resumes: the good page comes from the checkpoint, the failed ones are retried.
        site.pages["/down-1.html"] = Page(article("back up one"))
        site.pages["/down-2.html"] = Page(article("back up two"))
        _, rows, report = run_crawl(config, "day-1")
    finally:
        site.close()
    assert set(rows) == {"good.html", "down-1.html", "down-2.html"}
    assert site.requests["/good.html"] == 1 and report["pages_resumed"] == 1 + 1  # and the sitemap
    assert crawl_state(config)["pending"] == {}


@pytest.mark.parametrize(("broken", "error"), [
    ("/robots.txt", r"robots\.txt: unavailable \(HTTP 500 \(after 2 attempts\)\), so nothing on "),
    ("/sitemap.xml", r"sitemap\.xml: no complete response within response_deadline_s=0\.5"),
])
def test_robots_or_sitemap_unreachable_fails_the_source(tmp_path: Path, mlflow_uri: str, broken: str,
                                                        error: str) -> None:
    site = BadPagesSite({"/good.html": Page(article("fine"))})
    site.pages[broken] = Page(b"", status=500) if broken == "/robots.txt" else Page(b"<urlset/>", stall_s=2.0)
    try:
        with pytest.raises(StepError, match=r"crawl source 'site': http://127\.0\.0\.1:\d+/" + error):
            run_crawl(make_config(tmp_path, mlflow_uri, site.url), "day-1")
        assert site.requests["/good.html"] == 0
    finally:
        site.close()


# -------------------------------------------------------------------------------- response limits


@pytest.mark.parametrize(("page", "reason"), [
    (Page(article("t" * 6000), drip_bytes=30, drip_every_s=0.1), "deadline"),  # 20 s of body at 300 B/s
    (Page(article("h"), drip_headers=True, drip_every_s=0.1), "deadline"),  # ~8 s of headers, each byte in time
    (Page(article("s" * 600), drip_bytes=1, drip_every_s=0.05), "too_slow"),  # 20 B/s
], ids=["body-trickle", "header-drip", "under-min-rate"])
def test_a_slow_page_costs_about_the_deadline_not_its_drip_time(tmp_path: Path, mlflow_uri: str, page: Page,
                                                                reason: str) -> None:
    site = BadPagesSite({"/slow.html": page})
    try:
        config = make_config(tmp_path, mlflow_uri, site.url, max_retries=0, max_failed_page_fraction=1.0)
        started = time.monotonic()
        _, rows, report = run_crawl(config, "day-1")
        elapsed = time.monotonic() - started
    finally:
        site.close()
    [failed] = report["failed_pages"]
    assert (path_of(failed["url"]), failed["reason"], failed["attempts"]) == ("/slow.html", reason, 1)
    assert rows == {}
    assert elapsed < 5 * DEADLINE_S  # a bound, not a benchmark: the page alone would take 8 s or more


def test_deadline_holds_for_an_injected_client_between_body_chunks(tmp_path: Path, mlflow_uri: str) -> None:
    """Without open_client's transport (tests and tools inject their own), the streaming loop still
    checks the clock after every chunk."""
    import httpx

    def dripping(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/robots.txt":
            return httpx.Response(404)
        if request.url.path == "/sitemap.xml":
            return httpx.Response(200, headers={"content-type": "application/xml"}, content=(
                b"<urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'><url><loc>/slow.html</loc></url>"
                b"</urlset>"))

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                time.sleep(0.05)
                yield b"x" * 30  # 600 B/s: only the deadline stops it
        return httpx.Response(200, headers={"content-type": "text/html"}, content=chunks())

    # A public address literal: the guard accepts it without DNS, and MockTransport never connects.
    config = make_config(tmp_path, mlflow_uri, "http://93.184.215.14/", {"allow_private_network": False},
                         max_retries=0, max_failed_page_fraction=1.0)
    started = time.monotonic()
    with httpx.Client(transport=httpx.MockTransport(dripping)) as client:
        manifest = crawl.run(config, {}, run_id="mock", store=ArtifactStore(config.artifact_root), client=client)
    assert time.monotonic() - started < 5 * DEADLINE_S  # the whole body would take 2 s
    assert manifest.metrics["pages_failed"] == 1 and manifest.metrics["errors.deadline"] == 1


def test_the_guard_rechecks_the_connected_address_through_the_deadline_transport(
        tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolved to a public address but connects to loopback (DNS rebinding) is refused."""
    site = BadPagesSite({"/good.html": Page(article("fine"))})
    monkeypatch.setattr(guard, "resolve_addresses", lambda host, port: [ipaddress.ip_address("93.184.215.14")])
    try:
        config = make_config(tmp_path, mlflow_uri, site.url.replace("127.0.0.1", "localhost"),
                             {"allow_private_network": False})
        with pytest.raises(StepError, match=r"'site': http://localhost:\d+/: refused: connected to 127\.0\.0\.1, "
                                            r"a loopback address"):
            run_crawl(config, "rebound")
    finally:
        site.close()
    # Checked when the response starts, before its body is read; nothing past robots.txt was asked for.
    assert dict(site.requests) == {"/robots.txt": 1}


# ------------------------------------------------------------------------------------- checkpoints


def test_a_crawl_killed_halfway_resumes_from_its_checkpoint(
        tmp_path: Path, mlflow_uri: str, kill_html_crawl: Callable[[int], Callable[[], None]]) -> None:
    pages = {f"/page-{number}.html": Page(article(f"article number {number}", ["alpha", "beta"][number % 2]))
             for number in range(8)}
    site = BadPagesSite(pages)
    try:
        config = make_config(tmp_path, mlflow_uri, site.url, checkpoint_every_pages=1)
        store = ArtifactStore(config.artifact_root)
        revive = kill_html_crawl(5)
        with pytest.raises(KeyboardInterrupt):
            crawl.run(config, {}, run_id="day-1", store=store, logical_date=LOGICAL_DATE)
        assert read_manifest(store, "day-1", "crawl") is None
        done_before = {path for path, count in site.requests.items() if path.startswith("/page-") and count}
        assert len(done_before) == 4
        revive()

        manifest, rows, report = run_crawl(config, "day-1")  # the retry of the killed run
    finally:
        site.close()
    assert all(site.requests[path] == 1 for path in pages)  # none fetched twice
    assert report["pages_resumed"] == 4 + 1 and report["pages_fetched"] == 4  # the sitemap was done too
    assert set(rows) == {path.lstrip("/") for path in pages} and report["records_new"] == len(pages)
    state = store.read_json("state", "crawl", "site.json")
    assert state is not None and set(map(path_of, state["pages"])) >= set(pages)
    assert all(state["pages"][url].get("etag") for url in state["pages"] if "/page-" in url)  # validators kept
    assert not (store.work_dir("day-1", "crawl") / "site.checkpoint.json").exists()  # gone once committed
    assert manifest.metrics["rows_new"] == len(pages)


def test_a_checkpoint_from_another_config_is_not_resumed(tmp_path: Path, mlflow_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    site = BadPagesSite({f"/page-{number}.html": Page(article(f"article {number}")) for number in range(3)})
    try:
        config = make_config(tmp_path, mlflow_uri, site.url, checkpoint_every_pages=1)

        def interrupted(self: SourceSession) -> None:
            raise KeyboardInterrupt  # every page done and checkpointed, then killed before the commit

        with monkeypatch.context() as patched:
            patched.setattr(SourceSession, "finished", interrupted)
            with pytest.raises(KeyboardInterrupt):
                run_crawl(config, "day-1")
        assert (ArtifactStore(config.artifact_root).work_dir("day-1", "crawl") / "site.checkpoint.json").exists()
        # Another config (a different step fingerprint): the same run id starts over.
        _, rows, report = run_crawl(make_config(tmp_path, mlflow_uri, site.url, max_retries=2), "day-1")
    finally:
        site.close()
    assert report["pages_resumed"] == 0 and len(rows) == 3
    assert all(site.requests[f"/page-{number}.html"] == 2 for number in range(3))


# ------------------------------------------------------------------------------------- kill recovery


def test_a_crawl_killed_after_its_commit_logs_the_full_report_on_recovery(tmp_path: Path, mlflow_uri: str) -> None:
    """SIGKILLed past the commit with its MLflow run open (the fault drill's `tracked` point), the crawl's rerun
    skips `body` and completes the MLflow record: the report it logs is the committed one, not an empty one."""
    site = BadPagesSite({f"/page-{number}.html": Page(article(f"article number {number}")) for number in range(3)})
    try:
        config = make_config(tmp_path, mlflow_uri, site.url)
        config_path = tmp_path / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
        command = [sys.executable, "-m", "tasks.crawl", "--config", str(config_path), "--run-id", "day-1",
                   "--logical-date", LOGICAL_DATE]

        def crawl_process(fault: str | None) -> subprocess.CompletedProcess[str]:
            environment = {key: value for key, value in os.environ.items() if key != FAULT_DRILL}
            environment |= {FAULT_DRILL: fault} if fault else {}
            # Its own process group: the drill kills the group, which must not include pytest.
            return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
                                  start_new_session=True, check=False)

        killed = crawl_process("crawl:tracked")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        recovered = crawl_process(None)
        assert recovered.returncode == 0, recovered.stderr[-2000:]
    finally:
        site.close()
    assert all(site.requests[f"/page-{number}.html"] == 1 for number in range(3)), "the rerun crawled again"
    store = ArtifactStore(config.artifact_root)
    manifest = read_manifest(store, "day-1", "crawl")
    assert manifest is not None
    committed = json.loads(store.local_path(manifest.output("report").uri).read_text())
    assert committed["sources"]["site"]["records_new"] == 3  # what the uninterrupted body wrote

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id],
                                "tags.`freshet.run_id` = 'day-1' and tags.`freshet.step` = 'crawl'")
    assert run.data.tags[TRACKED_TAG] == manifest.fingerprint and run.info.status == "FINISHED"
    logged = Path(client.download_artifacts(run.info.run_id, "crawl_report.json", str(tmp_path)))
    assert json.loads(logged.read_text()) == committed
