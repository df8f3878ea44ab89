"""The local demo source: a real HTTP site that publishes a JSON-lines corpus day by day.

Day 0 publishes `initial_fraction` of the records; the rest arrive on days 1..`days`, each record on
the day a stable hash of its id picks, so every scheduled crawl sees genuinely new data. The site
behaves like a polite-crawling target should be able to expect of a crawler:

    /robots.txt              disallows /private/ (which exists, so tests can prove it is never fetched)
    /feed/index.json         {"pages": [{"date", "url", "records"}, ...]} for every day
    /feed/<YYYY-MM-DD>.jsonl that day's records, {"id", "text", "label"} per line

The same day's records in the other shapes the crawler reads (source kinds other than jsonl_feed):

    /sitemap.xml                   sitemap index: one sitemap per day, <lastmod> = the day
    /sitemaps/<YYYY-MM-DD>.xml     that day's record pages
    /pages/<id>.html               a record: text in <p class="text">, label in <meta name="freshet:label">
    /days/index.html, /days/<YYYY-MM-DD>.html   navigation pages linking the record pages (link following)
    /rss/<YYYY-MM-DD>.xml          RSS 2.0: title = id, description = text, category = label
    /debian/<YYYY-MM-DD>/Packages[.gz|.xz]   a Debian Packages index: Package = id, Section = label

With `unlabelled_fraction`, that share of the records (by a stable hash of the id) never appears in those
shapes: the site publishes them only as production traffic, without a label, so an annotation is the only way
their label reaches the pipeline (the demo's labelling loop):

    /unlabelled/<YYYY-MM-DD>.jsonl  that day's unlabelled records, {"id", "text"} per line

Every document carries an ETag (content hash) and Last-Modified and answers conditional requests
with 304. `corrupt_labels_from` poisons pages dated on/after it (each label becomes the next one in
sorted order), for tests of the validation gate. `stats` counts requests per (path, status).

    python -m tasks.demo.site --corpus corpus.jsonl --start-date 2025-01-01 --days 30 --port 8765
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.utils
import gzip
import hashlib
import json
import logging
import lzma
import signal
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Self
from urllib.parse import quote, urlsplit

log = logging.getLogger("freshet.demo_site")

ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
PRIVATE_PATH = "/private/records.jsonl"
PRIVATE_HTML_PATH = "/private/secret.html"
NDJSON = "application/x-ndjson"
HTML = "text/html; charset=utf-8"
XML = "application/xml"
RSS = "application/rss+xml"
# How often the serving loop checks for `stop()`: short, so tests do not wait on shutdown.
SHUTDOWN_POLL_S = 0.05


@dataclass(frozen=True)
class Document:
    """A static response body with the validators conditional requests are checked against."""

    body: bytes
    content_type: str
    last_modified: dt.datetime

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    @property
    def last_modified_header(self) -> str:
        return email.utils.format_datetime(self.last_modified, usegmt=True)

    def is_fresh_for(self, if_none_match: str | None, if_modified_since: str | None) -> bool:
        """True when the client's copy is current (RFC 9110: If-None-Match wins over If-Modified-Since)."""
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return "*" in tags or self.etag in tags
        if if_modified_since is not None:
            try:
                since = email.utils.parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError):
                return False
            return since.tzinfo is not None and self.last_modified <= since
        return False


def publication_day(record_id: str, days: int, initial_fraction: float) -> int:
    """The day (0..days) a record appears on: a stable hash of its id, so restarts agree."""
    position = int.from_bytes(hashlib.sha256(f"demo-site:{record_id}".encode()).digest()[:8], "big") / 2**64
    if days == 0 or position < initial_fraction:
        return 0
    later_position = (position - initial_fraction) / (1 - initial_fraction)
    return min(days, 1 + int(later_position * days))


def is_unlabelled(record_id: str, unlabelled_fraction: float) -> bool:
    """Whether the site keeps the record's label to itself (a stable hash of its id, so restarts agree)."""
    position = int.from_bytes(hashlib.sha256(f"demo-site-unlabelled:{record_id}".encode()).digest()[:8], "big") / 2**64
    return position < unlabelled_fraction


def read_corpus(path: str | Path) -> list[dict[str, str]]:
    records = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            if not all(isinstance(record.get(key), str) for key in ("id", "text", "label")):
                raise ValueError(f"{path}:{line_number}: a corpus record needs string id, text and label")
            records.append(record)
    return records


def _midnight_utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def build_documents(
    records: Sequence[dict[str, str]],
    start_date: dt.date,
    days: int,
    initial_fraction: float,
    corrupt_labels_from: dt.date | None,
    unlabelled_fraction: float = 0.0,
) -> dict[str, Document]:
    """Every path the site serves, rendered once (the site is static for its lifetime)."""
    labels = sorted({record["label"] for record in records})
    next_label = {label: labels[(index + 1) % len(labels)] for index, label in enumerate(labels)}
    by_day: list[list[dict[str, str]]] = [[] for _ in range(days + 1)]
    for record in sorted(records, key=lambda record: record["id"]):
        # A corpus that grows day by day names each record's day; otherwise a stable hash spreads them.
        day = int(record["day"]) if "day" in record else publication_day(record["id"], days, initial_fraction)
        by_day[min(day, days)].append(record)
    unlabelled = {record["id"] for record in records if is_unlabelled(record["id"], unlabelled_fraction)}

    documents: dict[str, Document] = {}
    index_entries = []
    for day_number, day_all in enumerate(by_day):
        date = start_date + dt.timedelta(days=day_number)
        day_records = [record for record in day_all if record["id"] not in unlabelled]
        if unlabelled_fraction:
            documents[f"/unlabelled/{date.isoformat()}.jsonl"] = Document("".join(
                json.dumps({"id": record["id"], "text": record["text"]}, ensure_ascii=False) + "\n"
                for record in day_all if record["id"] in unlabelled).encode(), NDJSON, _midnight_utc(date))
        poisoned = corrupt_labels_from is not None and date >= corrupt_labels_from
        served = [{"id": record["id"], "text": record["text"],
                   "label": next_label[record["label"]] if poisoned else record["label"]} for record in day_records]
        lines = [json.dumps(record, ensure_ascii=False) for record in served]
        url = f"/feed/{date.isoformat()}.jsonl"
        documents[url] = Document("".join(line + "\n" for line in lines).encode(), NDJSON, _midnight_utc(date))
        index_entries.append({"date": date.isoformat(), "url": url, "records": len(day_records)})
        documents.update(_day_views(served, date))

    published = _midnight_utc(start_date)
    documents["/feed/index.json"] = Document(
        json.dumps({"pages": index_entries}, indent=1).encode(), "application/json", published
    )
    dates = [start_date + dt.timedelta(days=number) for number in range(days + 1)]
    documents["/sitemap.xml"] = Document(_xml(
        '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        + "".join(f"<sitemap><loc>/sitemaps/{date}.xml</loc><lastmod>{date}</lastmod></sitemap>\n" for date in dates)
        + "</sitemapindex>\n"), XML, published)
    documents["/days/index.html"] = Document(_html(
        "freshet demo: days", "".join(f'<li><a href="/days/{date}.html">{date}</a></li>' for date in dates)
        + '<li><a href="/private/secret.html">private</a></li>'), HTML, published)
    documents["/robots.txt"] = Document(ROBOTS_TXT.encode(), "text/plain; charset=utf-8", published)
    documents[PRIVATE_PATH] = Document(
        b'{"id": "private-0", "text": "robots.txt disallows this page", "label": "private"}\n', NDJSON, published
    )
    documents[PRIVATE_HTML_PATH] = Document(_html("private", '<p class="text">robots.txt disallows this page</p>',
                                                  label="private"), HTML, published)
    return documents


def page_path(record_id: str) -> str:
    """The HTML page of a record (ids may hold '+', '.', ':' and the like)."""
    return f"/pages/{quote(record_id, safe='')}.html"


def _xml(body: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()


def _html(title: str, body: str, label: str | None = None) -> bytes:
    meta = f'<meta name="freshet:label" content="{escape(label)}">' if label is not None else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>{meta}'
            f'</head>\n<body><nav><a href="/days/index.html">all days</a></nav>\n<main>{body}</main></body></html>\n'
            ).encode()


def debian_stanza(record: dict[str, str]) -> str:
    """A Packages stanza; a multi-line text becomes the long description (empty lines as ' .')."""
    synopsis, *rest = record["text"].split("\n")
    continuation = "".join("\n " + (line if line.strip() else ".") for line in rest)
    return (f"Package: {record['id']}\nVersion: 1.0\nArchitecture: all\nSection: {record['label']}\n"
            f"Description: {synopsis}{continuation}\n")


def _day_views(records: Sequence[dict[str, str]], date: dt.date) -> dict[str, Document]:
    """The same day's records as HTML pages with a sitemap, an RSS feed and a Debian Packages index."""
    modified = _midnight_utc(date)
    views: dict[str, Document] = {}
    for record in records:
        views[page_path(record["id"])] = Document(_html(
            record["id"], f'<article><h1>{escape(record["id"])}</h1><p class="text">{escape(record["text"])}</p>'
            f'<p>Section: <a class="label" href="/days/{date}.html">{escape(record["label"])}</a></p></article>',
            label=record["label"]), HTML, modified)
    views[f"/sitemaps/{date}.xml"] = Document(_xml(
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        + "".join(f"<url><loc>{escape(page_path(record['id']))}</loc><lastmod>{date}</lastmod></url>\n"
                  for record in records) + "</urlset>\n"), XML, modified)
    views[f"/days/{date}.html"] = Document(_html(f"published {date}", "<ul>" + "".join(
        f'<li><a href="{escape(page_path(record["id"]))}">{escape(record["id"])}</a></li>' for record in records)
        + "</ul>"), HTML, modified)
    pub_date = email.utils.format_datetime(modified, usegmt=True)
    items = "".join(
        f"<item><title>{escape(record['id'])}</title><link>{escape(page_path(record['id']))}</link>"
        f'<guid isPermaLink="false">{escape(record["id"])}</guid><category>{escape(record["label"])}</category>'
        f"<description>{escape(record['text'])}</description><pubDate>{pub_date}</pubDate></item>\n"
        for record in records)
    views[f"/rss/{date}.xml"] = Document(_xml(
        f'<rss version="2.0"><channel><title>freshet demo {date}</title><link>/</link>'
        f"<description>records published on {date}</description>\n{items}</channel></rss>\n"), RSS, modified)
    packages = "\n".join(debian_stanza(record) for record in records).encode()
    views[f"/debian/{date}/Packages"] = Document(packages, "text/plain; charset=utf-8", modified)
    # mtime=0 keeps the compressed bytes (and so the ETag) the same across restarts.
    views[f"/debian/{date}/Packages.gz"] = Document(gzip.compress(packages, mtime=0), "application/gzip", modified)
    views[f"/debian/{date}/Packages.xz"] = Document(lzma.compress(packages), "application/x-xz", modified)
    return views


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections must not pin handler threads forever
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _DemoHTTPServer

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        site = self.server.site
        path = urlsplit(self.path).path
        document = site.documents.get(path)
        if document is None:
            status, body, headers = 404, b"not found\n", {"Content-Type": "text/plain; charset=utf-8"}
        elif document.is_fresh_for(self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")):
            status, body, headers = 304, b"", {}
        else:
            status, body, headers = 200, document.body, {"Content-Type": document.content_type}
        if document is not None:
            headers |= {"ETag": document.etag, "Last-Modified": document.last_modified_header,
                        "Cache-Control": "no-cache"}
        site.count_request(path, status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and status != 304:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], site: DemoSite) -> None:
        self.site = site
        super().__init__(address, _Handler)


class DemoSite:
    """The demo site; `start()` serves it from a background thread (port 0 picks a free port)."""

    def __init__(
        self,
        corpus_path: str | Path,
        start_date: dt.date,
        days: int,
        initial_fraction: float = 0.5,
        corrupt_labels_from: dt.date | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        unlabelled_fraction: float = 0.0,
    ) -> None:
        if days < 0:
            raise ValueError(f"days must be >= 0, got {days}")
        if not 0 <= initial_fraction < 1:
            raise ValueError(f"initial_fraction must be in [0, 1), got {initial_fraction}")
        if not 0 <= unlabelled_fraction < 1:
            raise ValueError(f"unlabelled_fraction must be in [0, 1), got {unlabelled_fraction}")
        self.start_date = start_date
        self.days = days
        self.host = host
        self.port = port
        self.documents = build_documents(read_corpus(corpus_path), start_date, days, initial_fraction,
                                         corrupt_labels_from, unlabelled_fraction)
        self.stats: Counter[tuple[str, int]] = Counter()
        self._stats_lock = threading.Lock()
        self._server: _DemoHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def page_path(self, date: dt.date) -> str:
        return f"/feed/{date.isoformat()}.jsonl"

    def count_request(self, path: str, status: int) -> None:
        with self._stats_lock:
            self.stats[(path, status)] += 1

    def requests_to(self, path: str, status: int | None = None) -> int:
        with self._stats_lock:
            return sum(count for (seen_path, seen_status), count in self.stats.items()
                       if seen_path == path and status in (None, seen_status))

    def start(self) -> DemoSite:
        self._server = _DemoHTTPServer((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S},
                                        name="demo-site", daemon=True)
        self._thread.start()
        log.info("demo site serving %d pages at %s", self.days + 1, self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()


@contextmanager
def serve(
    corpus_path: str | Path,
    start_date: dt.date,
    days: int,
    initial_fraction: float = 0.5,
    corrupt_labels_from: dt.date | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    unlabelled_fraction: float = 0.0,
) -> Iterator[DemoSite]:
    """A started demo site for the duration of a `with` block."""
    with DemoSite(corpus_path, start_date, days, initial_fraction, corrupt_labels_from, host, port,
                  unlabelled_fraction) as site:
        yield site


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo.site", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="JSON-lines corpus (tasks.demo.corpus writes one)")
    parser.add_argument("--start-date", required=True, type=dt.date.fromisoformat, help="day 0, YYYY-MM-DD")
    parser.add_argument("--days", required=True, type=int, help="days of arrivals after day 0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--initial-fraction", type=float, default=0.5, help="share published on day 0")
    parser.add_argument("--corrupt-labels-from", type=dt.date.fromisoformat, default=None,
                        help="serve shifted labels on pages dated on/after this day")
    parser.add_argument("--unlabelled-fraction", type=float, default=0.0,
                        help="share of the records published only as unlabelled texts (/unlabelled/<date>.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with serve(args.corpus, args.start_date, args.days, args.initial_fraction, args.corrupt_labels_from,
               args.host, args.port, args.unlabelled_fraction) as site:
        # The first stdout line is the URL, for scripts that start the site on port 0.
        print(site.url, flush=True)
        stop_requested.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
