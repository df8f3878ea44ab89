"""The crawl's errors: each names its source and URL, and its `kind` keys the crawl report's error counts
(`errors_by_kind`) and the failed pages' reasons."""

from __future__ import annotations

from tasks.manifest import StepError


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


class DecompressionBombError(CrawlError):
    """A compressed document that would decompress past the byte cap."""

    kind = "decompressed_too_large"
