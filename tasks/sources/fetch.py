"""The fetcher every source kind shares (`SourceFetcher`): per-host pacing, robots.txt, retries with backoff
and Retry-After, redirects re-checked hop by hop, content-type and byte caps while streaming and decompressing.
It fetches through the address guard (`guard.py`) and the deadline transport (`transport.py`), raises the
crawl's errors (`errors.py`) and counts into the source's report (`report.py`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import logging
import random
import socket
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from protego import Protego

from tasks.config import (
    CrawlConfig,
    SourceConfig,
)
from tasks.sources.errors import (
    ContentTypeRefusedError,
    CrawlError,
    FeedFormatError,
    GuardRefusedError,
    HttpStatusError,
    RedirectError,
    ResponseDeadlineError,
    ResponseTooLargeError,
    RobotsDisallowedError,
    RobotsUnavailableError,
    ServerError,
    SourceUnreachableError,
    TooSlowError,
)
from tasks.sources.guard import check_address, check_url
from tasks.sources.report import SourceReport
from tasks.sources.transport import ResponseClock, bounded_by

log = logging.getLogger("freshet.crawl")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A server may ask for a long pause; past this the crawl is better off failing and being retried.
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class Accepts:
    """What a source kind reads: the media types its documents may have (robots.txt is text/plain), and the
    Accept header that asks for them."""

    media_types: frozenset[str]
    header: str


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
                 report: SourceReport, pacer: HostPacer, accepts: Accepts) -> None:
        self.client = client
        self.crawl = crawl
        self.source = source
        self.report = report
        self.pacer = pacer
        self.robots_by_origin: dict[str, Protego] = {}
        self.media_types, self.accept = accepts.media_types, accepts.header

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
        check_url(self.source.name, url, self.source.allow_private_network)

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
        with bounded_by(clock):
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
            check_address(self.source.name, url, ipaddress.ip_address(str(peer[0]).split("%", 1)[0]),
                          self.source.allow_private_network, f"connected to {peer[0]}")

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
