"""tasks.crawl source kinds: html_site, feed, json_api, local, debian_index, over real sockets.

Two servers: the demo site (the same day's records as sitemap + HTML pages, RSS and Debian
Packages indexes) and `StaticSite`, a tiny local HTTP server whose documents each test writes, for
what the demo site never serves (off-host links, malformed HTML, legacy charsets, paginated APIs,
compression bombs).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import lzma
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import crawl
from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.contract import read_manifest
from tasks.demo.site import PRIVATE_HTML_PATH, DemoSite, page_path
from tasks.manifest import Manifest, StepError
from tasks.records import read_rows
from tasks.store import ArtifactStore
from tests.corpus_support import SITE_DAYS, SITE_START, synthetic_corpus

LABELS = ["alpha", "beta", "gamma"]
START = SITE_START
DAYS = SITE_DAYS


def day(number: int) -> dt.date:
    return START + dt.timedelta(days=number)


# ------------------------------------------------------------------------------------------ fixtures


# The `site` (over these rows), `corpus_path` and `pauses` fixtures are in conftest.py; no test here sleeps.
pytestmark = pytest.mark.usefixtures("pauses")


@pytest.fixture()
def corpus_rows() -> list[dict[str, str]]:
    return synthetic_corpus(60, LABELS, seed=3)


class StaticSite:
    """A local HTTP server for documents a test writes: {path: (content type, body)}; every request is
    recorded with its Host header, and ETags make conditional requests answer 304."""

    def __init__(self) -> None:
        robots = b"User-agent: *\nDisallow: /private/\n"
        self.documents: dict[str, tuple[str, bytes]] = {"/robots.txt": ("text/plain", robots)}
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []  # (host header, path with query)
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                site.requests.append((self.headers.get("Host", ""), self.path))
                document = site.documents.get(self.path) or site.documents.get(urlsplit(self.path).path)
                if document is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content_type, body = document
                etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                for name, value in site.headers.get(urlsplit(self.path).path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path: str, body: str | bytes, content_type: str = "text/html; charset=utf-8", **headers: str) -> None:
        self.documents[path] = (content_type, body.encode() if isinstance(body, str) else body)
        self.headers[path] = {name.replace("_", "-"): value for name, value in headers.items()}

    def paths(self, host: str | None = None) -> list[str]:
        return [path for seen_host, path in self.requests if host is None or seen_host.startswith(host)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def static() -> Iterator[StaticSite]:
    server = StaticSite()
    yield server
    server.close()


def make_config(tmp_path: Path, mlflow_uri: str, *sources: dict[str, Any], **crawl_settings: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "labels": LABELS, "artifact_root": str(tmp_path / "artifacts"),
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "test-crawl-sources"},
        "crawl": {"sources": list(sources), "max_retries": 1, "backoff_base_s": 0.0, **crawl_settings},
    })


FIRST_DAY = day(1)


def run_crawl(config: PipelineConfig, run_id: str, logical_date: dt.date | None = FIRST_DAY
              ) -> tuple[Manifest, list[dict[str, Any]], dict[str, Any]]:
    store = ArtifactStore(config.artifact_root)
    manifest = crawl.run(config, {}, run_id=run_id, store=store,
                         logical_date=None if logical_date is None else logical_date.isoformat())
    rows = read_rows(store.local_path(manifest.output("records").uri))
    report = json.loads(store.local_path(manifest.output("report").uri).read_text())["sources"]
    return manifest, rows, report


def quarantined(config: PipelineConfig, manifest: Manifest) -> list[dict[str, Any]]:
    return read_rows(ArtifactStore(config.artifact_root).local_path(manifest.output("quarantine").uri))


def demo_records(site: DemoSite, days: range) -> list[dict[str, str]]:
    """What the demo site published on those days (from its jsonl_feed view, the reference)."""
    records = []
    for number in days:
        body = site.documents[site.page_path(day(number))].body.decode()
        records += [json.loads(line) for line in body.splitlines()]
    return records


HTML_DEMO = {"kind": "html_site", "allow_private_network": True, "record_paths": ["^/pages/"],
             "text": {"method": "selector", "selector": "p.text"},
             "label": {"selector": "meta[name='freshet:label']", "attribute": "content"}}


# --------------------------------------------------------------------------------------- html_site


def test_html_site_crawls_the_sitemap_up_to_the_logical_date_then_only_new_pages(
        tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    config = make_config(tmp_path, mlflow_uri, {"name": "pages", "url": site.url, **HTML_DEMO})
    first, rows, report = run_crawl(config, "day-1", day(1))

    expected = {f"pages:{site.url.rstrip('/')}{page_path(record['id'])}": record
                for record in demo_records(site, range(2))}
    assert {row["id"]: (row["text"], row["label"]) for row in rows} == {
        record_id: (record["text"], record["label"]) for record_id, record in expected.items()}
    assert site.requests_to("/sitemaps/" + day(2).isoformat() + ".xml") == 0  # dated after the logical date
    assert site.requests_to(PRIVATE_HTML_PATH) == 0 and report["pages"]["skipped_robots"] == 1  # linked, disallowed
    assert first.metrics["skipped_robots"] == 1 and first.metrics["errors"] == 0

    _second, rows, report = run_crawl(config, "day-2", day(2))
    assert {row["id"] for row in rows} == {
        f"pages:{site.url.rstrip('/')}{page_path(record['id'])}" for record in demo_records(site, range(2, 3))}
    assert report["pages"]["pages_not_modified"] >= len(expected)  # earlier pages answered 304
    assert all(site.requests_to(page_path(record["id"]), 200) == 1 for record in demo_records(site, range(3)))


def test_link_following_stays_within_allowed_hosts_paths_and_depth(tmp_path: Path, mlflow_uri: str,
                                                                  static: StaticSite) -> None:
    other_host = f"http://localhost:{static.port}"
    static.add("/start.html", f"""<html><body>
        <a href="/docs/a.html">a</a> <a href="/docs/b.html#top">b</a> <a href="/admin/secret.html">admin</a>
        <a href="{other_host}/docs/offsite.html">same server, other host</a>
        <a href="/private/hidden.html">robots</a> <a href="mailto:x@example.org">mail</a></body></html>""")
    static.add("/docs/a.html", '<html><body><p class="t">alpha1 alpha2 text</p><a href="/docs/deep.html">deeper</a>'
                               '<a href="/start.html">back</a></body></html>')
    static.add("/docs/b.html", '<html><body><p class="t">beta1 beta2 text</p></body></html>')
    static.add("/docs/deep.html",
               '<html><body><p class="t">gamma1 deep</p><a href="/docs/deeper.html">x</a></body></html>')
    static.add("/docs/deeper.html", '<html><body><p class="t">too deep</p></body></html>')
    for path in ("/admin/secret.html", "/docs/offsite.html", "/private/hidden.html"):
        static.add(path, '<html><body><p class="t">must not be fetched</p></body></html>')
    source = {"name": "site", "kind": "html_site", "url": static.url, "allow_private_network": True, "sitemaps": [],
              "start_urls": ["start.html"], "max_depth": 2, "deny_paths": ["^/admin/"],
              "allow_paths": ["^/docs/", "^/start", "^/private/"], "record_paths": ["^/docs/"],
              "text": {"method": "selector", "selector": "p.t"},
              "label": {"url_regex": r"/docs/(\w+)\.html", "mapping": {"a": "alpha", "b": "beta", "deep": "gamma"}}}
    config = make_config(tmp_path, mlflow_uri, source)
    _manifest, rows, report = run_crawl(config, "links")

    assert {row["id"].rsplit("/", 1)[1]: (row["text"], row["label"]) for row in rows} == {
        "a.html": ("alpha1 alpha2 text", "alpha"), "b.html": ("beta1 beta2 text", "beta"),
        "deep.html": ("gamma1 deep", "gamma")}
    fetched = static.paths()
    assert not static.paths("localhost")  # other host: never requested
    assert "/admin/secret.html" not in fetched and "/private/hidden.html" not in fetched
    assert "/docs/deeper.html" not in fetched  # 3 hops from the start page, max_depth 2
    assert fetched.count("/start.html") == 1 and fetched.count("/docs/b.html") == 1  # fragments and loops
    assert report["site"]["skipped_robots"] == 1

    limited = make_config(tmp_path / "limited", mlflow_uri, {**source, "max_pages": 2})
    emitted = [row["id"].rsplit("/", 1)[1] for run in range(3) for row in run_crawl(limited, f"limited-{run}")[1]]
    # max_pages counts requests (start.html each time); pages never fetched go before known ones.
    assert emitted == ["a.html", "b.html", "deep.html"]


def test_malformed_html_and_legacy_charsets_are_extracted_or_quarantined(tmp_path: Path, mlflow_uri: str,
                                                                         static: StaticSite) -> None:
    # Unclosed tags, stray closing tags, a body of mixed junk; declared ISO-8859-1 in the header.
    static.add("/p/latin.html", "<html><head><title>Caf\xe9</title><body><div><p>Caf\xe9 cr\xe8me br\xfbl\xe9e recipe"
               "<p>second paragraph</div></span></b><meta name=label content=beta>".encode("latin-1"),
               "text/html; charset=iso-8859-1")
    # No charset in the header; a <meta charset> names windows-1252 (curly quotes are 0x93/0x94 there).
    static.add("/p/cp1252.html", b'<html><head><meta charset="windows-1252"><meta name=label content=alpha></head>'
               b"<body><article><p>\x93quoted\x94 words in a long enough paragraph of text</p></article></body></html>",
               "text/html")
    # Neither: invalid UTF-8 bytes are decoded by detection instead of failing the page.
    static.add("/p/unknown.html", b"<html><body><p>na\xefve caf\xe9 text \xff\xfe</p><meta name=label content=gamma>"
               b"</body></html>", "text/html")
    static.add("/p/nolabel.html", "<html><body><p>text without a label</p></body></html>")
    static.add("/p/empty.html", "<html><body><script>var x = 1;</script><meta name=label content=alpha></body></html>")
    static.add("/sitemap.xml", "<?xml version='1.0'?><urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
               + "".join(f"<url><loc>/p/{name}.html</loc></url>" for name in
                         ("latin", "cp1252", "unknown", "nolabel", "empty")) + "</urlset>", "application/xml")
    source = {"name": "messy", "kind": "html_site", "url": static.url, "allow_private_network": True,
              "text": {"method": "trafilatura", "selector": "body"},
              "label": {"selector": "meta[name=label]", "attribute": "content"}}
    config = make_config(tmp_path, mlflow_uri, source)
    manifest, rows, _ = run_crawl(config, "messy")

    texts = {row["id"].rsplit("/", 1)[1]: row for row in rows}
    assert set(texts) == {"latin.html", "cp1252.html", "unknown.html"}
    assert "Café crème brûlée recipe" in texts["latin.html"]["text"] and texts["latin.html"]["label"] == "beta"
    assert "\u201cquoted\u201d words" in texts["cp1252.html"]["text"]
    assert "caf" in texts["unknown.html"]["text"] and texts["unknown.html"]["label"] == "gamma"
    problems = {row["id"].rsplit("/", 1)[1]: (row["check"], row["field"]) for row in quarantined(config, manifest)}
    assert problems == {"nolabel.html": ("missing_field", "label"), "empty.html": ("missing_field", "text")}


# -------------------------------------------------------------------------------------------- feed


def test_feed_reads_rss_from_the_demo_site(tmp_path: Path, mlflow_uri: str, site: DemoSite) -> None:
    source = {"name": "rss", "kind": "feed", "url": site.url + "rss/{date}.xml", "allow_private_network": True,
              "text": "summary"}
    config = make_config(tmp_path, mlflow_uri, source)
    _, rows, _ = run_crawl(config, "rss-1", day(1))
    assert {(row["id"], row["text"], row["label"]) for row in rows} == {
        (f"rss:{record['id']}", record["text"], record["label"]) for record in demo_records(site, range(1, 2))}
    _, again, report = run_crawl(config, "rss-1b", day(1))
    assert again == [] and report["rss"]["pages_not_modified"] == 1


def test_atom_feed_labels_from_links_and_leaves_later_entries(tmp_path: Path, mlflow_uri: str,
                                                              static: StaticSite) -> None:
    def entry(number: int, updated: str, topic: str, summary: str) -> str:
        return (f"<entry><id>urn:e{number}</id><title>Title {number}</title><updated>{updated}</updated>"
                f'<link href="{static.url}topics/{topic}/{number}"/><summary type="html">{summary}</summary></entry>')

    static.add("/atom.xml", '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
               "<title>t</title><id>urn:feed</id><updated>2025-01-02T00:00:00Z</updated>"
               + entry(1, "2025-01-01T10:00:00Z", "alpha", "&lt;p&gt;first &lt;b&gt;bold&lt;/b&gt;&lt;/p&gt;")
               + entry(2, "2025-01-02T10:00:00Z", "beta", "second")
               + entry(3, "2025-01-05T10:00:00Z", "gamma", "from the future")
               + "<entry><id>urn:e4</id><title>no link</title><updated>2025-01-01T00:00:00Z</updated></entry>"
               + "</feed>", "application/atom+xml")
    static.add("/broken.xml", "this is not a feed <<<", "application/xml")
    source = {"name": "atom", "kind": "feed", "url": static.url + "atom.xml", "allow_private_network": True,
              "label_from": "link", "label_regex": r"/topics/(\w+)/"}
    config = make_config(tmp_path, mlflow_uri, source)
    manifest, rows, _ = run_crawl(config, "atom", day(1))
    assert {row["id"]: (row["text"], row["label"]) for row in rows} == {
        "atom:urn:e1": ("Title 1\nfirst bold", "alpha"), "atom:urn:e2": ("Title 2\nsecond", "beta")}
    assert [(row["id"], row["field"]) for row in quarantined(config, manifest)] == [("atom:urn:e4", "label")]

    broken = make_config(tmp_path / "broken", mlflow_uri, {**source, "url": static.url + "broken.xml"})
    with pytest.raises(StepError, match=r"crawl source 'atom': http://127\.0\.0\.1:\d+/broken\.xml: not an RSS/Atom"):
        run_crawl(broken, "broken", day(1))


# ----------------------------------------------------------------------------------------- json_api


@pytest.mark.parametrize("pagination", ["next_link", "page", "offset"])
def test_json_api_follows_pagination_to_the_last_page(tmp_path: Path, mlflow_uri: str, static: StaticSite,
                                                      pagination: str) -> None:
    items = [{"key": number, "body": {"text": f"text {number}"}, "tag": LABELS[number % 3]} for number in range(7)]
    items[4] = {"key": 4, "body": {"text": None}, "tag": "beta"}  # a malformed record
    pages = [items[0:3], items[3:6], items[6:7]]
    for number, chunk in enumerate(pages):
        following = f"/api?cursor={number + 1}" if number + 1 < len(pages) else None
        document = json.dumps({"data": {"items": chunk}, "links": {"next": following}})
        static.add({"next_link": f"/api?cursor={number}" if number else "/api",
                    "page": f"/api?page={number + 1}&size=3",
                    "offset": f"/api?offset={number * 3}&size=3"}[pagination], document, "application/json")
    source = {"name": "api", "kind": "json_api", "url": static.url + "api", "allow_private_network": True,
              "pagination": pagination, "records_path": "data.items", "next_path": "links.next", "page_size": 3,
              "limit_param": "size", "id_field": "key", "text_field": "body.text", "label_field": "tag"}
    config = make_config(tmp_path, mlflow_uri, source)
    manifest, rows, report = run_crawl(config, "api")
    assert sorted(row["id"] for row in rows) == [f"api:{number}" for number in (0, 1, 2, 3, 5, 6)]
    [problem] = quarantined(config, manifest)
    assert (problem["id"], problem["check"], problem["field"]) == ("api:4", "not_a_string", "body.text")
    assert "record 2" in problem["reason"]
    assert report["api"]["pages_fetched"] == 3 and len(static.paths()) == 4  # robots.txt + 3 pages

    _, again, report = run_crawl(config, "api-again")
    assert again == [] and report["api"]["pages_not_modified"] == 3  # 304s still walk the pagination


def test_json_lines_api_paginates_by_link_header(tmp_path: Path, mlflow_uri: str) -> None:
    page_one = b'{"id": "a", "text": "alpha1", "label": "alpha"}\n{broken\n'
    page_two = b'{"id": "b", "text": "beta1", "label": "beta"}\n'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body, link = (page_one, '</lines?after=a>; rel="next"') if self.path == "/lines" else (page_two, None)
            if self.path == "/robots.txt":
                body, link = b"", None
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(body)))
            if link:
                self.send_header("Link", link)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        source = {"name": "lines", "kind": "json_api", "format": "jsonl", "pagination": "next_link",
                  "url": f"http://127.0.0.1:{server.server_address[1]}/lines", "allow_private_network": True}
        config = make_config(tmp_path, mlflow_uri, source)
        manifest, rows, _ = run_crawl(config, "lines")
    finally:
        server.shutdown()
        server.server_close()
    assert [row["id"] for row in rows] == ["lines:a", "lines:b"]
    assert [row["check"] for row in quarantined(config, manifest)] == ["invalid_json"]


# -------------------------------------------------------------------------------------------- local


def test_local_folder_reads_csv_jsonl_parquet_and_labelled_text(tmp_path: Path, mlflow_uri: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    (root / "tables").mkdir(parents=True)
    (root / "tables" / "a.csv").write_bytes("id,text,label\nc1,caf\xe9 au lait,alpha\nc2,,beta\n".encode("cp1252"))
    (root / "tables" / "b.jsonl").write_text('{"id": 7, "text": "seven", "label": "gamma"}\nnot json\n')
    pq.write_table(pa.table({"id": ["p1"], "text": ["from parquet"], "label": ["beta"]}), root / "tables" / "c.parquet")
    for label, name, text in (("alpha", "one.txt", "alpha text one"), ("beta", "two.md", "beta text two")):
        (root / label).mkdir()
        (root / label / name).write_text(text)
    (root / "orphan.txt").write_text("no label folder")
    (root / "notes.bin").write_bytes(b"\0\1")  # unknown format: ignored
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.csv").write_text("id,text,label\nh,hidden,alpha\n")

    config = make_config(tmp_path, mlflow_uri, {"name": "files", "kind": "local", "path": str(root)},
                         progress_every_s=1e-6)
    with caplog.at_level("INFO", logger="freshet.crawl"):
        manifest, rows, report = run_crawl(config, "local-1", None)
    # Progress goes to the log (stderr), never stdout: stdout's last line is the manifest.
    progress = [record.getMessage() for record in caplog.records if "crawl files: fetched" in record.getMessage()]
    assert "crawl files: fetched 6/6 files" in progress and len(progress) >= 3
    assert {row["id"]: (row["text"], row["label"]) for row in rows} == {
        "files:c1": ("café au lait", "alpha"), "files:7": ("seven", "gamma"), "files:p1": ("from parquet", "beta"),
        "files:alpha/one.txt": ("alpha text one", "alpha"), "files:beta/two.md": ("beta text two", "beta")}
    assert sorted((row["check"], row["field"]) for row in quarantined(config, manifest)) == [
        ("empty_field", "text"), ("invalid_json", None), ("missing_field", "label")]
    assert report["files"]["pages_fetched"] == 6

    (root / "alpha" / "one.txt").write_text("alpha text one, edited")
    _, rows, report = run_crawl(config, "local-2", None)
    assert [(row["id"], row["text"]) for row in rows] == [("files:alpha/one.txt", "alpha text one, edited")]
    assert report["files"]["pages_not_modified"] == 5 and report["files"]["records_changed"] == 1


# ------------------------------------------------------------------------------------- debian_index


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_debian_index_from_the_demo_site(tmp_path: Path, mlflow_uri: str, site: DemoSite, suffix: str) -> None:
    source = {"name": "deb", "kind": "debian_index", "url": site.url + "debian/{date}/Packages" + suffix,
              "allow_private_network": True}
    config = make_config(tmp_path, mlflow_uri, source)
    _, rows, report = run_crawl(config, "deb", day(0))
    assert {(row["id"], row["text"], row["label"]) for row in rows} == {
        (f"deb:{record['id']}=1.0", record["text"], record["label"]) for record in demo_records(site, range(1))}
    assert report["deb"]["pages_listed"] == len(rows)


def test_debian_index_file_long_descriptions_and_malformed_stanzas(tmp_path: Path, mlflow_uri: str) -> None:
    index = ("Package: foo\nVersion: 1.2-1\nSection: contrib/net\nDescription: fetch things\n"
             " Foo fetches things over the network.\n .\n It is fast.\n\n"
             "Package: bar\nVersion: 3\nDescription: no section\n\n"
             "Package: baz\nVersion: 0.1\nSection: utils\nDescription: b\xe4z tool\n")
    path = tmp_path / "Packages.xz"
    path.write_bytes(lzma.compress(index.encode()))
    config = make_config(tmp_path, mlflow_uri, {"name": "apt", "kind": "debian_index", "path": str(path),
                                                "text": "long"})
    manifest, rows, _ = run_crawl(config, "file-1", None)
    assert {row["id"]: (row["text"], row["label"]) for row in rows} == {
        "apt:foo=1.2-1": ("fetch things\nFoo fetches things over the network.\n\nIt is fast.", "net"),
        "apt:baz=0.1": ("bäz tool", "utils")}
    [problem] = quarantined(config, manifest)
    assert (problem["id"], problem["field"]) == ("apt:bar=3", "Section") and "stanza 2" in problem["reason"]
    _, rows, report = run_crawl(config, "file-2", None)
    assert rows == [] and report["apt"]["pages_not_modified"] == 1


@pytest.mark.parametrize("compress", [lambda data: gzip.compress(data, mtime=0), lzma.compress], ids=["gz", "xz"])
def test_compression_bomb_is_refused_with_a_clear_error(tmp_path: Path, mlflow_uri: str, static: StaticSite,
                                                        compress: Any) -> None:
    bomb = compress(b"Package: x\n" + b"\0" * (8 * 1024 * 1024))  # ~8 MiB from a few KiB
    static.add("/Packages.bin", bomb, "application/octet-stream")
    source = {"name": "deb", "kind": "debian_index", "url": static.url + "Packages.bin", "allow_private_network": True}
    config = make_config(tmp_path, mlflow_uri, source, max_decompressed_bytes=1024 * 1024)
    assert len(bomb) < config.crawl.max_response_bytes
    with pytest.raises(StepError, match=r"crawl source 'deb': http://127\.0\.0\.1:\d+/Packages\.bin: \w+ data inflates "
                                        r"past max_decompressed_bytes=1048576 .*compression bomb"):
        run_crawl(config, "bomb")
    store = ArtifactStore(config.artifact_root)
    assert read_manifest(store, "bomb", "crawl") is None and store.read_json("state", "crawl", "deb.json") is None


def test_transfer_encoding_is_decoded_under_the_byte_cap(tmp_path: Path, mlflow_uri: str, static: StaticSite) -> None:
    packages = b"Package: p\nVersion: 1\nSection: alpha\nDescription: gzip on the wire\n"
    static.add("/Packages", gzip.compress(packages), "text/plain", content_encoding="gzip")
    # 4 MiB of zeros in ~4 KiB on the wire, under a 64 KiB byte cap: httpx would inflate it unchecked.
    static.add("/bomb/Packages", gzip.compress(b"\0" * (4 << 20)), "text/plain", content_encoding="gzip")
    source = {"name": "deb", "kind": "debian_index", "url": static.url + "Packages", "allow_private_network": True}
    config = make_config(tmp_path, mlflow_uri, source, max_response_bytes=64 * 1024)
    _, rows, _ = run_crawl(config, "wire")
    assert [(row["id"], row["text"]) for row in rows] == [("deb:p=1", "gzip on the wire")]

    bomb = make_config(tmp_path / "bomb", mlflow_uri, {**source, "url": static.url + "bomb/Packages"},
                       max_response_bytes=64 * 1024)
    with pytest.raises(StepError, match=r"Packages: body exceeds 65536 bytes once gzip-decoded"):
        run_crawl(bomb, "bomb")


# ------------------------------------------------------------------------------------ crash and resume


def test_html_crawl_killed_halfway_then_rerun_loses_and_duplicates_nothing(
        tmp_path: Path, mlflow_uri: str, site: DemoSite, kill_html_crawl: Callable[[int], Callable[[], None]]) -> None:
    config = make_config(tmp_path, mlflow_uri, {"name": "pages", "url": site.url, **HTML_DEMO})
    store = ArtifactStore(config.artifact_root)
    revive = kill_html_crawl(10)
    with pytest.raises(KeyboardInterrupt):
        crawl.run(config, {}, run_id="day-1", store=store, logical_date=day(1).isoformat())
    assert read_manifest(store, "day-1", "crawl") is None and store.read_json("state", "crawl", "pages.json") is None
    revive()

    _, first, _ = run_crawl(config, "day-1", day(1))  # the retry of the killed run
    _, second, _ = run_crawl(config, "day-2", day(2))
    _, third, _ = run_crawl(config, "day-3", day(3))
    emitted = [row["id"] for rows in (first, second, third) for row in rows]
    assert len(emitted) == len(set(emitted))
    assert set(emitted) == {f"pages:{site.url.rstrip('/')}{page_path(record['id'])}"
                            for record in demo_records(site, range(DAYS + 1))}
    state = store.read_json("state", "crawl", "pages.json")
    assert state["generation"] == 3 and state["kind"] == "html_site"


# ----------------------------------------------------------------------------------- report, config


def test_crawl_report_counts_reach_mlflow(tmp_path: Path, mlflow_uri: str, static: StaticSite) -> None:
    static.add("/sitemap.xml", "<urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
               "<url><loc>/ok.html</loc></url><url><loc>/missing.html</loc></url><url><loc>/data.bin</loc></url>"
               "</urlset>", "application/xml")
    static.add("/ok.html", "<html><body><p>alpha words</p><meta name=l content=alpha></body></html>")
    static.add("/data.bin", b"\0\1", "application/octet-stream")
    config = make_config(tmp_path, mlflow_uri, {
        "name": "report", "kind": "html_site", "url": static.url, "allow_private_network": True,
        "label": {"selector": "meta[name=l]", "attribute": "content"}})
    manifest, rows, _ = run_crawl(config, "report")
    assert len(rows) == 1
    assert manifest.metrics["errors.http_status"] == 1 and manifest.metrics["errors.content_type"] == 1

    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    [step_run] = mlflow.search_runs(experiment_names=["test-crawl-sources"], output_format="list",
                                    filter_string="tags.`freshet.step` = 'crawl' and tags.`freshet.run_id` = 'report'")
    metrics = step_run.data.metrics
    assert metrics["errors.http_status"] == 1 and metrics["errors.content_type"] == 1
    assert metrics["pages_fetched"] == 2 and metrics["refused_by_guard"] == 0 and metrics["skipped_robots"] == 0


@pytest.mark.parametrize(("source", "message"), [
    ({"kind": "gopher", "url": "http://x/"}, "does not match any of the expected tags"),
    ({"kind": "html_site", "url": "http://x/", "label": {"selector": "p", "url_regex": "x"}},
     "crawl.sources.0.html_site.label: Value error, a label rule needs exactly one of selector or url_regex"),
    ({"kind": "html_site", "url": "http://x/", "label": {"selector": "p["}}, "invalid CSS selector"),
    ({"kind": "html_site", "url": "http://x/", "deny_paths": ["(("], "label": {"selector": "p"}},
     "crawl.sources.0.html_site.deny_paths"),
    ({"kind": "feed", "url": "http://x/", "label_from": "link"}, "label_from 'link' needs label_regex"),
    ({"kind": "json_api", "url": "ftp://x/"}, "crawl.sources.0.json_api.url"),
    ({"kind": "debian_index", "url": "http://x/P", "path": "/tmp/P"}, "exactly one of url or path"),
    ({"kind": "local"}, "crawl.sources.0.local.path: Field required"),
])
def test_source_configs_are_validated_naming_the_field(tmp_path: Path, source: dict[str, Any], message: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"labels": LABELS, "artifact_root": str(tmp_path), "mlflow": {"tracking_uri": "x"},
                                "crawl": {"sources": [{"name": "s", **source}]}}))
    with pytest.raises(ConfigError, match="crawl.sources.0") as error:
        load_config(path)
    assert message in str(error.value)


def test_source_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"source names must be unique .*\['a'\]"):
        make_config(tmp_path, "sqlite://", {"name": "a", "url": "http://x/"},
                    {"name": "a", "kind": "local", "path": str(tmp_path)})


def test_example_config_crawls_the_demo_site_through_every_kind(tmp_path: Path, site: DemoSite, corpus_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    (home / "demo" / "corpus.jsonl").write_bytes(corpus_path.read_bytes())
    monkeypatch.setenv("FRESHET_HOME", str(home))
    monkeypatch.setenv("FRESHET_DEMO_SITE", site.url)
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "sources.example.yaml",
                         [f"labels={json.dumps(LABELS)}"])
    assert [source.kind for source in config.crawl.sources] == [
        "jsonl_feed", "html_site", "feed", "debian_index", "local"]
    manifest, rows, report = run_crawl(config, "example", day(1))

    texts: dict[str, set[tuple[str, str]]] = {}
    for row in rows:
        texts.setdefault(row["source"], set()).add((row["text"], row["label"]))
    two_days = {(record["text"], record["label"]) for record in demo_records(site, range(2))}
    today = {(record["text"], record["label"]) for record in demo_records(site, range(1, 2))}
    everything = {(record["text"], record["label"]) for record in demo_records(site, range(DAYS + 1))}
    assert texts == {"demo-jsonl": two_days, "demo-html": two_days, "demo-rss": today, "demo-debian": today,
                     "demo-corpus": everything}
    assert manifest.metrics["errors"] == 0 and site.requests_to(PRIVATE_HTML_PATH) == 0
    # The sitemap index and two day sitemaps, the record pages, then one hop: their two day pages and
    # the days index (whose links are a hop too far).
    assert report["demo-html"]["pages_fetched"] == 3 + len(demo_records(site, range(2))) + 3
