"""tasks.crawl: incremental, resumable, polite and guarded crawling of jsonl_feed sources.

Two kinds of server: the real demo site on 127.0.0.1 (port 0) for the incremental flow, and
`httpx.MockTransport` for what a well-behaved server cannot produce (429, 5xx, oversized bodies,
redirects to metadata addresses, wrong content types, malformed lines).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from tasks import crawl
from tasks.config import PipelineConfig
from tasks.contract import read_manifest
from tasks.demo.site import PRIVATE_PATH, DemoSite
from tasks.manifest import Manifest, StepError
from tasks.records import read_rows
from tasks.sources.guard import address_refusal
from tasks.store import ArtifactStore
from tests.corpus_support import SITE_DAYS, SITE_START

LABELS = ["alpha", "beta", "gamma"]
START = SITE_START
DAYS = SITE_DAYS
# A public address literal: the guard accepts it without DNS, and MockTransport never connects.
PUBLIC_BASE = "http://93.184.215.14/"
NDJSON = "application/x-ndjson"


# The `site`, `corpus_path` and `pauses` fixtures are in conftest.py; no test here sleeps.
pytestmark = pytest.mark.usefixtures("pauses")


def make_config(tmp_path: Path, mlflow_uri: str, sources: Sequence[dict[str, Any]], **crawl_settings: Any
                ) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "labels": LABELS,
        "artifact_root": str(tmp_path / "artifacts"),
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "test-crawl"},
        "crawl": {"sources": list(sources), "max_retries": 2, "backoff_base_s": 0.01, **crawl_settings},
    })


def demo_source(site: DemoSite, **settings: Any) -> dict[str, Any]:
    return {"name": "demo", "url": site.url, "allow_private_network": True, **settings}


def day(number: int) -> dt.date:
    return START + dt.timedelta(days=number)


def published_ids(site: DemoSite, days: range) -> set[str]:
    ids = set()
    for number in days:
        body = site.documents[site.page_path(day(number))].body.decode()
        ids |= {f"demo:{json.loads(line)['id']}" for line in body.splitlines()}
    return ids


def crawl_report(manifest: Manifest, store: ArtifactStore) -> dict[str, Any]:
    return json.loads(store.local_path(manifest.output("report").uri).read_text())


def global_state(store: ArtifactStore, source: str = "demo") -> dict[str, Any] | None:
    return store.read_json("state", "crawl", f"{source}.json")


# --------------------------------------------------------------------------- MockTransport helpers

Reply = Callable[[httpx.Request], httpx.Response]


def reply(status: int, body: bytes | str = b"", content_type: str | None = NDJSON, **headers: str) -> Reply:
    def respond(request: httpx.Request) -> httpx.Response:
        all_headers = {"content-type": content_type} if content_type else {}
        all_headers |= {name.replace("_", "-"): value for name, value in headers.items()}
        return httpx.Response(status, headers=all_headers, content=body)
    return respond


def page_lines(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def feed_index(*paths: str) -> Reply:
    pages = [{"date": day(position).isoformat(), "url": path} for position, path in enumerate(paths)]
    return reply(200, json.dumps({"pages": pages}), "application/json")


ROBOTS = reply(200, "User-agent: *\nDisallow: /private/\n", "text/plain")


class ScriptedServer:
    """A MockTransport handler: per URL a list of replies, used in order (the last one repeats)."""

    def __init__(self, routes: dict[str, Reply | list[Reply]]) -> None:
        self.routes = {PUBLIC_BASE.rstrip("/") + path if path.startswith("/") else path:
                       replies if isinstance(replies, list) else [replies] for path, replies in routes.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        replies = self.routes.get(str(request.url))
        if replies is None:
            return httpx.Response(404)
        return (replies.pop(0) if len(replies) > 1 else replies[0])(request)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def requested(self, url: str) -> int:
        url = PUBLIC_BASE.rstrip("/") + url if url.startswith("/") else url
        return sum(1 for request in self.requests if str(request.url) == url)


def mock_source(**settings: Any) -> dict[str, Any]:
    return {"name": "mock", "url": PUBLIC_BASE, **settings}


def run_mock(tmp_path: Path, mlflow_uri: str, server: ScriptedServer, run_id: str = "run-1",
             source: dict[str, Any] | None = None, **crawl_settings: Any) -> tuple[Manifest, ArtifactStore]:
    config = make_config(tmp_path, mlflow_uri, [source or mock_source()], **crawl_settings)
    store = ArtifactStore(config.artifact_root)
    with server.client() as client:
        manifest = crawl.run(config, {}, run_id=run_id, store=store, logical_date=day(DAYS).isoformat(),
                             client=client)
    return manifest, store


# ----------------------------------------------------------------------- incremental flow, demo site


def test_first_crawl_fetches_pages_up_to_the_logical_date(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    config = make_config(tmp_path, mlflow_uri, [demo_source(site)])
    store = ArtifactStore(config.artifact_root)
    # A full Airflow timestamp: only its date counts.
    manifest = crawl.run(config, {}, run_id="day-1", store=store, logical_date=f"{day(1).isoformat()}T00:00:00+00:00")

    assert [site.requests_to(site.page_path(day(number)), 200) for number in range(DAYS + 1)] == [1, 1, 0, 0]
    assert site.requests_to("/robots.txt") == 1 and site.requests_to("/feed/index.json") == 1
    rows = read_rows(store.local_path(manifest.output("records").uri))
    assert {row["id"] for row in rows} == published_ids(site, range(2))
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert all(row["source"] == "demo" and row["label"] in LABELS and row["fetched_at"].endswith("+00:00")
               for row in rows)
    assert manifest.output("records").rows == len(rows) == manifest.metrics["rows_new"]
    counts = {name: value for name, value in manifest.metrics.items() if name != "bytes"}
    assert counts == {"rows_new": len(rows), "rows_quarantined": 0, "pages_fetched": 2, "pages_not_modified": 0,
                      "errors": 0, "skipped_robots": 0, "refused_by_guard": 0, "retries": 0, "records_changed": 0,
                      "pages_failed": 0, "records_duplicate": 0}
    assert manifest.metrics["bytes"] > 0
    report = crawl_report(manifest, store)["sources"]["demo"]
    assert report["records_new"] == len(rows) and report["pages_selected"] == 2 and report["pages_listed"] == 4
    state = global_state(store)
    assert state is not None and state["generation"] == 1 and state["run_id"] == "day-1"
    assert set(state["records"]) == {row["id"] for row in rows}

    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    [step_run] = mlflow.search_runs(experiment_names=["test-crawl"], output_format="list",
                                    filter_string="tags.`freshet.step` = 'crawl' and tags.`freshet.run_id` = 'day-1'")
    assert step_run.data.metrics["rows_new"] == len(rows)
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(step_run.info.run_id)}
    assert {"crawl_report.json", "manifest.json"} <= artifacts
    # The batch is an MLflow dataset output with the snapshot's digest (validate logs it as its input).
    [dataset] = [item.dataset for item in step_run.inputs.dataset_inputs]
    assert dataset.name.endswith(".records") and dataset.digest in manifest.output("records").digest


def test_next_crawl_fetches_only_the_new_page(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    config = make_config(tmp_path, mlflow_uri, [demo_source(site)])
    store = ArtifactStore(config.artifact_root)
    crawl.run(config, {}, run_id="day-1", store=store, logical_date=day(1).isoformat())
    manifest = crawl.run(config, {}, run_id="day-2", store=store, logical_date=day(2).isoformat())

    paths = [site.page_path(day(number)) for number in range(DAYS + 1)]
    assert [site.requests_to(path, 304) for path in paths] == [1, 1, 0, 0]
    assert [site.requests_to(path, 200) for path in paths] == [1, 1, 1, 0]
    rows = read_rows(store.local_path(manifest.output("records").uri))
    assert {row["id"] for row in rows} == published_ids(site, range(2, 3))
    assert manifest.metrics["pages_fetched"] == 1 and manifest.metrics["pages_not_modified"] == 2
    state = global_state(store)
    assert state is not None and state["generation"] == 2 and state["run_id"] == "day-2"


def test_a_day_with_nothing_new_ends_the_run_green_at_new_data(tmp_path: Path, mlflow_uri: str,
                                                                site: DemoSite) -> None:
    """A backfill of an already-crawled day (or a quiet day) finds nothing: the DAG's `new_data`
    ShortCircuit stops there with the reason, instead of validate failing on an empty batch."""
    from freshet_airflow.control import crawl_found_data

    config = make_config(tmp_path, mlflow_uri, [demo_source(site)])
    store = ArtifactStore(config.artifact_root)
    first = crawl.run(config, {}, run_id="day-2", store=store, logical_date=day(2).isoformat())
    backfill = crawl.run(config, {}, run_id="backfill-day-1", store=store, logical_date=day(1).isoformat())
    assert crawl_found_data(first.model_dump(mode="json"))[0]
    assert backfill.metrics["rows_new"] == 0 and backfill.metrics["pages_not_modified"] == 2
    go_on, reason = crawl_found_data(backfill.model_dump_json())
    assert not go_on
    assert reason.startswith(f"nothing new up to {day(1).isoformat()}: 0 pages fetched, 2 not modified, 0 errors")
    go_on, reason = crawl_found_data(backfill.model_dump_json(), forced=True)  # a retry after a fix
    assert go_on and "the run is forced" in reason


def test_rerun_of_a_run_id_reuses_the_manifest_without_requests(tmp_path: Path, mlflow_uri: str,
                                                                site: DemoSite) -> None:
    config = make_config(tmp_path, mlflow_uri, [demo_source(site)])
    store = ArtifactStore(config.artifact_root)
    first = crawl.run(config, {}, run_id="day-1", store=store, logical_date=day(1).isoformat())
    traffic = dict(site.stats)

    again = crawl.run(config, {}, run_id="day-1", store=store, logical_date=day(1).isoformat())
    assert again.reused and not first.reused
    assert again.model_dump(exclude={"reused"}) == first.model_dump(exclude={"reused"})
    assert dict(site.stats) == traffic


def test_rerun_restores_crawl_state_lost_after_commit(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    config = make_config(tmp_path, mlflow_uri, [demo_source(site)])
    store = ArtifactStore(config.artifact_root)
    crawl.run(config, {}, run_id="day-1", store=store, logical_date=day(1).isoformat())
    committed = global_state(store)
    # As if the process died between committing the manifest and publishing the state.
    store.write_json({"generation": 0, "pages": {}, "records": {}}, "state", "crawl", "demo.json")

    assert crawl.run(config, {}, run_id="day-1", store=store, logical_date=day(1).isoformat()).reused
    assert global_state(store) == committed


def test_robots_disallowed_feed_is_never_requested(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    # The source lives under /private/, which robots.txt disallows: its index must not be fetched.
    config = make_config(tmp_path, mlflow_uri, [demo_source(site, url=site.url + "private/")])
    store = ArtifactStore(config.artifact_root)
    manifest = crawl.run(config, {}, run_id="private", store=store, logical_date=day(1).isoformat())

    assert site.requests_to("/robots.txt") == 1
    assert not [path for path, _ in site.stats if path.startswith("/private/")]
    assert manifest.metrics["skipped_robots"] == 1 and manifest.metrics["rows_new"] == 0
    assert PRIVATE_PATH in site.documents  # it exists; only robots.txt kept the crawler away


def test_guard_refuses_loopback_without_opt_in(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    config = make_config(tmp_path, mlflow_uri, [demo_source(site, allow_private_network=False)])
    store = ArtifactStore(config.artifact_root)
    expected = r"crawl source 'demo': http://127\.0\.0\.1:\d+/feed/index\.json: .*loopback"
    with pytest.raises(StepError, match=expected) as error:
        crawl.run(config, {}, run_id="guarded", store=store, logical_date=day(1).isoformat())
    assert "allow_private_network" in str(error.value)
    assert not site.stats
    assert read_manifest(store, "guarded", "crawl") is None and global_state(store) is None


def test_guard_refuses_ipv4_mapped_loopback_url(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    source = demo_source(site, url=f"http://[::ffff:127.0.0.1]:{site.port}/", allow_private_network=False)
    config = make_config(tmp_path, mlflow_uri, [source])
    with pytest.raises(StepError, match=r"crawl source 'demo'.*::ffff:127\.0\.0\.1.*loopback"):
        crawl.run(config, {}, run_id="mapped", store=ArtifactStore(config.artifact_root))
    assert not site.stats


@pytest.mark.parametrize(("address", "allow_private_network", "refusal"), [
    ("127.0.0.1", False, "a loopback address"),
    ("::ffff:127.0.0.1", False, "a loopback address"),
    ("::1", False, "a loopback address"),
    ("10.1.2.3", False, "a private address"),
    ("fe80::1", False, "a link-local address"),
    ("0.0.0.0", False, "an unspecified address"),
    ("169.254.169.254", False, "a cloud metadata address"),
    ("::ffff:169.254.169.254", False, "a cloud metadata address"),
    ("::ffff:169.254.169.254", True, "a cloud metadata address"),
    ("64:ff9b::a9fe:a9fe", True, "a cloud metadata address"),
    ("100.100.100.200", True, "a cloud metadata address"),
    ("127.0.0.1", True, None),
    ("93.184.215.14", False, None),
])
def test_address_refusal(address: str, allow_private_network: bool, refusal: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address), allow_private_network) == refusal


def test_unreachable_source_fails_and_keeps_the_committed_state(tmp_path: Path, mlflow_uri: str) -> None:
    good = page_lines({"id": "a", "text": "alpha0 tool", "label": "alpha"})
    server = ScriptedServer({"/robots.txt": ROBOTS, "/feed/index.json": feed_index("/feed/0.jsonl"),
                             "/feed/0.jsonl": reply(200, good)})
    run_mock(tmp_path, mlflow_uri, server, run_id="ok")

    def refuse_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    # The index is source-level: without it there are no pages to crawl (a page that fails is only skipped).
    server.routes[PUBLIC_BASE + "feed/index.json"] = [refuse_connection]
    with pytest.raises(StepError, match=r"crawl source 'mock': http://93\.184\.215\.14/feed/index\.json: .*3 attempts"):
        run_mock(tmp_path, mlflow_uri, server, run_id="broken")
    assert server.requested("/feed/index.json") == 4  # 1 in the first run, then max_retries=2
    store = ArtifactStore(str(tmp_path / "artifacts"))
    assert read_manifest(store, "broken", "crawl") is None
    state = global_state(store, "mock")
    assert state is not None and state["generation"] == 1 and state["run_id"] == "ok"


def test_retries_honour_retry_after_and_pace_requests(tmp_path: Path, mlflow_uri: str, pauses: list[float]) -> None:
    server = ScriptedServer({
        "/robots.txt": ROBOTS,
        "/feed/index.json": [reply(429, "slow down", "text/plain", retry_after="2"), feed_index("/feed/0.jsonl")],
        "/feed/0.jsonl": [reply(503, "busy", "text/plain"),
                          reply(200, page_lines({"id": "a", "text": "t", "label": "beta"}))],
    })
    manifest, store = run_mock(tmp_path, mlflow_uri, server, min_interval_s=0.5)
    report = crawl_report(manifest, store)["sources"]["mock"]
    assert report["retries"] == 2 and report["retry_causes"] == {"http_429": 1, "http_503": 1}
    assert manifest.metrics["rows_new"] == 1 and manifest.metrics["errors"] == 0
    assert max(pauses) >= 2.0  # Retry-After beats the 0.01 s backoff
    assert any(0 < delay <= 0.5 for delay in pauses)  # per-host pacing
    assert all(request.headers["user-agent"].startswith("freshet-crawler") for request in server.requests)


def test_redirects_are_followed_by_hand_and_metadata_hops_refused(tmp_path: Path, mlflow_uri: str) -> None:
    metadata_url = "http://169.254.169.254/latest/meta-data/"
    server = ScriptedServer({
        "/robots.txt": ROBOTS,
        "/feed/index.json": feed_index("/feed/0.jsonl", "/feed/1.jsonl", "/feed/2.jsonl"),
        "/feed/0.jsonl": reply(302, location=metadata_url),
        "/feed/1.jsonl": reply(301, location="/feed/moved.jsonl"),
        "/feed/moved.jsonl": reply(200, page_lines({"id": "m", "text": "moved", "label": "gamma"})),
        "/feed/2.jsonl": reply(302, location="/feed/2.jsonl"),
        metadata_url: reply(200, "credentials"),
    })
    # Even a source allowed on private networks never reaches instance metadata.
    manifest, store = run_mock(tmp_path, mlflow_uri, server, source=mock_source(allow_private_network=True),
                               max_redirects=2)
    assert server.requested(metadata_url) == 0
    assert manifest.metrics["rows_new"] == 1 and manifest.metrics["errors"] == 2
    report = crawl_report(manifest, store)["sources"]["mock"]
    assert report["refused_by_guard"] == 1 and report["errors_by_kind"] == {"refused_by_guard": 1, "redirect": 1}
    refused = next(item for item in report["incidents"] if item["kind"] == "refused_by_guard")
    assert refused["url"] == metadata_url and "metadata" in refused["detail"]
    assert server.requested("/feed/2.jsonl") == 3  # the first request and max_redirects hops


def test_oversized_and_wrongly_typed_pages_are_refused(tmp_path: Path, mlflow_uri: str) -> None:
    def chunked_body(request: httpx.Request) -> httpx.Response:
        # No Content-Length: the cap must hold while streaming.
        return httpx.Response(200, headers={"content-type": NDJSON}, content=iter([b"x" * 150, b"y" * 150]))

    server = ScriptedServer({
        "/robots.txt": ROBOTS,
        "/feed/index.json": feed_index("/feed/0.jsonl", "/feed/1.jsonl", "/feed/2.jsonl", "/feed/3.jsonl"),
        "/feed/0.jsonl": reply(200, b"z" * 500),
        "/feed/1.jsonl": chunked_body,
        "/feed/2.jsonl": reply(200, "<html></html>", "text/html"),
        "/feed/3.jsonl": reply(200, page_lines({"id": "ok", "text": "fine", "label": "alpha"})),
    })
    manifest, store = run_mock(tmp_path, mlflow_uri, server, max_response_bytes=250)
    report = crawl_report(manifest, store)["sources"]["mock"]
    assert report["errors_by_kind"] == {"too_large": 2, "content_type": 1}
    refused_urls = {PUBLIC_BASE + f"feed/{number}.jsonl" for number in range(3)}
    assert {item["url"] for item in report["incidents"]} == refused_urls
    assert manifest.metrics["rows_new"] == 1 and manifest.metrics["errors"] == 3
    # Refused pages keep no state, so the next crawl tries them again.
    state = global_state(store, "mock")
    assert state is not None and list(state["pages"]) == [PUBLIC_BASE + "feed/3.jsonl"]


def test_malformed_lines_are_quarantined_with_the_reason(tmp_path: Path, mlflow_uri: str) -> None:
    body = "\n".join([
        json.dumps({"id": "good", "text": "alpha1 package", "label": "alpha"}),
        "{not json",
        json.dumps({"id": "no-label", "text": "t"}),
        json.dumps({"id": 7, "text": "t", "label": "alpha"}),
        "[1, 2]",
        "",
    ]).encode() + b"\n\xff\xfe\n"
    server = ScriptedServer({"/robots.txt": ROBOTS, "/feed/index.json": feed_index("/feed/0.jsonl"),
                             "/feed/0.jsonl": reply(200, body)})
    manifest, store = run_mock(tmp_path, mlflow_uri, server)

    assert [row["id"] for row in read_rows(store.local_path(manifest.output("records").uri))] == ["mock:good"]
    quarantine_path = store.local_path(manifest.output("quarantine").uri)
    assert pq.read_schema(quarantine_path).names == ["id", "source", "step", "check", "field", "value", "reason",
                                                     "record_json"]
    quarantined = read_rows(quarantine_path)
    assert [(row["check"], row["field"]) for row in quarantined] == [
        ("invalid_json", None), ("missing_field", "label"), ("not_a_string", "id"), ("not_an_object", None),
        ("invalid_utf8", None),
    ]
    assert quarantined[1]["id"] == "mock:no-label" and quarantined[1]["record_json"] == json.dumps(
        {"id": "no-label", "text": "t"})
    assert quarantined[0]["reason"].startswith(PUBLIC_BASE + "feed/0.jsonl line 2:")
    assert all(row["step"] == "crawl" and row["source"] == "mock" for row in quarantined)
    assert manifest.metrics["rows_quarantined"] == manifest.output("quarantine").rows == 5


def test_only_new_or_changed_records_are_emitted(tmp_path: Path, mlflow_uri: str) -> None:
    versions = [
        page_lines({"id": "a", "text": "first text", "label": "alpha"}, {"id": "b", "text": "stays", "label": "beta"}),
        page_lines({"id": "a", "text": "edited text", "label": "alpha"}, {"id": "b", "text": "stays", "label": "beta"},
                   {"id": "c", "text": "new", "label": "gamma"}),
    ]
    served = {"version": 0}

    def page(request: httpx.Request) -> httpx.Response:
        etag = f'"v{served["version"]}"'
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers={"etag": etag})
        return httpx.Response(200, headers={"content-type": NDJSON, "etag": etag}, content=versions[served["version"]])

    server = ScriptedServer({"/robots.txt": ROBOTS, "/feed/index.json": feed_index("/feed/0.jsonl"),
                             "/feed/0.jsonl": page})
    first, store = run_mock(tmp_path, mlflow_uri, server, run_id="r1")
    unchanged, _ = run_mock(tmp_path, mlflow_uri, server, run_id="r2")
    served["version"] = 1
    changed, _ = run_mock(tmp_path, mlflow_uri, server, run_id="r3")

    def emitted(manifest: Manifest) -> dict[str, str]:
        return {row["id"]: row["text"] for row in read_rows(store.local_path(manifest.output("records").uri))}

    assert emitted(first) == {"mock:a": "first text", "mock:b": "stays"}
    assert emitted(unchanged) == {} and unchanged.metrics["pages_not_modified"] == 1
    assert emitted(changed) == {"mock:a": "edited text", "mock:c": "new"}
    report = crawl_report(changed, store)["sources"]["mock"]
    assert (report["records_new"], report["records_changed"], report["records_unchanged"]) == (1, 1, 1)
    page_requests = [request for request in server.requests if request.url.path == "/feed/0.jsonl"]
    assert [request.headers.get("if-none-match") for request in page_requests] == [None, '"v0"', '"v0"']


# ------------------------------------------------------------------------------------- CLI contract


def test_cli_prints_the_manifest_as_the_last_line(tmp_path: Path, mlflow_uri: str, site: DemoSite,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(make_config(tmp_path, mlflow_uri, [demo_source(site)]).to_dict()))
    exit_code = crawl.main(["--config", str(config_path), "--run-id", "cli-1", "--logical-date", day(0).isoformat()])
    assert exit_code == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.step == "crawl" and manifest.run_id == "cli-1"
    assert manifest.output("records").rows == len(published_ids(site, range(1)))


def test_cli_rejects_a_malformed_config_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({
        "labels": LABELS, "artifact_root": str(tmp_path / "artifacts"), "mlflow": {"tracking_uri": "sqlite:///x.db"},
        "crawl": {"sources": [{"name": "demo", "url": "http://127.0.0.1:1/"}], "max_retries": -1},
    }))
    assert crawl.main(["--config", str(config_path), "--run-id", "bad"]) == 2
    captured = capsys.readouterr()
    assert "crawl.max_retries" in captured.err and captured.out == ""
