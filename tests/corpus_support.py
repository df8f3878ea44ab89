"""A small labelled corpus for tests that need texts and labels, not the demo's Debian corpus.

Each label has its own indicative words mixed with shared filler, so a tiny randomly initialised model
learns it in seconds; the same seed gives the same rows.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence

# Shared by every label, so the indicative words are a minority of each text.
FILLER_WORDS = (
    "the", "a", "for", "with", "and", "tool", "package", "data", "support", "module",
    "files", "simple", "fast", "library", "program", "system",
)
WORDS_PER_LABEL = 8


def synthetic_corpus(n_rows: int, labels: Sequence[str], seed: int = 0) -> list[dict[str, str]]:
    """A balanced toy corpus: label i gets rows i, i+k, ...; texts mix its own words with filler."""
    generator = random.Random(seed)
    rows = []
    for index in range(n_rows):
        label = labels[index % len(labels)]
        indicative = [f"{label}{generator.randrange(WORDS_PER_LABEL)}" for _ in range(generator.randint(2, 4))]
        filler = generator.choices(FILLER_WORDS, k=generator.randint(3, 6))
        words = indicative + filler
        generator.shuffle(words)
        rows.append({"id": f"syn-{index:06d}", "text": " ".join(words), "label": label})
    return rows


# The demo site the `site` fixture (conftest.py) serves: its first publication day, and the days after it
# (a module overrides the `site_days` fixture for another number).
SITE_START = dt.date(2025, 1, 1)
SITE_DAYS = 3
