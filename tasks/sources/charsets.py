"""Text from bytes without mojibake: a byte-order mark, a configured encoding, a declared charset (HTTP
Content-Type, XML declaration, HTML <meta>), UTF-8, or a detection with a confidence bound; else
`UndecodableTextError`, whose message is the reason the file, row or page is quarantined.
"""

from __future__ import annotations

import codecs
import re

CHARSET_PATTERN = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


class UndecodableTextError(ValueError):
    """Bytes whose charset cannot be known reliably (or that are not valid in the configured one); the message is
    the reason a quarantine records."""


# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
XML_DECLARATION = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9_.:-]+)["']""")
# What browsers do (WHATWG Encoding): these labels mean windows-1252, which only adds printable characters
# (curly quotes, the euro sign, the ellipsis) where Latin-1 has C1 control codes no text uses.
WINDOWS_1252_LABELS = frozenset({"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "us-ascii", "ascii"})
# charset-normalizer's mess ratio (0: clean text) above which a detected reading is noise, and the margin
# within which two readings are equally plausible; on short texts several single-byte charsets often tie.
MAX_DETECTION_CHAOS = 0.1
DETECTION_TIE_MARGIN = 0.05


def declared_charset(content_type: str | None) -> str | None:
    """The `charset=` of a Content-Type header, if any."""
    if not content_type or "charset=" not in content_type.lower():
        return None
    return content_type.lower().split("charset=", 1)[1].split(";", 1)[0].strip().strip('"\'') or None


def markup_charset(body: bytes) -> str | None:
    """The charset an XML declaration or an HTML <meta> declares in the first 4 KiB, if any."""
    match = XML_DECLARATION.match(body[:4096]) or CHARSET_PATTERN.search(body[:4096])
    return match.group(1).decode("ascii", "replace") if match else None


def _decodes(body: bytes, encoding: str) -> bool:
    try:
        body.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        return False
    return True


def detected_encoding(body: bytes) -> str:
    """The charset charset-normalizer finds, where the finding is reliable: its best reading has little noise
    (mess ratio <= MAX_DETECTION_CHAOS) and every reading about as clean says the same text. Where clean
    readings disagree and one of them is windows-1252 (Western European text: é, è, ü, €), that one wins, as
    browsers decide; any other disagreement raises UndecodableTextError naming the readings."""
    from charset_normalizer import from_bytes

    matches = [match for match in from_bytes(body) if match.chaos <= MAX_DETECTION_CHAOS]
    if not matches:
        raise UndecodableTextError("not valid UTF-8 and no reliable charset: no charset reads these bytes as text")
    cleanest = min(match.chaos for match in matches)
    plausible = [match for match in matches if match.chaos <= cleanest + DETECTION_TIE_MARGIN]
    readings = {str(match) for match in plausible}
    if len(readings) == 1:
        return plausible[0].encoding
    if _decodes(body, "cp1252") and body.decode("cp1252") in readings:
        return "cp1252"
    excerpts = "; ".join(f"{match.encoding} reads {_excerpt(str(match))!r}" for match in plausible[:3])
    raise UndecodableTextError(f"not valid UTF-8 and no reliable charset: equally plausible readings differ "
                               f"({excerpts}); set the source's encoding")


def _excerpt(text: str) -> str:
    """The first non-ASCII character in context, where readings differ."""
    position = next((index for index, character in enumerate(text) if ord(character) > 127), 0)
    return text[max(0, position - 12):position + 12]


def text_encoding(body: bytes, declared: str | None = None, configured: str = "auto") -> str:
    """The codec for `body`: a byte-order mark; else the configured encoding (a source's `encoding`, not "auto");
    else a declared charset (HTTP header, XML declaration, HTML <meta>) that decodes it; else UTF-8; else a
    reliable detection (`detected_encoding`), or UndecodableTextError."""
    for mark, codec in BYTE_ORDER_MARKS:
        if body.startswith(mark):
            return codec
    if configured != "auto":
        return configured
    for charset in (declared, markup_charset(body)):
        if charset:
            charset = "cp1252" if charset.lower() in WINDOWS_1252_LABELS and _decodes(body, "cp1252") else charset
            if _decodes(body, charset):
                return charset
    if _decodes(body, "utf-8"):
        return "utf-8"
    return detected_encoding(body)


def decode_text(body: bytes, content_type: str | None = None, encoding: str = "auto") -> str:
    """Text from bytes by `text_encoding` (a byte-order mark is dropped); UndecodableTextError, never mojibake,
    where the charset cannot be known."""
    codec = text_encoding(body, declared_charset(content_type), encoding)
    try:
        return body.decode(codec)
    except LookupError as error:
        raise UndecodableTextError(f"unknown encoding {codec!r}") from error
    except UnicodeDecodeError as error:
        raise UndecodableTextError(f"not valid {codec} (the source's encoding setting): {error}") from error
