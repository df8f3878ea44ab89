"""`debian_index`: a Debian `Packages` index, plain, .gz or .xz, over HTTP or from a file; decompressed
in bounded chunks and refused once it inflates past `crawl.max_decompressed_bytes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tasks.config import (
    DebianIndexSource,
)
from tasks.sources.charsets import decode_text
from tasks.sources.errors import CrawlError
from tasks.sources.formats import decompress_capped, with_logical_date
from tasks.sources.session import SourceSession

log = logging.getLogger("freshet.crawl")

TextMode = Literal["short", "long"]


def iter_control_stanzas(control_text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of a Debian control file as {field: value}; continuation lines keep their newline."""
    stanza: dict[str, str] = {}
    field_name: str | None = None
    for line in control_text.splitlines():
        if not line.strip():
            # Policy allows whitespace-only lines as paragraph separators.
            if stanza:
                yield stanza
            stanza, field_name = {}, None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t":
            if field_name is not None:
                stanza[field_name] += "\n" + line
        else:
            field_name, _, value = line.partition(":")
            field_name = field_name.strip()
            stanza[field_name] = value.strip()
    if stanza:
        yield stanza


def description_text(description: str, text: TextMode) -> str:
    """The synopsis, or for `long` the synopsis plus the extended description as plain lines."""
    synopsis, *continuation = description.split("\n")
    if text == "short" or not continuation:
        return synopsis.strip()
    lines = [synopsis.strip()]
    for line in continuation:
        # One leading space marks a continuation; " ." is an empty line. Deeper indentation is
        # verbatim (preformatted) text in Debian policy, so only the marker space is removed.
        body = line[1:] if line[:1] in " \t" else line
        lines.append("" if body.strip() == "." else body.rstrip())
    return "\n".join(lines)


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
        session.emit(str(record_id), description_text(stanza["Description"], source.text), section, url=where)
    session.report.pages_listed = session.report.pages_selected = stanzas
    session.remember(url, fetched)
    log.info("crawl %s: %d stanzas in %s", source.name, stanzas, url)


