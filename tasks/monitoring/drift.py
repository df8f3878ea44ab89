"""Drift measures shared by validation (labels and lengths of a labelled batch) and the monitor
(predicted labels, confidence, text length and vocabulary of production texts).

PSI (population stability index) of two histograms over the same bins: sum((a - e) * ln(a / e)) over
the bins' shares; 0 for identical distributions, ~0.1 a moderate shift, >= 0.25 a large one. Numeric
values are binned at the reference's quantiles (ties merged), so each bin holds about the same share
of the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

# Stands in for an empty bin in PSI (ln(0) is undefined); small against any real bin share.
PSI_EPSILON = 1e-4
WORD = re.compile(r"\w+", re.UNICODE)


def psi(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (empty bins get PSI_EPSILON)."""
    expected = np.maximum(expected_counts / max(expected_counts.sum(), 1), PSI_EPSILON)
    actual = np.maximum(actual_counts / max(actual_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def label_psi(reference: Sequence[str], batch: Sequence[str]) -> float:
    categories = sorted(set(reference) | set(batch))
    index = {label: position for position, label in enumerate(categories)}

    def histogram(labels: Sequence[str]) -> np.ndarray:
        return np.bincount([index[label] for label in labels], minlength=len(categories)).astype(float)

    return psi(histogram(reference), histogram(batch))


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (ties merged)."""
    return np.unique(np.quantile(np.asarray(reference, dtype=float), np.linspace(0, 1, bins + 1)[1:-1]))


def binned_psi(reference: np.ndarray, batch: np.ndarray, bins: int) -> float:
    """PSI of a numeric value; bin edges are the reference's quantiles (ties merged), fixed for the batch."""
    edges = quantile_edges(reference, bins)

    def histogram(values: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, np.asarray(values, dtype=float), side="right"),
                           minlength=len(edges) + 1).astype(float)

    return psi(histogram(reference), histogram(batch))


def length_psi(reference: np.ndarray, batch: np.ndarray, bins: int) -> float:
    """PSI of text lengths; bin edges are the reference's quantiles (ties merged), fixed for the batch."""
    return binned_psi(reference, batch, bins)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores)."""
    return WORD.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> set[str]:
    return {word for text in texts for word in words(text)}


def oov_rate(texts: Iterable[str], known: set[str]) -> float | None:
    """Share of word tokens not in `known` (None when there are no words)."""
    total = unknown = 0
    for text in texts:
        for word in words(text):
            total += 1
            unknown += word not in known
    return unknown / total if total else None


def unk_rate(tokenizer, texts: Sequence[str], max_length: int) -> float | None:
    """Share of the tokenizer's tokens that are its unknown token; None for a tokenizer without one
    (byte-level BPE never needs it)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or []) - {unk}
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    tokens = [token for ids in encoded for token in ids if token not in special]
    return sum(token == unk for token in tokens) / len(tokens) if tokens else None
