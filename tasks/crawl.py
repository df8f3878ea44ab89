"""Crawl step: fetch the new and changed records of every configured source, politely and safely.

For each `jsonl_feed` source: read robots.txt (honoured with protego), the page index
`feed/index.json`, then every page dated on or before the logical date, with conditional GETs
(If-None-Match / If-Modified-Since) so unchanged pages cost a 304. Only records whose id is new or
whose text changed are emitted. Requests are paced per host, retried with exponential backoff and
jitter (honouring Retry-After), capped in size, limited to JSON/NDJSON/text content, and refused when
the host resolves to a private, loopback, link-local, unspecified or cloud-metadata address (unless
the source opts in with `allow_private_network`); redirects are followed by hand, each hop re-checked.

The crawl state (page validators, the content hash of every emitted record) is written into the step
output and copied to `state/crawl/<source>.json` only after the manifest is committed, so a crash
mid-crawl loses nothing and a rerun of the same run id reuses the manifest without crawling.

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
from collections.abc import Mapping, Sequence
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
        headers = {"User-Agent": self.crawl.user_agent, "Accept": ACCEPT_HEADER, **validators}
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
        if media_type not in ALLOWED_MEDIA_TYPES and not media_type.endswith("+json"):
            raise ContentTypeRefusedError(self.source.name, str(url),
                                          f"content type {media_type or '(none)'!r} is not JSON, NDJSON or text")
        limit = self.crawl.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(self.source.name, str(url), f"Content-Length {declared} exceeds {limit} bytes")
        chunks = []
        received = 0
        for chunk in response.iter_bytes():
            received += len(chunk)
            self.report.bytes += len(chunk)
            if received > limit:
                raise ResponseTooLargeError(self.source.name, str(url), f"body exceeds {limit} bytes")
            chunks.append(chunk)
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


def crawl_source(fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None) -> SourceCrawl:
    source, report = fetcher.source, fetcher.report
    page_states: dict[str, dict[str, Any]] = dict(previous_state.get("pages", {}))
    known_hashes: dict[str, str] = dict(previous_state.get("records", {}))
    rows: dict[str, dict[str, str]] = {}
    quarantined: list[dict[str, str | None]] = []

    def finished() -> SourceCrawl:
        state = {
            "source": source.name, "url": source.url, "generation": previous_state.get("generation", 0) + 1,
            "run_id": run_id, "logical_date": logical_date, "updated_at": _utc_now(),
            "pages": page_states, "records": known_hashes,
        }
        return SourceCrawl(rows, quarantined, state, report)

    index_url = str(httpx.URL(source.url).join("feed/index.json"))
    try:
        index = fetcher.fetch(index_url)
    except RobotsDisallowedError as error:
        log.warning("crawl %s: %s", source.name, error)
        report.note(error)
        return finished()
    if not index.is_success:
        raise HttpStatusError(source.name, index_url, f"feed index answered HTTP {index.status}")
    pages = parse_index(index.body, index.url, source.name)
    selected = [page for page in pages if until is None or page.date <= until]
    report.pages_listed, report.pages_selected = len(pages), len(selected)
    log.info("crawl %s: %d of %d pages dated up to %s", source.name, len(selected), len(pages), until or "any day")

    for number, page in enumerate(selected, start=1):
        page_state = page_states.get(page.url, {})
        validators = {header: page_state[key] for header, key in
                      (("If-None-Match", "etag"), ("If-Modified-Since", "last_modified")) if page_state.get(key)}
        try:
            fetched = fetcher.fetch(page.url, validators)
            if fetched.status != 304 and not fetched.is_success:
                raise HttpStatusError(source.name, page.url, f"page answered HTTP {fetched.status}")
        except SourceUnreachableError:
            raise
        except CrawlError as error:
            # The page is skipped and its state not advanced, so the next crawl tries it again.
            log.warning("crawl %s: page %d/%d skipped: %s", source.name, number, len(selected), error)
            report.note(error)
            continue
        if fetched.status == 304:
            report.pages_not_modified += 1
            outcome = "not modified"
        else:
            report.pages_fetched += 1
            body_sha256 = hashlib.sha256(fetched.body).hexdigest()
            if body_sha256 == page_state.get("sha256"):
                report.pages_unchanged += 1
                outcome = "unchanged"
            else:
                parsed = parse_page(fetched.body, page.url, source, _utc_now())
                quarantined.extend(parsed.quarantined)
                report.records_quarantined += len(parsed.quarantined)
                for record in parsed.records:
                    previous_hash = known_hashes.get(record["id"])
                    if previous_hash == record["content_hash"]:
                        report.records_unchanged += 1
                        continue
                    if previous_hash is None:
                        report.records_new += 1
                    else:
                        report.records_changed += 1
                    known_hashes[record["id"]] = record["content_hash"]
                    rows[record["id"]] = record
                outcome = f"{len(parsed.records)} records, {len(parsed.quarantined)} quarantined"
            page_states[page.url] = {
                "date": page.date.isoformat(), "etag": fetched.headers.get("etag"),
                "last_modified": fetched.headers.get("last-modified"), "sha256": body_sha256,
            }
        log.info("crawl %s: page %d/%d %s: %s", source.name, number, len(selected), page.date, outcome)
    return finished()


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
                fetcher = SourceFetcher(http, config.crawl, source, SourceReport(source.name, source.url), pacer)
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
        )

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("crawl",))
    publish_crawl_state(store, manifest, config.crawl.sources)
    if not manifest.reused:
        import mlflow

        from tasks.tracking import log_manifest, step_run

        with step_run(config, run_id, STEP, logical_date):
            log_manifest(manifest)
            mlflow.log_dict(report, "crawl_report.json")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
