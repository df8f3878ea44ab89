"""Which scored texts to label: the day's budget, split between uncertainty and a random control.

1. Eligible: texts in order of uncertainty, minus each one within the near-duplicate threshold (Jaccard of
   clean's shingles, found through its MinHash LSH index) of a labelled text, a text already queued, or a
   more uncertain candidate of the same day: one question is asked once.
2. Control: `round(budget * control_fraction)` eligible texts drawn at random (seeded), so the benefit of the
   rest can be measured against them in production.
3. Uncertainty: the margin between the two most probable classes (small = the champion hesitates; "breaking
   ties", the strongest simple strategy in Schröder et al. 2022). The `pool_factor` x (picks) most uncertain
   are clustered by k-means over their TF-IDF vectors (diversity); the predicted labels then take turns (class
   balance), each taking its most uncertain text from a cluster no pick has come from yet; once every label
   has run out of new clusters, the turns go on by uncertainty alone.

Every pick says why it was picked (`reason`), with its margin, rank, cluster and predicted label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.config import CleanConfig
from tasks.text import SimilarityIndex, Sketches

UNCERTAINTY = "uncertainty"
CONTROL = "control"


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (1.0 for a single class)."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top_two = -np.sort(-probabilities, axis=1)[:, :2]
    return (top_two[:, 0] - top_two[:, 1]).astype(np.float64)


@dataclass(frozen=True)
class Candidate:
    id: str
    text: str
    label: str  # the champion's prediction
    confidence: float
    margin: float


@dataclass(frozen=True)
class Pick:
    candidate: Candidate
    selected_by: str  # uncertainty or control
    margin_rank: int  # 1 = the most uncertain of the day's eligible texts
    cluster: int | None
    reason: str


@dataclass(frozen=True)
class Selection:
    picks: list[Pick]
    candidates: int
    eligible: int
    near_duplicates: int  # of a labelled or queued text, or of a more uncertain candidate


def eligible_candidates(candidates: Sequence[Candidate], known_texts: Sequence[str], threshold: float,
                        clean: CleanConfig) -> tuple[list[Candidate], int]:
    """The candidates by increasing margin, without near-duplicates of known texts or of each other."""
    ordered = sorted(candidates, key=lambda item: (item.margin, item.id))
    index = SimilarityIndex(threshold, clean)
    known = Sketches.of(list(known_texts), clean)
    for number, (shingles, minhash) in enumerate(zip(known.shingles, known.minhashes)):
        index.add(("known", number), shingles, minhash)
    sketches = Sketches.of([item.text for item in ordered], clean)
    kept: list[Candidate] = []
    for position, candidate in enumerate(ordered):
        if index.matches(sketches.shingles[position], sketches.minhashes[position]):
            continue
        index.add(("candidate", position), sketches.shingles[position], sketches.minhashes[position])
        kept.append(candidate)
    return kept, len(ordered) - len(kept)


def clusters(texts: Sequence[str], count: int, seed: int) -> list[int]:
    """k-means cluster of each text over sublinear word TF-IDF (cheap, and independent of the model)."""
    if count <= 1 or len(texts) <= 1:
        return [0] * len(texts)
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectors = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit_transform(texts)
    except ValueError:  # no word at all (punctuation only): one cluster
        return [0] * len(texts)
    count = min(count, vectors.shape[0])
    model = KMeans(n_clusters=count, n_init=3, random_state=seed).fit(vectors)
    return [int(label) for label in model.labels_]


def select(candidates: Sequence[Candidate], *, budget: int, control_fraction: float, pool_factor: float,
           seed: int, known_texts: Sequence[str], near_duplicate_threshold: float, clean: CleanConfig,
           label_order: Sequence[str] = ()) -> Selection:
    eligible, near_duplicates = eligible_candidates(candidates, known_texts, near_duplicate_threshold, clean)
    rank = {item.id: number for number, item in enumerate(eligible, start=1)}
    budget = min(budget, len(eligible))
    control_count = min(round(budget * control_fraction), budget)
    rng = np.random.default_rng(seed)
    control_positions = sorted(rng.choice(len(eligible), size=control_count, replace=False).tolist()) \
        if control_count else []
    control = [eligible[position] for position in control_positions]
    picks = [Pick(item, CONTROL, rank[item.id], None,
                  f"random control ({control_count} of {budget}): margin {item.margin:.3f}, rank {rank[item.id]} "
                  f"of {len(eligible)}, predicted {item.label!r}") for item in control]

    wanted = budget - control_count
    taken = {item.id for item in control}
    pool = [item for item in eligible if item.id not in taken][:max(wanted, math.ceil(wanted * pool_factor))]
    cluster_of = dict(zip((item.id for item in pool), clusters([item.text for item in pool], wanted, seed)))
    order = list(dict.fromkeys([*label_order, *sorted({item.label for item in pool})]))
    queues = {label: [item for item in pool if item.label == label] for label in order}
    used_clusters: set[int] = set()
    chosen: list[Pick] = []
    for needs_new_cluster in (True, False):
        while len(chosen) < wanted:
            progressed = False
            for label in order:
                if len(chosen) >= wanted:
                    break
                queue = queues[label]
                found = next((item for item in queue if not needs_new_cluster
                              or cluster_of[item.id] not in used_clusters), None)
                if found is None:
                    continue
                queue.remove(found)
                used_clusters.add(cluster_of[found.id])
                progressed = True
                chosen.append(Pick(found, UNCERTAINTY, rank[found.id], cluster_of[found.id],
                                   f"uncertain: margin {found.margin:.3f} (rank {rank[found.id]} of {len(eligible)}), "
                                   f"predicted {found.label!r} (class-balanced turn), cluster {cluster_of[found.id]}"
                                   + ("" if needs_new_cluster else " (no new cluster left)")))
            if not progressed:
                break
    return Selection(chosen + picks, len(candidates), len(eligible), near_duplicates)
