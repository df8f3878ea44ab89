"""`html_site`: sitemaps (and sitemap indexes, entries dated after the logical date left for later)
plus link following within allowed hosts and path regexes, up to `max_depth` hops and `max_pages`
requests; text by trafilatura (falling back to a CSS selector) or by the selector alone, label by a
selector (element text or attribute) or a regex on the URL.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
from collections import deque
from typing import Any

import httpx

from tasks.config import (
    HtmlSiteSource,
    LabelRule,
)
from tasks.sources.charsets import decode_text
from tasks.sources.errors import FeedFormatError, RobotsDisallowedError
from tasks.sources.fetch import Fetched
from tasks.sources.formats import decompress_capped, normalise_text, xml_root
from tasks.sources.session import SourceSession

log = logging.getLogger("freshet.crawl")

MAX_SITEMAP_NESTING = 3
MAX_LINKS_PER_PAGE = 1000  # kept in the page state so a 304 page's links are still followed


def parse_sitemap(body: bytes, url: str, source: str) -> tuple[str, list[tuple[str, str | None]]]:
    """("index" | "urlset", [(absolute loc, lastmod)]) of a sitemap or sitemap index."""
    root = xml_root(body, source, url)
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
            # As of the last committed crawl (not this run's checkpoint), so a resumed crawl queues pages
            # in the same order as the attempt it resumes.
            known = self.session.previous_pages.get(url)
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
        fetched = session.fetch_page(url, "sitemap", listing=True)
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
            session.emit(record_id, text, label, url=url)
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


