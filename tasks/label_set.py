"""The run's label set: `labels`, and with `validate.new_labels: extend` every label the accepted data brought since.

A label that first appears on day N joins the set from that day on, after the configured ones, in the order
of the snapshot that first had it (alphabetical within one snapshot), so every step of a run, and every later
run, lays the classifier's rows out the same way. Derived from the accepted snapshots themselves (the clean
manifest lists them), so no step has to carry it and a rerun computes the same set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tasks.config import PipelineConfig
from tasks.manifest import Manifest
from tasks.records import CleanFacts
from tasks.store import ArtifactStore


def snapshot_labels(store: ArtifactStore, uri: str) -> set[str]:
    """The distinct labels of one snapshot (its label column only)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(store.local_path(uri), columns=["label"]).column("label")
    return {str(label) for label in pc.unique(column).to_pylist() if label is not None}


def extend_labels(configured: Sequence[str], seen: Iterable[Iterable[str]]) -> list[str]:
    """`configured`, then each new label in the order of the first group (snapshot) that has it."""
    labels = list(configured)
    for group in seen:
        labels.extend(sorted(set(group) - set(labels)))
    return labels


def run_labels(config: PipelineConfig, clean: Manifest, store: ArtifactStore) -> list[str]:
    """The label set of the run whose clean manifest is `clean`: earlier snapshots, oldest first, then its own."""
    if config.validate_.new_labels != "extend":
        return list(config.labels)
    uris = [snapshot.uri for snapshot in CleanFacts.of(clean).prior_snapshots] + [clean.output("dataset").uri]
    return extend_labels(config.labels, (snapshot_labels(store, uri) for uri in uris))
