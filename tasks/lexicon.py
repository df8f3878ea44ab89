"""Offline lexicons for synonym augmentation.

`WordNet` reads the Princeton WordNet 3.0 database files as Debian's `wordnet-base` package installs
them (`/usr/share/wordnet`: index.<pos>, data.<pos>, <pos>.exc; format in wndb(5WN)). nltk's reader
would need a `lexnames` file that the package does not ship, and the part we use (lemma -> synsets ->
lemmas, plus WordNet's own morphology rules) is small, so it is read here directly.

Only lowercase alphabetic words outside a stop-word list are looked up: capitalised words and acronyms
in package synopses are mostly names ("Python", "GNU"), and WordNet knows them as snakes and antelopes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import cached_property, lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from tasks.manifest import StepError

PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
# WordNet's detachment rules (morph.c): inflected suffix -> base suffix, tried in order.
SUFFIX_RULES = {
    "noun": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
             ("men", "man"), ("ies", "y")),
    "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adv": (),
}
# Function words: replacing or inserting them changes structure, not wording (the EDA stop list).
STOP_WORDS = frozenset(["a", "about", "above", "after", "again", "against", "ain", "all", "also", "am", "an", "and", "any", "are", "aren", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "cannot", "could", "couldn", "did", "didn", "do", "does", "doesn", "doing", "don", "down", "during", "each", "either", "else", "ever", "few", "for", "from", "further", "get", "had", "hadn", "has", "hasn", "have", "haven", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "however", "i", "if", "in", "into", "is", "isn", "it", "its", "itself", "just", "let", "ll", "may", "me", "might", "mightn", "more", "most", "must", "mustn", "my", "myself", "needn", "no", "nor", "not", "now", "o", "of", "off", "on", "once", "only", "or", "other", "ought", "our", "ours", "ourselves", "out", "over", "own", "re", "s", "same", "shall", "shan", "she", "should", "shouldn", "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "upon", "us", "ve", "very", "via", "was", "wasn", "we", "were", "weren", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "within", "without", "won", "would", "wouldn", "y", "yet", "you", "your", "yours", "yourself", "yourselves"])


class Lexicon(Protocol):
    """Synonyms of a word, sorted (so a seeded choice among them is reproducible)."""

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, object]: ...

    def synonyms(self, word: str) -> tuple[str, ...]: ...


def eligible(word: str) -> bool:
    """Words a lexicon is asked about: lowercase letters only, at least 3 of them, not a stop word."""
    return len(word) >= 3 and word.isascii() and word.isalpha() and word.islower() and word not in STOP_WORDS


class WordNet:
    """WordNet 3.0 database files in `path`; the index is read on first use, synsets on demand."""

    name = "wordnet"
    REQUIRED = tuple(f"{kind}.{pos}" for pos in PARTS_OF_SPEECH for kind in ("index", "data"))

    def __init__(self, path: str | Path, max_senses: int | None = None,
                 setting: str = "augment.wordnet_path") -> None:
        self.path = Path(path)
        # Senses are ordered by frequency; rare senses ("tool" as slang) make the worst substitutes.
        self.max_senses = max_senses
        missing = [file for file in self.REQUIRED if not (self.path / file).is_file()]
        if missing:
            where = (f"{self.path} does not exist" if not self.path.exists()
                     else f"{self.path} lacks {', '.join(missing)}")
            raise StepError(f"WordNet lexicon not found: {where} ({setting}). Install the Debian package "
                            "`wordnet-base` (apt-get install wordnet-base) or point the setting at a WordNet 3.0 "
                            "dict directory; set augment.lexicon=none to turn synonym augmentation off")
        self._synsets: dict[tuple[str, int], tuple[str, ...]] = {}
        self._handles: dict[str, BinaryIO] = {}

    @cached_property
    def digest(self) -> str:
        """Of the database files, so a different WordNet recomputes the step."""
        digest = hashlib.sha256()
        for file in (*self.REQUIRED, *(f"{pos}.exc" for pos in PARTS_OF_SPEECH)):
            if (self.path / file).is_file():
                digest.update(file.encode() + b"\0" + (self.path / file).read_bytes())
        return "sha256:" + digest.hexdigest()

    def describe(self) -> dict[str, object]:
        return {"kind": self.name, "path": str(self.path), "max_senses": self.max_senses, "lemmas": len(self._index),
                "digest": self.digest}

    @cached_property
    def _index(self) -> dict[tuple[str, str], tuple[int, ...]]:
        """(lemma, part of speech) -> synset offsets in data.<pos>, most frequent sense first."""
        index: dict[tuple[str, str], tuple[int, ...]] = {}
        for pos in PARTS_OF_SPEECH:
            for line in _data_lines(self.path / f"index.{pos}"):
                fields = line.split()
                synset_count = int(fields[2])
                index[fields[0], pos] = tuple(int(offset) for offset in fields[-synset_count:])
        return index

    @cached_property
    def _exceptions(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(irregular form, part of speech) -> base forms, e.g. ("geese", "noun") -> ("goose",)."""
        exceptions: dict[tuple[str, str], tuple[str, ...]] = {}
        for pos in PARTS_OF_SPEECH:
            path = self.path / f"{pos}.exc"
            if path.is_file():
                for line in _data_lines(path):
                    inflected, *bases = line.split()
                    exceptions[inflected, pos] = tuple(bases)
        return exceptions

    def base_forms(self, word: str, pos: str) -> list[str]:
        """WordNet's morphy: the word itself, its exception-list bases, then suffix-rule bases in the index."""
        forms = [word, *self._exceptions.get((word, pos), ())]
        for suffix, replacement in SUFFIX_RULES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix):
                forms.append(word[: len(word) - len(suffix)] + replacement)
        seen: dict[str, None] = {}
        for form in forms:
            if (form, pos) in self._index:
                seen.setdefault(form)
        return list(seen)

    def _synset(self, pos: str, offset: int) -> tuple[str, ...]:
        key = (pos, offset)
        if key not in self._synsets:
            handle = self._handles.get(pos)
            if handle is None:
                handle = self._handles[pos] = (self.path / f"data.{pos}").open("rb")
            handle.seek(offset)
            fields = handle.readline().decode("utf-8").split()
            if not fields or int(fields[0]) != offset:
                raise StepError(f"WordNet {self.path / f'data.{pos}'}: no synset at byte offset {offset} "
                                "(index and data files from different versions?)")
            word_count = int(fields[3], 16)
            # Adjectives carry a syntactic marker: "outback(a)", "out_of_reach(p)".
            self._synsets[key] = tuple(fields[4 + 2 * number].split("(")[0].replace("_", " ").lower()
                                       for number in range(word_count))
        return self._synsets[key]

    @lru_cache(maxsize=65536)  # noqa: B019 - one lexicon per step run, bounded
    def synonyms(self, word: str) -> tuple[str, ...]:
        if not eligible(word):
            return ()
        found: set[str] = set()
        bases = {word}
        for pos in PARTS_OF_SPEECH:
            for base in self.base_forms(word, pos):
                bases.add(base)
                for offset in self._index[base, pos][: self.max_senses]:
                    found.update(self._synset(pos, offset))
        return tuple(sorted(found - bases))

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _data_lines(path: Path) -> Iterator[str]:
    """Lines of a WordNet file, without the license header (its lines start with spaces)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line and not line.startswith(" "):
                yield line.rstrip("\n")
