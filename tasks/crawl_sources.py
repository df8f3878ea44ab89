"""The crawl source kinds beyond `jsonl_feed`; each one crawls through `tasks.crawl.SourceSession`.

- `html_site`: sitemaps (and sitemap indexes, entries dated after the logical date left for later)
  plus link following within allowed hosts and path regexes, up to `max_depth` hops and `max_pages`
  requests; text by trafilatura (falling back to a CSS selector) or by the selector alone, label by a
  selector (element text or attribute) or a regex on the URL.
- `feed`: RSS/Atom through feedparser; text from title and/or summary, label from the category or
  a regex on the entry link; entries dated after the logical date are left for later.
- `json_api`: JSON (records at a dotted path) or JSON-lines pages, paginated by a next link (body
  field or `Link: rel=next`) or a page/offset parameter.
- `local`: a file or folder (glob) of CSV, JSON lines, Parquet or text files (label = folder name).
- `debian_index`: a Debian `Packages` index, plain, .gz or .xz, over HTTP or from a file;
  decompressed in bounded chunks and refused once it inflates past `crawl.max_decompressed_bytes`.

Fetching, robots, the SSRF guard, pacing, retries, byte caps, conditional GET, de-duplication
against earlier crawls and the state all live in `SourceSession`, the same for every kind.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import logging
import lzma
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from tasks.config import (DebianIndexSource, FeedSource, HtmlSiteSource, JsonApiSource, LabelRule, LocalSource)
from tasks.contract import StepError
from tasks.crawl import CrawlError, FeedFormatError, Fetched, RobotsDisallowedError, SourceSession
from tasks.demo_corpus import description_text, iter_control_stanzas

log = logging.getLogger("freshet.crawl")

DECOMPRESS_CHUNK_BYTES = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
MAX_SITEMAP_NESTING = 3
MAX_LINKS_PER_PAGE = 1000  # kept in the page state so a 304 page's links are still followed
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})
FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                    **{suffix: "text" for suffix in TEXT_SUFFIXES}}
CHARSET_PATTERN = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


class DecompressionBombError(CrawlError):
    kind = "decompressed_too_large"


# ------------------------------------------------------------------------------------------ helpers


def with_logical_date(session: SourceSession, url: str) -> str:
    """`{date}` in a URL is the logical date, so a source can name the day's document."""
    if "{date}" not in url:
        return url
    if session.until is None:
        raise StepError(f"crawl source {session.source.name!r}: {url} has {{date}} but the crawl has no logical date")
    return url.replace("{date}", session.until.isoformat())


def decode_text(body: bytes, content_type: str | None = None) -> str:
    """Text from bytes: the declared charset (header or <meta>), else UTF-8, else the detected one."""
    declared = None
    if content_type and "charset=" in content_type.lower():
        declared = content_type.lower().split("charset=", 1)[1].split(";", 1)[0].strip().strip('"\'')
    else:
        match = CHARSET_PATTERN.search(body[:4096])
        declared = match.group(1).decode("ascii", "replace") if match else None
    for encoding in (declared, "utf-8"):
        if encoding:
            try:
                return body.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                continue
    from charset_normalizer import from_bytes

    guess = from_bytes(body).best()
    return str(guess) if guess is not None else body.decode("utf-8", errors="replace")


def normalise_text(text: str) -> str:
    """Whitespace collapsed within lines, blank lines dropped."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def lookup(item: Any, path: str) -> Any:
    """A value at a dotted path (`data.items`, `links.0.href`); KeyError when it is not there."""
    if not path:
        return item
    for part in path.split("."):
        if isinstance(item, Mapping) and part in item:
            item = item[part]
        elif isinstance(item, list) and part.isdigit() and int(part) < len(item):
            item = item[int(part)]
        else:
            raise KeyError(part)
    return item


def record_fields(item: Any, source: JsonApiSource | LocalSource
                  ) -> tuple[str, str, str] | tuple[str, str | None, str | None, str]:
    """(id, text, label), or (check, field, value, detail) for the first field that is wrong."""
    if not isinstance(item, Mapping):
        return "not_an_object", None, None, f"a record must be an object, got {type(item).__name__}"
    values = []
    for field_name in (source.id_field, source.text_field, source.label_field):
        try:
            value = lookup(item, field_name)
        except KeyError:
            return "missing_field", field_name, None, f"missing field {field_name!r}"
        if field_name == source.id_field and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric ids are common in APIs and tables
        if not isinstance(value, str):
            shown = json.dumps(value, default=str)[:200]
            return "not_a_string", field_name, shown, f"field {field_name!r} must be a string, got {shown}"
        if not value.strip():
            return "empty_field", field_name, "", f"field {field_name!r} is empty"
        values.append(value)
    return values[0], values[1], values[2]


def emit_item(session: SourceSession, item: Any, where: str, source: JsonApiSource | LocalSource) -> bool:
    """Emit a structured record or quarantine it naming the failing field; True when emitted."""
    fields = record_fields(item, source)
    if len(fields) == 4:
        check, field_name, value, detail = fields
        raw_id = item.get(source.id_field) if isinstance(item, Mapping) else None
        record_id = f"{source.name}:{raw_id}" if isinstance(raw_id, str | int) and str(raw_id) else None
        session.quarantine(where, check, detail, json.dumps(item, default=str, ensure_ascii=False)[:10_000],
                           record_id=record_id, field_name=field_name, value=value)
        return False
    record_id, text, label = fields
    session.emit(f"{source.name}:{record_id}", text, label)
    return True


# ------------------------------------------------------------------------------------ decompression


def decompress_capped(body: bytes, limit: int, source: str, url: str) -> bytes:
    """gzip/xz (by magic bytes) inflated in bounded chunks, refused once past `limit`; plain bytes as is.

    Inflating chunk by chunk means a compression bomb costs at most `limit` bytes of memory before
    it is refused. Concatenated members/streams (allowed by both formats) are all read.
    """
    if body.startswith(GZIP_MAGIC):
        label, make = "gzip", lambda: zlib.decompressobj(wbits=31)
    elif body.startswith(XZ_MAGIC):
        label, make = "xz", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    else:
        return body
    output: list[bytes] = []
    produced = 0

    def keep(chunk: bytes) -> None:
        nonlocal produced
        produced += len(chunk)
        if produced > limit:
            raise DecompressionBombError(
                source, url, f"{label} data inflates past max_decompressed_bytes={limit} "
                f"({len(body)} compressed bytes); refused as a possible compression bomb")
        output.append(chunk)

    pending = body
    try:
        while pending:
            decompressor = make()
            data = pending
            while not decompressor.eof:
                chunk = decompressor.decompress(data, DECOMPRESS_CHUNK_BYTES)
                keep(chunk)
                if label == "gzip":
                    data = decompressor.unconsumed_tail
                    if not data and not chunk:
                        break  # input used up before the end of the stream
                else:
                    data = b""
                    if decompressor.needs_input:
                        break
            if not decompressor.eof:
                raise FeedFormatError(source, url, f"{label} data is truncated after {produced} bytes")
            # Trailing NUL padding is allowed after an xz stream; anything else is another member/stream.
            pending = decompressor.unused_data.lstrip(b"\0") if label == "xz" else decompressor.unused_data
    except (zlib.error, lzma.LZMAError, EOFError) as error:
        raise FeedFormatError(source, url, f"corrupt {label} data: {error}") from error
    return b"".join(output)


# ---------------------------------------------------------------------------------------- html_site


def _xml_root(body: bytes, source: str, url: str) -> Any:
    from lxml import etree

    # No entities, no network, no huge trees: sitemaps come from outside.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        return etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as error:
        raise FeedFormatError(source, url, f"sitemap is not well-formed XML: {error}") from error


def parse_sitemap(body: bytes, url: str, source: str) -> tuple[str, list[tuple[str, str | None]]]:
    """("index" | "urlset", [(absolute loc, lastmod)]) of a sitemap or sitemap index."""
    root = _xml_root(body, source, url)
    kind = "index" if root.xpath("local-name()") == "sitemapindex" else "urlset"
    child = "sitemap" if kind == "index" else "url"
    entries = []
    for element in root.xpath(f"*[local-name()='{child}']"):
        loc = element.xpath("string(*[local-name()='loc'])").strip()
        lastmod = element.xpath("string(*[local-name()='lastmod'])").strip() or None
        if loc:
            entries.append((str(httpx.URL(url).join(loc)), lastmod))
    return kind, entries


def _lastmod_day(lastmod: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(lastmod[:10]) if lastmod else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def css(selector: str) -> Any:
    """A compiled CSS selector (translating to XPath costs more than matching a small page)."""
    from lxml.cssselect import CSSSelector

    return CSSSelector(selector)


def label_by_rule(rule: LabelRule, url: str, document: Any | None) -> str | None:
    """The label a rule finds (None when it finds nothing)."""
    if rule.url_regex is not None:
        match = re.search(rule.url_regex, url)
        value = (match.group(1) if match.groups() else match.group(0)) if match else None
    else:
        found = css(rule.selector)(document) if document is not None else []
        value = None
        if found:
            value = found[0].get(rule.attribute) if rule.attribute else found[0].text_content()
    if value is not None and rule.regex is not None:
        match = re.search(rule.regex, value)
        value = (match.group(1) if match.groups() else match.group(0)) if match else None
    value = " ".join(value.split()) if value else None
    return rule.mapping.get(value, value) if value else None


class HtmlSiteCrawl:
    """Sitemap discovery and breadth-first link following over one site."""

    def __init__(self, session: SourceSession) -> None:
        self.session = session
        self.source: HtmlSiteSource = session.source  # type: ignore[assignment]
        base = httpx.URL(self.source.url)
        self.allowed_hosts = {host.lower() for host in self.source.allowed_hosts} or {base.host.lower()}
        self.allow = [re.compile(pattern) for pattern in self.source.allow_paths]
        self.deny = [re.compile(pattern) for pattern in self.source.deny_paths]
        self.records = [re.compile(pattern) for pattern in self.source.record_paths]
        self.queued: set[str] = set()
        # Pages no crawl has fetched go first, so a max_pages budget smaller than the site still
        # reaches new pages on every crawl instead of re-validating the same first ones.
        self.unseen: deque[tuple[str, int]] = deque()
        self.seen: deque[tuple[str, int]] = deque()
        self.sitemap_entries_later = 0

    def in_scope(self, url: str, check_paths: bool = True) -> bool:
        """On an allowed host and (for pages, not sitemaps) a path the allow/deny regexes accept."""
        parts = httpx.URL(url)
        host_port = f"{parts.host}:{parts.port}" if parts.port else parts.host
        if parts.scheme not in ("http", "https") or not (
                parts.host.lower() in self.allowed_hosts or host_port.lower() in self.allowed_hosts):
            return False
        if not check_paths:
            return True
        path = parts.raw_path.decode("ascii", "replace")
        if self.allow and not any(pattern.search(path) for pattern in self.allow):
            return False
        return not any(pattern.search(path) for pattern in self.deny)

    def enqueue(self, url: str, depth: int) -> None:
        url = url.split("#", 1)[0]
        if url not in self.queued and self.in_scope(url):
            self.queued.add(url)
            known = self.session.page_states.get(url)
            (self.seen if known is not None else self.unseen).append((url, depth))
            if known is not None and self.source.follow_links and depth < self.source.max_depth:
                # Its links as of the last crawl, queued now: new pages behind known ones are reached
                # without spending requests on the known ones first.
                for link in known.get("links", []):
                    self.enqueue(link, depth + 1)

    @property
    def waiting(self) -> int:
        return len(self.unseen) + len(self.seen)

    def sitemap_urls(self) -> list[str]:
        base = httpx.URL(self.source.url)
        urls = [str(base.join(path)) for path in self.source.sitemaps]
        try:
            self.session.fetcher.check_robots(base)
        except RobotsDisallowedError:
            pass
        robots = self.session.fetcher.robots_by_origin.get(f"{base.scheme}://{base.netloc.decode('ascii')}")
        if robots is not None:
            urls += [url for url in robots.sitemaps if url not in urls]
        return urls

    def read_sitemap(self, url: str, nesting: int = 0) -> None:
        session = self.session
        fetched = session.fetch_page(url, "sitemap")
        if fetched is None:
            return
        if fetched.status == 304 or session.is_unchanged(url, fetched):
            kind = session.page_states.get(url, {}).get("sitemap_kind", "urlset")
            entries = [tuple(entry) for entry in session.page_states.get(url, {}).get("entries", [])]
        else:
            try:
                body = decompress_capped(fetched.body, session.crawl.max_decompressed_bytes, self.source.name, url)
                kind, entries = parse_sitemap(body, url, self.source.name)
            except FeedFormatError as error:
                log.warning("crawl %s: %s", self.source.name, error)
                session.report.note(error)
                return
        session.remember(url, fetched, sitemap_kind=kind, entries=[list(entry) for entry in entries])
        for loc, lastmod in entries:
            day = _lastmod_day(lastmod)
            if session.until is not None and day is not None and day > session.until:
                self.sitemap_entries_later += 1  # published after the logical date: a later crawl's
                continue
            if kind == "index":
                if nesting < MAX_SITEMAP_NESTING and self.in_scope(loc, check_paths=False):
                    self.read_sitemap(loc, nesting + 1)
            else:
                self.enqueue(loc, 0)

    def run(self) -> None:
        session, source = self.session, self.source
        for url in self.sitemap_urls():
            self.read_sitemap(url)
        for path in source.start_urls:
            self.enqueue(str(httpx.URL(source.url).join(path)), 0)
        session.report.pages_listed = self.waiting
        log.info("crawl %s: %d pages from sitemaps and start URLs (%d dated after %s left for later)",
                 source.name, self.waiting, self.sitemap_entries_later, session.until)
        requested = 0
        while self.waiting:
            if requested >= source.max_pages:
                log.warning("crawl %s: max_pages=%d reached, %d queued pages left for the next crawl",
                            source.name, source.max_pages, self.waiting)
                break
            url, depth = (self.unseen or self.seen).popleft()
            requested += 1
            self.crawl_page(url, depth)
            session.progress.update(requested, min(requested + self.waiting, source.max_pages))
        session.report.pages_selected = requested

    def crawl_page(self, url: str, depth: int) -> None:
        session = self.session
        fetched = session.fetch_page(url)
        if fetched is None:
            return
        if fetched.status == 304 or session.is_unchanged(url, fetched):
            links = session.page_states.get(url, {}).get("links", [])
        else:
            links = self.extract(url, fetched)
        session.remember(url, fetched, links=links)
        if self.source.follow_links and depth < self.source.max_depth:
            for link in links:
                self.enqueue(link, depth + 1)

    def extract(self, url: str, fetched: Fetched) -> list[str]:
        """Emit the page's record (or quarantine it); return its in-page links."""
        import lxml.html
        from lxml.etree import ParserError

        session, source = self.session, self.source
        html = decode_text(fetched.body, fetched.headers.get("content-type"))
        try:
            document = lxml.html.document_fromstring(html)
        except (ParserError, ValueError) as error:
            session.quarantine(url, "invalid_html", f"cannot parse HTML: {error}", html[:10_000])
            return []
        links = []
        for element, attribute, link, _ in document.iterlinks():
            if element.tag == "a" and attribute == "href":
                try:
                    links.append(str(httpx.URL(fetched.url).join(link.strip())).split("#", 1)[0])
                except httpx.InvalidURL:
                    continue
        links = list(dict.fromkeys(links))[:MAX_LINKS_PER_PAGE]
        path = httpx.URL(url).raw_path.decode("ascii", "replace")
        if self.records and not any(pattern.search(path) for pattern in self.records):
            return links  # a navigation page: followed, not a record
        text = self.main_text(html, document, url)
        label = label_by_rule(source.label, url, document)
        record_id = f"{source.name}:{url}"
        raw = json.dumps({"url": url, "text": text, "label": label}, ensure_ascii=False)
        if not text:
            session.quarantine(url, "missing_field", "no main text found", raw, record_id=record_id, field_name="text")
        elif not label:
            session.quarantine(url, "missing_field", "the label rule found no label", raw, record_id=record_id,
                               field_name="label")
        else:
            session.emit(record_id, text, label)
        return links

    def main_text(self, html: str, document: Any, url: str) -> str:
        rule = self.source.text
        if rule.method == "trafilatura":
            import trafilatura

            extracted = trafilatura.extract(html, url=url, include_comments=False, include_tables=False,
                                            deduplicate=False, fast=True)
            if extracted and extracted.strip():
                return normalise_text(extracted)
        if not rule.selector:
            return ""
        for unwanted in document.xpath("//script|//style|//noscript|//template"):
            unwanted.drop_tree()
        return normalise_text("\n".join(element.text_content() for element in css(rule.selector)(document)))


def crawl_html_site(session: SourceSession) -> None:
    HtmlSiteCrawl(session).run()


# --------------------------------------------------------------------------------------------- feed


def _plain(fragment: str) -> str:
    """Feed summaries are HTML fragments: their text only."""
    if "<" not in fragment:
        return normalise_text(fragment)
    import lxml.html

    try:
        return normalise_text(lxml.html.fragment_fromstring(fragment, create_parent="div").text_content())
    except Exception:  # an unparseable fragment: better its raw text than no record
        return normalise_text(re.sub(r"<[^>]+>", " ", fragment))


def crawl_feed(session: SourceSession) -> None:
    import feedparser

    source: FeedSource = session.source  # type: ignore[assignment]
    url = with_logical_date(session, source.url)
    fetched = session.fetch_page(url, "feed", required=True)
    if fetched is None or fetched.status == 304 or session.is_unchanged(url, fetched):
        if fetched is not None:
            session.remember(url, fetched)
        return
    parsed = feedparser.parse(fetched.body, response_headers={"content-type": fetched.headers.get("content-type", "")})
    if parsed.bozo and not parsed.entries:
        raise FeedFormatError(source.name, url, f"not an RSS/Atom feed: {parsed.get('bozo_exception')}")
    session.report.pages_listed = len(parsed.entries)
    later = 0
    for position, entry in enumerate(parsed.entries, start=1):
        where = f"{url} entry {position}"
        moment = entry.get("published_parsed") or entry.get("updated_parsed")
        if session.until is not None and moment is not None and dt.date(*moment[:3]) > session.until:
            later += 1
            continue
        raw = json.dumps({key: entry.get(key) for key in ("id", "link", "title", "summary")}, default=str,
                         ensure_ascii=False)
        entry_id = entry.get("id") or entry.get("link")
        if not entry_id:
            session.quarantine(where, "missing_field", "entry has neither id nor link", raw, field_name="id")
            continue
        record_id = f"{source.name}:{entry_id}"
        title, summary = _plain(entry.get("title", "")), _plain(entry.get("summary", ""))
        text = {"title": title, "summary": summary,
                "title_summary": "\n".join(part for part in (title, summary) if part)}[source.text]
        if source.label_from == "category":
            terms = [tag.get("term") for tag in entry.get("tags", []) if tag.get("term")]
            value = terms[0] if terms else None
        else:
            value = entry.get("link")
        if value is not None and source.label_regex is not None:
            match = re.search(source.label_regex, value)
            value = (match.group(1) if match.groups() else match.group(0)) if match else None
        if not text:
            session.quarantine(where, "missing_field", f"entry has no {source.text}", raw, record_id=record_id,
                               field_name="text")
        elif not value or not value.strip():
            session.quarantine(where, "missing_field", f"no label from the entry's {source.label_from}", raw,
                               record_id=record_id, field_name="label")
        else:
            session.emit(record_id, text, value.strip())
    session.report.pages_selected = len(parsed.entries) - later
    session.remember(url, fetched)
    log.info("crawl %s: %d feed entries, %d dated after %s left for later", source.name, len(parsed.entries),
             later, session.until)


# ----------------------------------------------------------------------------------------- json_api


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True)) | params
    return urlunsplit(parts._replace(query=urlencode(query)))


def _json_page_records(session: SourceSession, source: JsonApiSource, url: str, body: bytes
                       ) -> tuple[Iterator[tuple[str, Any]], Any]:
    """((where, item) per record, the decoded document or None for JSON lines)."""
    if source.format == "jsonl":
        def lines() -> Iterator[tuple[str, Any]]:
            for number, raw in enumerate(body.split(b"\n"), start=1):
                if not raw.strip():
                    continue
                text = decode_text(raw)
                try:
                    yield f"{url} line {number}", json.loads(text)
                except ValueError as error:
                    session.quarantine(f"{url} line {number}", "invalid_json", f"not valid JSON: {error}", text)
        return lines(), None
    try:
        document = json.loads(decode_text(body))
    except ValueError as error:
        raise FeedFormatError(source.name, url, f"not valid JSON: {error}") from error
    try:
        records = lookup(document, source.records_path)
    except KeyError as error:
        raise FeedFormatError(source.name, url, f"no records at {source.records_path!r} (missing {error})") from error
    if not isinstance(records, list):
        raise FeedFormatError(source.name, url, f"records at {source.records_path or '(top level)'!r} are not a list")
    return ((f"{url} record {number}", item) for number, item in enumerate(records, start=1)), document


def _next_link(source: JsonApiSource, url: str, fetched: Fetched, document: Any) -> str | None:
    link = None
    if document is not None:
        try:
            link = lookup(document, source.next_path)
        except KeyError:
            link = None
    if not link:
        link = httpx.Response(200, headers=fetched.headers).links.get("next", {}).get("url")
    return str(httpx.URL(url).join(link)) if isinstance(link, str) and link else None


def crawl_json_api(session: SourceSession) -> None:
    source: JsonApiSource = session.source  # type: ignore[assignment]
    base = with_logical_date(session, source.url)
    url: str | None = base
    visited: set[str] = set()
    for number in range(source.max_pages):
        if source.pagination == "page":
            url = _with_query(base, **{source.page_param: str(source.first_page + number)},
                              **({source.limit_param: str(source.page_size)} if source.limit_param else {}))
        elif source.pagination == "offset":
            url = _with_query(base, **{source.offset_param: str(number * source.page_size)},
                              **({source.limit_param: str(source.page_size)} if source.limit_param else {}))
        if url is None or url in visited:
            break
        visited.add(url)
        fetched = session.fetch_page(url, f"page {number + 1}", required=number == 0)
        if fetched is None:
            break  # a skipped page leaves the rest of the pagination for the next crawl
        page_state = session.page_states.get(url, {})
        if fetched.status == 304 or session.is_unchanged(url, fetched):
            count, next_url = page_state.get("records", 0), page_state.get("next")
        else:
            items, document = _json_page_records(session, source, url, fetched.body)
            count = 0
            for where, item in items:
                count += 1
                emit_item(session, item, where, source)
            next_url = _next_link(source, url, fetched, document) if source.pagination == "next_link" else None
        session.remember(url, fetched, records=count, next=next_url)
        session.progress.update(number + 1, None)
        if source.pagination == "none":
            break
        if source.pagination == "next_link":
            url = next_url
        elif count < source.page_size:
            break  # a short (or empty) page is the last one
    else:
        log.warning("crawl %s: max_pages=%d reached; later pages are left unread", source.name, source.max_pages)
    session.report.pages_selected = len(visited)


# -------------------------------------------------------------------------------------------- local


def _local_items(session: SourceSession, source: LocalSource, path: Path, root: Path, body: bytes, file_format: str,
                 url: str) -> None:
    if file_format == "text":
        relative = path.relative_to(root).as_posix() if path != root else path.name
        label = path.parent.name if path != root and path.parent != root else None
        text = normalise_text(decode_text(body))
        record_id = f"{source.name}:{relative}"
        raw = json.dumps({"path": relative, "text": text[:10_000]}, ensure_ascii=False)
        if not label:
            session.quarantine(url, "missing_field", "a text file needs a label folder (root/<label>/<file>)", raw,
                               record_id=record_id, field_name="label")
        elif not text:
            session.quarantine(url, "missing_field", "the file has no text", raw, record_id=record_id,
                               field_name="text")
        else:
            session.emit(record_id, text, label)
        return
    if file_format == "csv":
        reader = csv.DictReader(io.StringIO(decode_text(body).removeprefix("\ufeff"), newline=""))
        for number, row in enumerate(reader, start=2):  # line 1 is the header
            emit_item(session, row, f"{url} line {number}", source)
    elif file_format == "jsonl":
        for number, raw in enumerate(body.split(b"\n"), start=1):
            if raw.strip():
                text = decode_text(raw)
                try:
                    item = json.loads(text)
                except ValueError as error:
                    session.quarantine(f"{url} line {number}", "invalid_json", f"not valid JSON: {error}", text)
                    continue
                emit_item(session, item, f"{url} line {number}", source)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(io.BytesIO(body)).to_pylist()
        except (pa.ArrowException, OSError) as error:
            session.quarantine(url, "invalid_parquet", f"cannot read Parquet: {error}", "")
            return
        for number, row in enumerate(rows, start=1):
            emit_item(session, row, f"{url} row {number}", source)


def crawl_local(session: SourceSession) -> None:
    source: LocalSource = session.source  # type: ignore[assignment]
    root = Path(source.path).expanduser()
    if not root.exists():
        raise CrawlError(source.name, source.url, "the path does not exist")
    files = [root] if root.is_file() else sorted(
        path for path in root.glob(source.glob)
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts))
    known = [(path, source.format if source.format != "auto" else FORMAT_BY_SUFFIX.get(path.suffix.lower()))
             for path in files]
    readable = [(path, file_format) for path, file_format in known if file_format is not None]
    if len(readable) < len(known):
        log.info("crawl %s: %d files of unknown format skipped", source.name, len(known) - len(readable))
    session.report.pages_listed, session.report.pages_selected = len(files), len(readable)
    for number, (path, file_format) in enumerate(readable, start=1):
        fetched = session.read_file(path)
        if fetched is None:
            continue
        if fetched.status != 304 and not session.is_unchanged(fetched.url, fetched):
            _local_items(session, source, path, root if root.is_dir() else root.parent, fetched.body, file_format,
                         fetched.url)
        session.remember(fetched.url, fetched)
        session.progress.update(number, len(readable), "files")


# ------------------------------------------------------------------------------------- debian_index


def crawl_debian_index(session: SourceSession) -> None:
    source: DebianIndexSource = session.source  # type: ignore[assignment]
    if source.url is not None:
        url = with_logical_date(session, source.url)
        fetched = session.fetch_page(url, "Packages index", required=True)
    else:
        path = Path(str(source.path)).expanduser()
        if not path.is_file():
            raise CrawlError(source.name, source.location, "the index file does not exist")
        fetched = session.read_file(path)
        url = path.resolve().as_uri()
    if fetched is None or fetched.status == 304 or session.is_unchanged(url, fetched):
        if fetched is not None:
            session.remember(url, fetched)
        return
    text = decode_text(decompress_capped(fetched.body, session.crawl.max_decompressed_bytes, source.name, url))
    stanzas = 0
    for number, stanza in enumerate(iter_control_stanzas(text), start=1):
        stanzas += 1
        where = f"{url} stanza {number}"
        package, version = stanza.get("Package"), stanza.get("Version")
        record_id = f"{source.name}:{package}={version}" if package and version else None
        required = ("Package", "Version", "Section", "Description")
        missing = next((name for name in required if not stanza.get(name)), None)
        if missing is not None:
            session.quarantine(where, "missing_field", f"stanza has no {missing}", json.dumps(stanza)[:10_000],
                               record_id=record_id, field_name=missing)
            continue
        section = stanza["Section"].rsplit("/", 1)[-1]  # "contrib/net" -> "net"
        session.emit(str(record_id), description_text(stanza["Description"], source.text), section)
    session.report.pages_listed = session.report.pages_selected = stanzas
    session.remember(url, fetched)
    log.info("crawl %s: %d stanzas in %s", source.name, stanzas, url)


CRAWLERS: dict[str, Callable[[SourceSession], None]] = {
    "html_site": crawl_html_site,
    "feed": crawl_feed,
    "json_api": crawl_json_api,
    "local": crawl_local,
    "debian_index": crawl_debian_index,
}
