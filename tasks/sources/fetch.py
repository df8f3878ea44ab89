"""The fetch engine every source kind shares: errors, the SSRF guard, per-host pacing, retries with
backoff and Retry-After, a deadline and a minimum transfer rate for every response, byte caps while
streaming and decompressing, redirects re-checked hop by hop.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import logging
import random
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

import httpcore
import httpx
from protego import Protego

from tasks.config import (
    CrawlConfig,
    SourceConfig,
)
from tasks.manifest import StepError

log = logging.getLogger("freshet.crawl")

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
    "label_studio": (frozenset(), ""),  # its REST API goes through tasks/labelling/label_studio.py
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

    def __init__(self, source: str, url: str, detail: str, attempts: int = 1) -> None:
        self.source = source
        self.url = url
        self.detail = detail
        self.attempts = attempts
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
    """Still failing after every retry: no connection, a timeout, or one of the subclasses below."""

    kind = "unreachable"


class ServerError(SourceUnreachableError):
    """429 or 5xx on every attempt."""

    kind = "server_error"


class ResponseDeadlineError(SourceUnreachableError):
    """The response (connect, headers, body) did not complete within `response_deadline_s`."""

    kind = "deadline"


class TooSlowError(SourceUnreachableError):
    """The body's average rate fell below `min_bytes_per_s` after the grace period."""

    kind = "too_slow"


class RobotsUnavailableError(SourceUnreachableError):
    """robots.txt could not be read: nothing on that origin may be fetched, so the source fails."""

    kind = "robots_unavailable"


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


# ------------------------------------------------------------------------------- response limits


@dataclass
class ResponseClock:
    """The time limits of one response: a deadline for all of it (connect, headers, body) and, once the
    body has streamed for the grace period, a minimum average transfer rate."""

    deadline: float  # time.monotonic() values
    min_bytes_per_s: float
    grace_s: float
    body_started: float | None = None
    body_bytes: int = 0
    expired: str | None = None  # "deadline" or "too_slow", once a read ran into that limit

    @classmethod
    def start(cls, crawl: CrawlConfig) -> ResponseClock:
        return cls(time.monotonic() + crawl.response_deadline_s, crawl.min_bytes_per_s, crawl.min_rate_grace_s)

    def read_by(self) -> tuple[float, str]:
        """When the next bytes must have arrived, and the limit that time comes from."""
        if self.body_started is not None and self.min_bytes_per_s > 0:
            # With no more bytes, the average rate drops below the minimum at body_started + bytes / rate.
            too_slow_at = self.body_started + max(self.grace_s, self.body_bytes / self.min_bytes_per_s)
            if too_slow_at < self.deadline:
                return too_slow_at, "too_slow"
        return self.deadline, "deadline"

    def exceeded(self, now: float) -> str | None:
        """The limit a response has run past at `now`, if any (the deadline wins when both have)."""
        if now >= self.deadline:
            return "deadline"
        at, limit = self.read_by()
        return limit if now >= at else None


# The clock of the response the current thread is receiving; read by DeadlineStream on every socket operation.
_response_clock: ContextVar[ResponseClock | None] = ContextVar("freshet_response_clock", default=None)


def _within_clock(operation: Callable[[float | None], Any], timeout: float | None,
                  error: type[httpcore.TimeoutException]) -> Any:
    """Run a socket operation with `timeout` shortened to what the current response has left; when that
    shortened wait runs out, the clock records which limit it was."""
    clock = _response_clock.get()
    if clock is None:
        return operation(timeout)
    at, limit = clock.read_by()
    left = at - time.monotonic()
    if left <= 0:
        clock.expired = limit
        raise error(f"response {limit.replace('_', ' ')} passed")
    if timeout is not None and timeout <= left:
        return operation(timeout)
    try:
        return operation(left)
    except httpcore.TimeoutException:
        clock.expired = limit
        raise


class DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and TLS handshake waits no longer than the response has left.

    httpx applies its read timeout to each read separately, so a server that sends a byte a second
    never times out; bounding each operation by the clock bounds the response as a whole, headers included.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return bytes(_within_clock(lambda left: self.stream.read(max_bytes, left), timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _within_clock(lambda left: self.stream.write(buffer, left), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(_within_clock(lambda left: self.stream.start_tls(ssl_context, server_hostname, left),
                                            timeout, httpcore.ConnectTimeout))

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with every stream a DeadlineStream (connects bounded by the clock too)."""

    def __init__(self) -> None:
        self.backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(_within_clock(
            lambda left: self.backend.connect_tcp(host, port, left, local_address, socket_options),
            timeout, httpcore.ConnectTimeout))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(_within_clock(lambda left: self.backend.connect_unix_socket(path, left, socket_options),
                                            timeout, httpcore.ConnectTimeout))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's HTTP transport over DeadlineBackend sockets, no proxies (see open_client)."""

    def __init__(self) -> None:
        super().__init__(trust_env=False)
        # httpx has no parameter for the network backend: the pool is rebuilt with the same defaults and ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=100,
            max_keepalive_connections=20, keepalive_expiry=5.0, network_backend=DeadlineBackend())


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
            moment = moment.replace(tzinfo=dt.UTC)
        seconds = (moment - (now or dt.datetime.now(dt.UTC))).total_seconds()
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
            except SourceUnreachableError as error:
                # Without its rules nothing on the origin may be fetched: the whole source fails, not this page.
                raise RobotsUnavailableError(self.source.name, robots_url, f"unavailable ({error.detail}), so "
                                             f"nothing on {origin} may be crawled", error.attempts) from error
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
        """One response that is not a transient failure; connect errors, timeouts, responses past their
        deadline or under the minimum rate, 429 and 5xx are retried."""
        attempt = 0
        while True:
            self.pacer.wait_turn(url)
            retry_after = None
            gives_up_as: type[SourceUnreachableError] = SourceUnreachableError
            try:
                fetched = self.send_once(url, validators)
            except (ResponseDeadlineError, TooSlowError) as error:
                cause, detail, gives_up_as = error.kind, error.detail, type(error)
            except socket.gaierror as error:
                cause, detail = "dns", f"cannot resolve {url.host}: {error}"
            except httpx.TransportError as error:
                cause, detail = type(error).__name__, f"{type(error).__name__}: {error}"
            else:
                if fetched.status != 429 and fetched.status < 500:
                    return fetched
                cause, detail, gives_up_as = f"http_{fetched.status}", f"HTTP {fetched.status}", ServerError
                retry_after = retry_after_seconds(fetched.headers.get("retry-after"))
            if attempt >= self.crawl.max_retries:
                raise gives_up_as(self.source.name, str(url), f"{detail} (after {attempt + 1} attempts)", attempt + 1)
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
        clock = ResponseClock.start(self.crawl)
        # With a client not from open_client (no DeadlineStream), each phase still waits at most the deadline.
        timeout = min(self.crawl.timeout_s, self.crawl.response_deadline_s)
        request = self.client.build_request("GET", url, headers=headers, timeout=timeout)
        token = _response_clock.set(clock)
        try:
            response = self.client.send(request, stream=True, follow_redirects=False)
            try:
                self.check_peer(url, response)
                body = self.read_body(url, response, clock) if response.is_success else b""
                return Fetched(str(url), response.status_code, response.headers, body)
            finally:
                response.close()
        except httpx.TimeoutException as error:
            if clock.expired is None:
                raise  # the per-read timeout_s: an ordinary timeout
            raise self.limit_error(url, clock, clock.expired) from error
        finally:
            _response_clock.reset(token)

    def limit_error(self, url: httpx.URL, clock: ResponseClock, limit: str) -> CrawlError:
        if limit == "deadline":
            return ResponseDeadlineError(
                self.source.name, str(url), f"no complete response within response_deadline_s="
                f"{self.crawl.response_deadline_s:g} ({clock.body_bytes} body bytes received)")
        streamed = time.monotonic() - (clock.body_started or time.monotonic())
        return TooSlowError(
            self.source.name, str(url), f"body arriving at {clock.body_bytes / max(streamed, 1e-9):.0f} B/s, under "
            f"min_bytes_per_s={self.crawl.min_bytes_per_s:g} ({clock.body_bytes} bytes in {streamed:.1f} s)")

    def check_clock(self, url: httpx.URL, clock: ResponseClock) -> None:
        limit = clock.exceeded(time.monotonic())
        if limit is not None:
            raise self.limit_error(url, clock, limit)

    def check_peer(self, url: httpx.URL, response: httpx.Response) -> None:
        """Re-check the address actually connected to: DNS may have changed since `check_guard`."""
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            self._refuse_address(url, ipaddress.ip_address(str(peer[0]).split("%", 1)[0]), f"connected to {peer[0]}")

    def refuse_unread_content_type(self, url: httpx.URL, response: httpx.Response) -> None:
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        is_robots = url.path == "/robots.txt" and media_type == "text/plain"
        if media_type not in self.media_types and not is_robots and not (
                media_type.endswith("+json") and "application/json" in self.media_types):
            raise ContentTypeRefusedError(
                self.source.name, str(url),
                f"content type {media_type or '(none)'!r} is not one a {self.source.kind} source reads "
                f"({', '.join(sorted(self.media_types))})")

    def read_body(self, url: httpx.URL, response: httpx.Response, clock: ResponseClock) -> bytes:
        self.refuse_unread_content_type(url, response)
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
        clock.body_started = time.monotonic()
        self.check_clock(url, clock)  # the headers alone may have used up the deadline

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
            clock.body_bytes = raw_received
            self.check_clock(url, clock)
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



def open_client(crawl: CrawlConfig) -> httpx.Client:
    # trust_env=False: a proxy would make the connection itself, so the guard's resolution would not
    # be the address actually reached. DeadlineTransport bounds every socket operation by the response's clock.
    return httpx.Client(headers={"User-Agent": crawl.user_agent}, timeout=crawl.timeout_s,
                        follow_redirects=False, trust_env=False, transport=DeadlineTransport())


