"""The deadline transport: httpx over sockets whose every operation (connect, TLS handshake, read, write) waits
no longer than the response being received has left, so a whole response, headers included, is bounded by
`crawl.response_deadline_s` and, once its body streams, by a minimum average rate (`crawl.min_bytes_per_s`).
httpx applies its timeouts to each read separately; this bounds the response as a whole, through httpcore's
network-backend hook.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from tasks.config import CrawlConfig


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


@contextlib.contextmanager
def bounded_by(clock: ResponseClock) -> Iterator[ResponseClock]:
    """Every socket operation of this thread, until the block ends, waits no longer than `clock` allows."""
    token = _response_clock.set(clock)
    try:
        yield clock
    finally:
        _response_clock.reset(token)


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


def open_client(crawl: CrawlConfig) -> httpx.Client:
    # trust_env=False: a proxy would make the connection itself, so the guard's resolution would not
    # be the address actually reached. DeadlineTransport bounds every socket operation by the response's clock.
    return httpx.Client(headers={"User-Agent": crawl.user_agent}, timeout=crawl.timeout_s,
                        follow_redirects=False, trust_env=False, transport=DeadlineTransport())
