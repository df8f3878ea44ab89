"""Crawl step: fetch the new and changed records of every configured source, politely and safely.

Source kinds (`kind` in the pipeline YAML): `jsonl_feed` (here: robots.txt, the page index
`feed/index.json`, then every JSON-lines page dated on or before the logical date), and `html_site`,
`feed`, `json_api`, `local`, `debian_index` (in `tasks.crawl_sources`). Every kind fetches through
`SourceSession`: conditional GETs (If-None-Match / If-Modified-Since) so unchanged documents cost a
304, robots.txt honoured with protego, requests paced per host, retried with exponential backoff and
jitter (honouring Retry-After), capped in size, limited to the content types the kind reads, and
refused when the host resolves to a private, loopback, link-local, unspecified or cloud-metadata
address (unless the source opts in with `allow_private_network`); redirects are followed by hand,
each hop re-checked. Local files get the same byte cap and "not modified" by size and mtime. Only
records whose id is new or whose text changed since earlier crawls are emitted.

The crawl state (page validators, the content hash of every emitted record) is written into the step
output and copied to `state/crawl/<source>.json` only after the manifest is committed, so a crash
mid-crawl loses nothing and duplicates nothing, and a rerun of the same run id reuses the manifest
without crawling. Progress goes to the log (stderr) every `crawl.progress_every_s`; the per-source
report (fetched, not modified, skipped by robots, refused by the guard, errors by kind) goes to
crawl_report.json, the manifest metrics and MLflow.

    python -m tasks.crawl --config configs/demo.yaml --run-id manual-1 --logical-date 2025-01-03
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import ipaddress
import json
import logging
import random
import socket
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import httpx
from protego import Protego

from tasks.config import CrawlConfig, PipelineConfig, SourceConfig
from tasks.contract import Manifest, StepContext, StepError, cli, execute
from tasks.data import QUARANTINE_SCHEMA, RECORD_SCHEMA, content_hash, write_parquet
from tasks.store import ArtifactStore

log = logging.getLogger("freshet.crawl")

STEP = "crawl"
STATE_PREFIX = ("state", "crawl")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOWED_MEDIA_TYPES = frozenset({
    "application/json", "application/x-ndjson", "application/ndjson", "application/jsonl",
    "application/x-jsonlines", "text/plain",
})
ACCEPT_HEADER = "application/x-ndjson, application/json;q=0.9, text/plain;q=0.5"
XML_MEDIA_TYPES = frozenset({"application/xml", "text/xml"})
HTML_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml"})
FEED_MEDIA_TYPES = frozenset({"application/rss+xml", "application/atom+xml", "application/rdf+xml"})
COMPRESSED_MEDIA_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/x-xz",
                                    "application/octet-stream"})
# Per source kind: (media types its documents may have, Accept header). robots.txt is text/plain.
MEDIA_BY_KIND: dict[str, tuple[frozenset[str], str]] = {
    "jsonl_feed": (ALLOWED_MEDIA_TYPES, ACCEPT_HEADER),
    "json_api": (ALLOWED_MEDIA_TYPES, "application/json, application/x-ndjson;q=0.9, text/plain;q=0.5"),
    "html_site": (HTML_MEDIA_TYPES | XML_MEDIA_TYPES | {"text/plain", "application/gzip", "application/x-gzip"},
                  "text/html, application/xhtml+xml;q=0.9, application/xml;q=0.8, text/plain;q=0.5"),
    "feed": (FEED_MEDIA_TYPES | XML_MEDIA_TYPES | {"text/plain"},
             "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8"),
    "debian_index": (COMPRESSED_MEDIA_TYPES | {"text/plain"},
                     "application/gzip, application/x-xz, text/plain;q=0.5, application/octet-stream;q=0.3"),
    "local": (frozenset(), ""),
}
# A server may ask for a long pause; past this the crawl is better off failing and being retried.
MAX_RETRY_AFTER_S = 300.0
MAX_INCIDENTS_PER_SOURCE = 100  # keeps the report small when a source misbehaves wholesale

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Instance-metadata endpoints hand out cloud credentials; no source needs them, so they are refused
# even for sources that allow private networks.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(address) for address in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254",
))
METADATA_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})
METADATA_REFUSAL = "a cloud metadata address"
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


# ------------------------------------------------------------------------------------------- errors


class CrawlError(StepError):
    """A crawl failure naming its source and URL; `kind` keys the report's error counts."""

    kind = "error"

    def __init__(self, source: str, url: str, detail: str) -> None:
        self.source = source
        self.url = url
        self.detail = detail
        super().__init__(f"crawl source {source!r}: {url}: {detail}")


class GuardRefusedError(CrawlError):
    kind = "refused_by_guard"


class RobotsDisallowedError(CrawlError):
    kind = "skipped_robots"


class ContentTypeRefusedError(CrawlError):
    kind = "content_type"


class ResponseTooLargeError(CrawlError):
    kind = "too_large"


class RedirectError(CrawlError):
    kind = "redirect"


class HttpStatusError(CrawlError):
    kind = "http_status"


class FeedFormatError(CrawlError):
    kind = "feed_format"


class SourceUnreachableError(CrawlError):
    kind = "unreachable"


# -------------------------------------------------------------------------------------- SSRF guard


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address really reaches (IPv4-mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, allow_private_network: bool) -> str | None:
    """Why the crawler must not connect to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        address = _embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return METADATA_REFUSAL
    if allow_private_network:
        return None
    for reason, matches in (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a private address", address.is_private),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
    ):
        if matches:
            return reason
    return None if address.is_global else "not a public address"


def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal resolves to itself without DNS)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


# ---------------------------------------------------------------------------------------- fetching


def pause(seconds: float) -> None:
    """Sleep between requests; a module function so tests can record delays instead of waiting."""
    time.sleep(seconds)


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped at MAX_RETRY_AFTER_S."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        seconds = (moment - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


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
    retries: int = 0
    retry_causes: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    records_new: int = 0
    records_changed: int = 0
    records_unchanged: int = 0
    records_quarantined: int = 0
    incidents: list[dict[str, str]] = field(default_factory=list)

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    status: int
    headers: httpx.Headers
    body: bytes = b""

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class HostPacer:
    """Keeps at least `min_interval_s` between requests to the same host:port."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self.last_request_at: dict[str, float] = {}

    def wait_turn(self, url: httpx.URL) -> None:
        host = f"{url.host}:{url.port or ''}"
        last = self.last_request_at.get(host)
        if last is not None and self.min_interval_s > 0:
            remaining = last + self.min_interval_s - time.monotonic()
            if remaining > 0:
                pause(remaining)
        self.last_request_at[host] = time.monotonic()


class SourceFetcher:
    """HTTP for one source: guard, robots, pacing, retries, redirects, size and content-type limits."""

    def __init__(self, client: httpx.Client, crawl: CrawlConfig, source: SourceConfig,
                 report: SourceReport, pacer: HostPacer) -> None:
        self.client = client
        self.crawl = crawl
        self.source = source
        self.report = report
        self.pacer = pacer
        self.robots_by_origin: dict[str, Protego] = {}
        self.media_types, self.accept = MEDIA_BY_KIND[source.kind]

    def fetch(self, url: str, validators: Mapping[str, str] | None = None, check_robots: bool = True) -> Fetched:
        """GET `url`, following redirects by hand so every hop passes the guard and robots.txt."""
        current = httpx.URL(url)
        for _ in range(self.crawl.max_redirects + 1):
            if check_robots:
                self.check_robots(current)
            fetched = self.send_with_retries(current, validators or {})
            if fetched.status not in REDIRECT_STATUSES:
                return fetched
            location = fetched.headers.get("location")
            if not location:
                raise RedirectError(self.source.name, str(current), f"HTTP {fetched.status} without a Location header")
            log.debug("crawl %s: %s redirects to %s", self.source.name, current, location)
            try:
                current = current.join(location)
            except httpx.InvalidURL as error:
                raise RedirectError(self.source.name, str(current),
                                    f"invalid Location {location!r}: {error}") from error
        raise RedirectError(self.source.name, url, f"more than {self.crawl.max_redirects} redirects (last: {current})")

    def check_guard(self, url: httpx.URL) -> None:
        if url.scheme not in ("http", "https"):
            raise GuardRefusedError(self.source.name, str(url), f"scheme {url.scheme!r} is not http(s)")
        host = url.host.lower().rstrip(".")
        if not host:
            raise GuardRefusedError(self.source.name, str(url), "the URL has no host")
        if host in METADATA_HOSTNAMES:
            raise GuardRefusedError(self.source.name, str(url), f"{host} is a cloud metadata host")
        for address in resolve_addresses(host, url.port or (443 if url.scheme == "https" else 80)):
            self._refuse_address(url, address, f"{host} resolves to {address}")

    def _refuse_address(self, url: httpx.URL, address: IPAddress, what: str) -> None:
        reason = address_refusal(address, self.source.allow_private_network)
        if reason is not None:
            hint = "" if reason == METADATA_REFUSAL else "; set allow_private_network: true on the source to allow it"
            raise GuardRefusedError(self.source.name, str(url), f"refused: {what}, {reason}{hint}")

    def check_robots(self, url: httpx.URL) -> None:
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        if origin not in self.robots_by_origin:
            robots_url = f"{origin}/robots.txt"
            try:
                fetched = self.fetch(robots_url, check_robots=False)
            except GuardRefusedError as error:
                # Name the URL the crawl wanted, not the robots.txt it would have asked first.
                raise GuardRefusedError(self.source.name, str(url), error.detail) from error
            if fetched.is_success:
                rules = fetched.body.decode("utf-8", errors="replace")
            elif 400 <= fetched.status < 500:
                rules = ""  # RFC 9309: an unavailable robots.txt (4xx) allows everything
            else:
                raise HttpStatusError(self.source.name, robots_url, f"robots.txt answered HTTP {fetched.status}")
            self.robots_by_origin[origin] = Protego.parse(rules)
        if not self.robots_by_origin[origin].can_fetch(str(url), self.crawl.user_agent):
            raise RobotsDisallowedError(self.source.name, str(url), "disallowed by robots.txt")

    def send_with_retries(self, url: httpx.URL, validators: Mapping[str, str]) -> Fetched:
        """One response that is not a transient failure; connect errors, 429 and 5xx are retried."""
        attempt = 0
        while True:
            self.pacer.wait_turn(url)
            retry_after = None
            try:
                fetched = self.send_once(url, validators)
            except socket.gaierror as error:
                cause, detail = "dns", f"cannot resolve {url.host}: {error}"
            except httpx.TransportError as error:
                cause, detail = type(error).__name__, f"{type(error).__name__}: {error}"
            else:
                if fetched.status != 429 and fetched.status < 500:
                    return fetched
                cause, detail = f"http_{fetched.status}", f"HTTP {fetched.status}"
                retry_after = retry_after_seconds(fetched.headers.get("retry-after"))
            if attempt >= self.crawl.max_retries:
                raise SourceUnreachableError(self.source.name, str(url), f"{detail} (after {attempt + 1} attempts)")
            exponential = self.crawl.backoff_base_s * 2**attempt
            delay = max(exponential / 2 + random.uniform(0, exponential / 2), retry_after or 0.0)
            self.report.retries += 1
            self.report.retry_causes[cause] = self.report.retry_causes.get(cause, 0) + 1
            log.warning("crawl %s: %s: %s; retry %d/%d in %.2fs", self.source.name, url, detail,
                        attempt + 1, self.crawl.max_retries, delay)
            pause(delay)
            attempt += 1

    def send_once(self, url: httpx.URL, validators: Mapping[str, str]) -> Fetched:
        self.check_guard(url)
        # Only encodings read_body decodes under the byte cap.
        headers = {"User-Agent": self.crawl.user_agent, "Accept": self.accept, "Accept-Encoding": "gzip, deflate",
                   **validators}
        request = self.client.build_request("GET", url, headers=headers, timeout=self.crawl.timeout_s)
        response = self.client.send(request, stream=True, follow_redirects=False)
        try:
            self.check_peer(url, response)
            body = self.read_body(url, response) if response.is_success else b""
            return Fetched(str(url), response.status_code, response.headers, body)
        finally:
            response.close()

    def check_peer(self, url: httpx.URL, response: httpx.Response) -> None:
        """Re-check the address actually connected to: DNS may have changed since `check_guard`."""
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            self._refuse_address(url, ipaddress.ip_address(str(peer[0]).split("%", 1)[0]), f"connected to {peer[0]}")

    def read_body(self, url: httpx.URL, response: httpx.Response) -> bytes:
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        is_robots = url.path == "/robots.txt" and media_type == "text/plain"
        if media_type not in self.media_types and not is_robots and not (
                media_type.endswith("+json") and "application/json" in self.media_types):
            raise ContentTypeRefusedError(
                self.source.name, str(url),
                f"content type {media_type or '(none)'!r} is not one a {self.source.kind} source reads "
                f"({', '.join(sorted(self.media_types))})")
        limit = self.crawl.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(self.source.name, str(url), f"Content-Length {declared} exceeds {limit} bytes")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise ContentTypeRefusedError(self.source.name, str(url), f"content encoding {encoding!r} is not gzip "
                                          "or deflate")
        # Transfer compression is undone here, not by httpx, so the cap holds on the decoded size while
        # decoding: httpx would inflate a whole network chunk (up to ~1000x for gzip) before we saw it.
        decoder = None if encoding in ("", "identity") else zlib.decompressobj(wbits=31 if "gzip" in encoding else 15)
        if response.is_stream_consumed:
            # Already in memory (an injected transport built it from bytes, already decoded): nothing to stream.
            raw_chunks: Iterable[bytes] = [response.content]
            decoder = None
        else:
            raw_chunks = response.iter_raw()
        chunks: list[bytes] = []
        received = 0
        raw_received = 0

        def keep(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > limit:
                decoded = f" once {encoding}-decoded" if decoder is not None else ""
                raise ResponseTooLargeError(self.source.name, str(url), f"body exceeds {limit} bytes{decoded}")
            chunks.append(chunk)

        for raw in raw_chunks:
            raw_received += len(raw)
            self.report.bytes += len(raw)
            if decoder is None:
                keep(raw)
                continue
            if raw_received > limit:
                raise ResponseTooLargeError(self.source.name, str(url), f"body exceeds {limit} bytes")
            pending = raw
            while pending:
                try:
                    keep(decoder.decompress(pending, limit - received + 1))
                except zlib.error as error:
                    if encoding == "deflate" and received == 0 and raw_received == len(raw):
                        decoder = zlib.decompressobj(wbits=-15)  # raw deflate, sent by some servers
                        continue
                    raise FeedFormatError(self.source.name, str(url), f"corrupt {encoding} body: {error}") from error
                pending = decoder.unconsumed_tail
        return b"".join(chunks)


# ------------------------------------------------------------------------------------ feed parsing


@dataclass(frozen=True)
class IndexedPage:
    date: dt.date
    url: str


def parse_index(body: bytes, index_url: str, source: str) -> list[IndexedPage]:
    """The pages a feed index lists, oldest first; URLs resolved against the index URL."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FeedFormatError(source, index_url, f"index is not JSON: {error}") from error
    entries = document.get("pages") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FeedFormatError(source, index_url, "index has no 'pages' list")
    pages = []
    for position, entry in enumerate(entries):
        try:
            date = dt.date.fromisoformat(entry["date"])
            pages.append(IndexedPage(date, str(httpx.URL(index_url).join(entry["url"]))))
        except (KeyError, TypeError, ValueError, httpx.InvalidURL) as error:
            raise FeedFormatError(source, index_url,
                                  f"pages[{position}] needs 'date' (YYYY-MM-DD) and 'url': {error}") from error
    return sorted(pages, key=lambda page: (page.date, page.url))


def _field_problem(item: Mapping[str, Any], source: SourceConfig) -> tuple[str, str, str | None, str] | None:
    """(check, field, value, detail) for the first required field that is missing or not a string."""
    for field_name in (source.id_field, source.text_field, source.label_field):
        if field_name not in item:
            return "missing_field", field_name, None, f"missing field {field_name!r}"
        value = item[field_name]
        if not isinstance(value, str):
            shown = json.dumps(value)[:200]
            return "not_a_string", field_name, shown, f"field {field_name!r} must be a string, got {shown}"
        if field_name == source.id_field and not value:
            return "empty_id", field_name, "", f"field {field_name!r} is empty"
    return None


@dataclass
class PageRecords:
    records: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[dict[str, str | None]] = field(default_factory=list)


def parse_page(body: bytes, page_url: str, source: SourceConfig, fetched_at: str) -> PageRecords:
    """Records of a JSON-lines page; malformed lines go to quarantine with the check they failed."""
    parsed = PageRecords()

    def quarantine(line_number: int, raw: str, check: str, detail: str, *, record_id: str | None = None,
                   field_name: str | None = None, value: str | None = None) -> None:
        parsed.quarantined.append({
            "id": record_id, "source": source.name, "step": STEP, "check": check, "field": field_name,
            "value": value, "reason": f"{page_url} line {line_number}: {detail}", "record_json": raw,
        })

    for line_number, raw_bytes in enumerate(body.split(b"\n"), start=1):
        if not raw_bytes.strip():
            continue
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as error:
            quarantine(line_number, raw_bytes.decode("utf-8", errors="replace"), "invalid_utf8", str(error))
            continue
        try:
            item = json.loads(raw)
        except ValueError as error:
            quarantine(line_number, raw, "invalid_json", f"not valid JSON: {error}")
            continue
        if not isinstance(item, dict):
            quarantine(line_number, raw, "not_an_object", f"a record must be a JSON object, got {type(item).__name__}")
            continue
        raw_id = item.get(source.id_field)
        record_id = f"{source.name}:{raw_id}" if isinstance(raw_id, str) and raw_id else None
        problem = _field_problem(item, source)
        if problem is not None:
            check, field_name, value, detail = problem
            quarantine(line_number, raw, check, detail, record_id=record_id, field_name=field_name, value=value)
            continue
        text = item[source.text_field]
        parsed.records.append({
            "id": record_id, "text": text, "label": item[source.label_field], "source": source.name,
            "fetched_at": fetched_at, "content_hash": content_hash(text),
        })
    return parsed


# -------------------------------------------------------------------------------------- crawl state


def read_crawl_state(store: ArtifactStore, source: str) -> dict[str, Any]:
    return store.read_json(*STATE_PREFIX, f"{source}.json") or {"generation": 0, "pages": {}, "records": {}}


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


def logical_day(logical_date: str | None) -> dt.date | None:
    """The date part of an ISO date or timestamp (timestamps with an offset are taken in UTC)."""
    if logical_date is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(logical_date)
    except ValueError as error:
        raise StepError(f"crawl: logical date {logical_date!r} is not an ISO date or timestamp") from error
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.date()


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


# ------------------------------------------------------------------------------------------- crawl


@dataclass
class SourceCrawl:
    """The outcome of crawling one source: emitted rows, quarantine, new state, report."""

    rows: dict[str, dict[str, str]]
    quarantined: list[dict[str, str | None]]
    state: dict[str, Any]
    report: SourceReport


def source_location(source: SourceConfig) -> str:
    """The URL (or file:// URI) that names a source in reports and state."""
    return getattr(source, "location", None) or source.url


class Progress:
    """Periodic progress lines on the task log ("fetched 120/450 pages"); stdout is the manifest's."""

    def __init__(self, source: str, every_s: float) -> None:
        self.source = source
        self.every_s = every_s
        self.last_logged = time.monotonic()

    def update(self, done: int, total: int | None, what: str = "pages", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_logged >= self.every_s:
            self.last_logged = now
            log.info("crawl %s: fetched %d%s %s", self.source, done, "" if total is None else f"/{total}", what)


class SourceSession:
    """One source's crawl: the shared fetch path (conditional GET against the page state, errors
    noted in the report), record de-duplication against earlier crawls, quarantine, and the new state.

    Every kind crawls through this, so politeness, robots, the guard, byte caps and state behave the same.
    """

    def __init__(self, fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None) -> None:
        self.fetcher = fetcher
        self.source = fetcher.source
        self.report = fetcher.report
        self.crawl = fetcher.crawl
        self.previous_state = previous_state
        self.until = until
        self.run_id = run_id
        self.logical_date = logical_date
        self.page_states: dict[str, dict[str, Any]] = dict(previous_state.get("pages", {}))
        self.known_hashes: dict[str, str] = dict(previous_state.get("records", {}))
        self.rows: dict[str, dict[str, str]] = {}
        self.quarantined: list[dict[str, str | None]] = []
        self.progress = Progress(self.source.name, self.crawl.progress_every_s)
        self.fetched_at = _utc_now()

    # ----------------------------------------------------------------------------- fetching

    def fetch_page(self, url: str, what: str = "page", *, required: bool = False) -> Fetched | None:
        """GET `url` conditionally; None when it was skipped (robots, guard, bad response: noted).

        A page that is skipped keeps its old state, so the next crawl tries it again. `required`
        pages (an index the rest depends on) raise instead. An unreachable host always raises.
        """
        page_state = self.page_states.get(url, {})
        validators = {header: page_state[key] for header, key in
                      (("If-None-Match", "etag"), ("If-Modified-Since", "last_modified")) if page_state.get(key)}
        try:
            fetched = self.fetcher.fetch(url, validators)
            if fetched.status != 304 and not fetched.is_success:
                raise HttpStatusError(self.source.name, url, f"{what} answered HTTP {fetched.status}")
        except SourceUnreachableError:
            raise
        except CrawlError as error:
            if required and not isinstance(error, RobotsDisallowedError):
                raise
            log.warning("crawl %s: %s skipped: %s", self.source.name, what, error)
            self.report.note(error)
            return None
        if fetched.status == 304:
            self.report.pages_not_modified += 1
        else:
            self.report.pages_fetched += 1
        return fetched

    def read_file(self, path: Path) -> Fetched | None:
        """A local file through the same rules: a byte cap, and "not modified" when size and mtime match."""
        url = path.resolve().as_uri()
        try:
            stat = path.stat()
        except OSError as error:
            self.report.note(CrawlError(self.source.name, url, f"cannot read: {error}"))
            return None
        version = f"{stat.st_size}:{stat.st_mtime_ns}"
        if self.page_states.get(url, {}).get("version") == version:
            self.report.pages_not_modified += 1
            return Fetched(url, 304, httpx.Headers({"x-file-version": version}))
        limit = self.crawl.max_response_bytes
        if stat.st_size > limit:
            self.report.note(ResponseTooLargeError(self.source.name, url,
                                                   f"file size {stat.st_size} exceeds {limit} bytes"))
            return None
        body = path.read_bytes()
        self.report.pages_fetched += 1
        self.report.bytes += len(body)
        return Fetched(url, 200, httpx.Headers({"x-file-version": version}), body)

    def is_unchanged(self, url: str, fetched: Fetched) -> bool:
        """A 304, or a 200 whose body is byte-identical to the last crawl's."""
        if fetched.status == 304:
            return True
        if hashlib.sha256(fetched.body).hexdigest() == self.page_states.get(url, {}).get("sha256"):
            self.report.pages_unchanged += 1
            return True
        return False

    def remember(self, url: str, fetched: Fetched, **extra: Any) -> None:
        """Advance a page's state (validators, body digest, kind-specific extras) after it was processed."""
        if fetched.status == 304:
            state = dict(self.page_states.get(url, {}))
        else:
            state = {"etag": fetched.headers.get("etag"), "last_modified": fetched.headers.get("last-modified"),
                     "sha256": hashlib.sha256(fetched.body).hexdigest()}
            if fetched.headers.get("x-file-version"):
                state["version"] = fetched.headers["x-file-version"]
        state.update(extra)
        self.page_states[url] = state

    # ------------------------------------------------------------------------------ records

    def emit(self, record_id: str, text: str, label: str) -> None:
        """A record, unless an earlier crawl (or this one) already emitted the same id with the same text."""
        record = {"id": record_id, "text": text, "label": label, "source": self.source.name,
                  "fetched_at": self.fetched_at, "content_hash": content_hash(text)}
        previous_hash = self.known_hashes.get(record_id)
        if previous_hash == record["content_hash"]:
            self.report.records_unchanged += 1
            return
        if previous_hash is None:
            self.report.records_new += 1
        else:
            self.report.records_changed += 1
        self.known_hashes[record_id] = record["content_hash"]
        self.rows[record_id] = record

    def quarantine(self, where: str, check: str, detail: str, raw: str, *, record_id: str | None = None,
                   field_name: str | None = None, value: str | None = None) -> None:
        """A malformed record kept with the check it failed; `where` names the URL and line/entry."""
        self.quarantined.append({
            "id": record_id, "source": self.source.name, "step": STEP, "check": check, "field": field_name,
            "value": value, "reason": f"{where}: {detail}", "record_json": raw,
        })
        self.report.records_quarantined += 1

    def finished(self) -> SourceCrawl:
        state = {
            "source": self.source.name, "kind": self.source.kind, "url": source_location(self.source),
            "generation": self.previous_state.get("generation", 0) + 1, "run_id": self.run_id,
            "logical_date": self.logical_date, "updated_at": _utc_now(),
            "pages": self.page_states, "records": self.known_hashes,
        }
        return SourceCrawl(self.rows, self.quarantined, state, self.report)


def crawl_jsonl_feed(session: SourceSession) -> None:
    """`feed/index.json`, then every JSON-lines page dated up to the logical date."""
    source, report, until = session.source, session.report, session.until
    index_url = str(httpx.URL(source.url).join("feed/index.json"))
    try:
        index = session.fetcher.fetch(index_url)
    except RobotsDisallowedError as error:
        log.warning("crawl %s: %s", source.name, error)
        report.note(error)
        return
    if not index.is_success:
        raise HttpStatusError(source.name, index_url, f"feed index answered HTTP {index.status}")
    pages = parse_index(index.body, index.url, source.name)
    selected = [page for page in pages if until is None or page.date <= until]
    report.pages_listed, report.pages_selected = len(pages), len(selected)
    log.info("crawl %s: %d of %d pages dated up to %s", source.name, len(selected), len(pages), until or "any day")

    for number, page in enumerate(selected, start=1):
        fetched = session.fetch_page(page.url, f"page {number}/{len(selected)}")
        if fetched is None:
            continue
        if fetched.status == 304:
            outcome = "not modified"
        elif session.is_unchanged(page.url, fetched):
            outcome = "unchanged"
        else:
            parsed = parse_page(fetched.body, page.url, source, session.fetched_at)
            session.quarantined.extend(parsed.quarantined)
            report.records_quarantined += len(parsed.quarantined)
            for record in parsed.records:
                session.emit(record["id"], record["text"], record["label"])
            outcome = f"{len(parsed.records)} records, {len(parsed.quarantined)} quarantined"
        session.remember(page.url, fetched, date=page.date.isoformat())
        log.info("crawl %s: page %d/%d %s: %s", source.name, number, len(selected), page.date, outcome)
        session.progress.update(number, len(selected))


def crawl_source(fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None) -> SourceCrawl:
    session = SourceSession(fetcher, previous_state, until, run_id, logical_date)
    if fetcher.source.kind == "jsonl_feed":
        crawl_jsonl_feed(session)
    else:
        # The other kinds build on this module's fetch path, so they are imported here, not at the top.
        from tasks.crawl_sources import CRAWLERS

        CRAWLERS[fetcher.source.kind](session)
    return session.finished()


def _open_client(crawl: CrawlConfig) -> httpx.Client:
    # trust_env=False: a proxy would make the connection itself, so the guard's resolution would not
    # be the address actually reached.
    return httpx.Client(headers={"User-Agent": crawl.user_agent}, timeout=crawl.timeout_s,
                        follow_redirects=False, trust_env=False)


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None, client: httpx.Client | None = None) -> Manifest:
    """Crawl every configured source; `client` is injectable (tests use `httpx.MockTransport`)."""
    until = logical_day(logical_date)
    report: dict[str, Any] = {}

    def body(ctx: StepContext) -> None:
        http = client or _open_client(config.crawl)
        pacer = HostPacer(config.crawl.min_interval_s)
        crawls: list[SourceCrawl] = []
        try:
            for source in config.crawl.sources:
                fetcher = SourceFetcher(http, config.crawl, source, SourceReport(source.name, source_location(source)),
                                        pacer)
                crawls.append(crawl_source(fetcher, read_crawl_state(store, source.name), until, run_id, logical_date))
        finally:
            if client is None:
                http.close()

        rows = sorted((row for crawl in crawls for row in crawl.rows.values()), key=lambda row: row["id"])
        quarantined = [row for crawl in crawls for row in crawl.quarantined]
        sources = [crawl.report.source for crawl in crawls]
        write_parquet(rows, ctx.out_dir / "records.parquet", schema=RECORD_SCHEMA)
        ctx.add_output("records", "records.parquet", "dataset", rows=len(rows), sources=sources)
        write_parquet(quarantined, ctx.out_dir / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
        ctx.add_output("quarantine", "quarantine.parquet", "dataset", rows=len(quarantined), sources=sources)
        for crawl in crawls:
            state_path = ctx.out_dir / "crawl_state" / f"{crawl.report.source}.json"
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(crawl.state, sort_keys=True))
        ctx.add_output("crawl_state", "crawl_state", "directory", sources=sources)
        report.update(run_id=run_id, logical_date=logical_date,
                      sources={crawl.report.source: crawl.report.to_dict() for crawl in crawls})
        (ctx.out_dir / "crawl_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        ctx.add_output("report", "crawl_report.json", "report")

        reports = [crawl.report for crawl in crawls]
        ctx.metrics.update(
            rows_new=len(rows),
            rows_quarantined=len(quarantined),
            pages_fetched=sum(item.pages_fetched for item in reports),
            pages_not_modified=sum(item.pages_not_modified for item in reports),
            bytes=sum(item.bytes for item in reports),
            errors=sum(item.errors for item in reports),
            skipped_robots=sum(item.skipped_robots for item in reports),
            refused_by_guard=sum(item.refused_by_guard for item in reports),
            retries=sum(item.retries for item in reports),
            records_changed=sum(item.records_changed for item in reports),
        )
        # Errors by kind as their own metrics (errors.too_large, ...), so MLflow can chart and compare them.
        for item in reports:
            for kind, count in item.errors_by_kind.items():
                ctx.metrics[f"errors.{kind}"] = int(ctx.metrics.get(f"errors.{kind}") or 0) + count
        for item in reports:
            log.info("crawl %s: fetched %d, not modified %d, skipped by robots %d, refused by guard %d, "
                     "errors %s, records new %d changed %d quarantined %d", item.source, item.pages_fetched,
                     item.pages_not_modified, item.skipped_robots, item.refused_by_guard,
                     item.errors_by_kind or 0, item.records_new, item.records_changed, item.records_quarantined)

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("crawl",))
    publish_crawl_state(store, manifest, config.crawl.sources)
    if not manifest.reused:
        import mlflow

        import pandas as pd

        from tasks.tracking import log_dataset, log_manifest, step_run

        with step_run(config, run_id, STEP, logical_date):
            log_manifest(manifest)
            mlflow.log_dict(report, "crawl_report.json")
            # The crawled batch as a dataset output; validate logs the same name and digest as its input.
            records = manifest.output("records")
            log_dataset(pd.read_parquet(store.local_path(records.uri)), records, name=f"{config.name}.records",
                        context="output")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
