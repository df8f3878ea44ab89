"""What clean does to one text, shared by every step and module that must treat a text as clean does:
normalisation (markup, Unicode form, control and invisible characters, whitespace, case), PII scrubbing, and the
shingles and MinHash sketches that find near-duplicates (clean's dedup and leakage guard, the labelling queue's
near-duplicate filter, the prediction log's scrubbing)."""

from __future__ import annotations

import html
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.config import CleanConfig

NORMALISATION_RULES = ("markup_stripped", "unicode_changed", "control_chars_removed", "whitespace_collapsed",
                       "lowercased")
PII_RULES = ("pii_email", "pii_phone", "pii_ipv4", "pii_ipv6")
# LSH only proposes candidates; it runs below the decision threshold so that pairs at the threshold
# are rarely missed (the exact Jaccard check then rejects the extra candidates).
LSH_CANDIDATE_MARGIN = 0.15
MINHASH_SEED = 1

# Only real HTML element names count as tags, so `<maintainer@debian.org>` or `vector<T>` survive.
INLINE_TAGS = frozenset(["a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn", "em", "font", "i", "ins", "kbd", "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr"])
BLOCK_TAGS = frozenset(["address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details", "div", "dl", "dt", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header", "hr", "html", "img", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "title", "tr", "ul"])
TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)\b[^<>]*/?>")
SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# Invisible format characters that survive NFKC and split or glue words unseen.
INVISIBLE = frozenset("\u00ad\u200b\u2060\ufeff")


def strip_markup(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1).lower()
        if name in INLINE_TAGS:
            return ""
        # A block boundary separates words ("a<br>b" is two words).
        return " " if name in BLOCK_TAGS else match.group(0)

    text = COMMENT.sub(" ", SCRIPT_OR_STYLE.sub(" ", text))
    return html.unescape(TAG.sub(replace, text))


def remove_control_characters(text: str) -> str:
    # Line breaks and tabs are whitespace, left for the collapse; other C0/C1 controls go.
    return "".join(char for char in text
                   if char in "\t\n\r" or (unicodedata.category(char) != "Cc" and char not in INVISIBLE))


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Normalised:
    text: str
    changed_by: frozenset[str]  # the normalisation rules that changed this text


def normalise(text: str, config: CleanConfig) -> Normalised:
    """Apply the normalisation rules in order, noting which ones changed the text."""
    stages = [
        ("markup_stripped", strip_markup if config.strip_markup else None),
        ("unicode_changed", lambda value: unicodedata.normalize(config.unicode_form, value)),
        ("control_chars_removed", remove_control_characters),
        ("whitespace_collapsed", collapse_whitespace),
        ("lowercased", str.lower if config.lowercase else None),
    ]
    changed: set[str] = set()
    for rule, transform in stages:
        if transform is None:
            continue
        result = transform(text)
        if result != text:
            changed.add(rule)
        text = result
    return Normalised(text, frozenset(changed))


# ------------------------------------------------------------------------------------ PII scrubbing

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Candidates, confirmed by `ipaddress` (IPv6) or a digit count (phones), so that times, versions and
# dates survive.
IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?<![.:])(?![\w:])"
                            r"|(?<![\w:.])[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*::(?![\w:])")
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\w|\.\d)")
PHONE_CANDIDATE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)")
PHONE_DIGITS = (9, 15)  # fewer digits: dates, versions; more: not an E.164 number


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return any(char.isdigit() for char in candidate)


def _is_phone(candidate: str) -> bool:
    return PHONE_DIGITS[0] <= sum(char.isdigit() for char in candidate) <= PHONE_DIGITS[1]


PII_PATTERNS: tuple[tuple[str, re.Pattern[str], str, Callable[[str], bool] | None], ...] = (
    ("pii_email", EMAIL, "<EMAIL>", None),  # first: an address's domain could look like anything below
    ("pii_ipv6", IPV6_CANDIDATE, "<IPV6>", _is_ipv6),
    ("pii_ipv4", IPV4, "<IPV4>", None),
    ("pii_phone", PHONE_CANDIDATE, "<PHONE>", _is_phone),
)


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mail addresses, IP addresses and phone numbers by placeholders; count each kind."""
    counts = dict.fromkeys(PII_RULES, 0)
    for rule, pattern, placeholder, confirm in PII_PATTERNS:
        def replace(match: re.Match[str], rule: str = rule, placeholder: str = placeholder,
                    confirm: Callable[[str], bool] | None = confirm) -> str:
            if confirm is not None and not confirm(match.group(0)):
                return match.group(0)
            counts[rule] += 1
            return placeholder

        text = pattern.sub(replace, text)
    return text, counts


def prepare(text: str, config: CleanConfig) -> tuple[Normalised, dict[str, int]]:
    """Normalise, then scrub PII when configured (the dedup and split decisions see the scrubbed text)."""
    normalised = normalise(text, config)
    if not config.scrub_pii:
        return normalised, {}
    scrubbed, counts = scrub_pii(normalised.text)
    return Normalised(scrubbed, normalised.changed_by), counts


# ---------------------------------------------------------------------------------- near-duplicates


def shingles(text: str, kind: str) -> frozenset[str]:
    """Character 5-shingles or word 3-shingles of the casefolded text (a short text is one shingle)."""
    text = text.casefold()
    if kind == "word3":
        words = text.split()
        return frozenset(" ".join(words[i:i + 3]) for i in range(max(len(words) - 2, 1)))
    return frozenset(text[i:i + 5] for i in range(max(len(text) - 4, 1)))


def jaccard(left: frozenset[str], right: frozenset[str]) -> float:
    return len(left & right) / len(left | right) if left or right else 1.0


class SimilarityIndex:
    """Keys whose texts are at least `threshold` similar (Jaccard of shingle sets) to a query text."""

    def __init__(self, threshold: float, config: CleanConfig) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.config = config
        self.lsh = MinHashLSH(threshold=max(threshold - LSH_CANDIDATE_MARGIN, 0.05), num_perm=config.num_perm)
        self.shingles: dict[Any, frozenset[str]] = {}

    def add(self, key: Any, shingle_set: frozenset[str], minhash: Any) -> None:
        self.shingles[key] = shingle_set
        self.lsh.insert(key, minhash, check_duplication=False)

    def matches(self, shingle_set: frozenset[str], minhash: Any) -> list[Any]:
        return [key for key in self.lsh.query(minhash) if jaccard(shingle_set, self.shingles[key]) >= self.threshold]


def minhashes(shingle_sets: Sequence[frozenset[str]], config: CleanConfig) -> list[Any]:
    from datasketch import MinHash

    return MinHash.bulk([[item.encode("utf-8") for item in shingle_set] for shingle_set in shingle_sets],
                        num_perm=config.num_perm, seed=MINHASH_SEED)


@dataclass
class Sketches:
    """Shingle sets and MinHashes of a list of texts, computed once per run."""

    shingles: list[frozenset[str]]
    minhashes: list[Any]

    @classmethod
    def of(cls, texts: Sequence[str], config: CleanConfig) -> Sketches:
        sets = [shingles(text, config.shingles) for text in texts]
        return cls(sets, minhashes(sets, config) if sets else [])
