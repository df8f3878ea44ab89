"""Data-plane throughput: validate and clean on a large batch (rows/s), printed, not asserted.

The batch (100k rows by default) is derived from the demo corpus (the machine's Debian package
synopses for the labels of configs/demo.yaml): the real rows first, then rows recombining the first
half of one synopsis with the second half of another of the same section, so texts stay realistic in
length and vocabulary but are mostly distinct. A realistic share of faults is injected (markup,
too-short texts, duplicate ids and texts, unknown labels, binary garbage) so every code path works.
Each step runs twice: its core (GX validation + quarantine / normalise + dedup + near-dup + leakage)
and the whole step `run` (Parquet I/O, report, MLflow logging on a fresh SQLite store).

    nice -n 5 .venv/bin/python bench/data_plane.py [--rows 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Share of rows given each fault (of the generated batch).
FAULTS = {"markup": 0.005, "too_short": 0.003, "duplicate_id": 0.002, "duplicate_text": 0.01,
          "unknown_label": 0.002, "binary": 0.001}


def corpus_rows(labels: list[str]) -> list[dict[str, str]]:
    from tasks.demo.corpus import CorpusError, parse_debian_packages, read_apt_packages
    from tests.corpus_support import synthetic_corpus

    try:
        rows = [row for row in parse_debian_packages(read_apt_packages()) if row["label"] in set(labels)]
        print(f"source: apt-cache dumpavail, {len(rows)} synopses in {len(labels)} sections")
        return rows
    except CorpusError as error:  # not a Debian machine: the synthetic demo corpus still exercises the code
        print(f"source: synthetic corpus ({error})")
        return synthetic_corpus(20_000, labels)


def make_batch(rows: list[dict[str, str]], size: int, seed: int) -> list[dict[str, str | None]]:
    from tasks.records import content_hash

    generator = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row["text"])
    labels = sorted(by_label)
    weights = [len(by_label[label]) for label in labels]
    texts: list[tuple[str, str]] = [(row["text"], row["label"]) for row in rows[:size]]
    while len(texts) < size:
        label = generator.choices(labels, weights)[0]
        first, second = generator.choice(by_label[label]).split(), generator.choice(by_label[label]).split()
        texts.append((" ".join(first[: max(1, len(first) // 2)] + second[len(second) // 2:]), label))
    generator.shuffle(texts)
    batch: list[dict[str, str | None]] = []
    for number, (text, label) in enumerate(texts):
        record_id = f"bench:{number:07d}"
        fault = generator.random()
        for name, share in FAULTS.items():
            if fault < share:
                break
            fault -= share
        else:
            name = None
        if name == "markup":
            text = f"<p>{text.replace(' ', ' <b>', 1)}</b></p>"
        elif name == "too_short":
            text = text[:2]
        elif name == "duplicate_id" and batch:
            record_id = batch[generator.randrange(len(batch))]["id"]
        elif name == "duplicate_text" and batch:
            earlier = batch[generator.randrange(len(batch))]
            text, label = earlier["text"], earlier["label"]
        elif name == "unknown_label":
            label = "games"
        elif name == "binary":
            text = "PK\x03\x04\x00\x00" + "\ufffd" * 8 + text[:4]
        batch.append({"id": record_id, "text": text, "label": label, "source": "bench",
                      "fetched_at": "2026-11-25T00:00:00Z", "content_hash": content_hash(text)})
    return batch


def timed(label: str, rows: int, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"{label:<42} {rows:>8} rows {seconds:8.2f} s {rows / seconds:>10,.0f} rows/s")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="freshet-bench-data-plane-"))
    os.environ["FRESHET_HOME"] = str(home)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import numpy as np
    import pandas as pd

    from tasks import clean, validate
    from tasks.config import load_config
    from tasks.contract import StepContext, execute
    from tasks.records import RECORD_SCHEMA, read_rows, write_parquet
    from tasks.store import ArtifactStore
    from tasks.tracking import configure
    from tasks.validation import expectations

    config = load_config(args.config)
    store = ArtifactStore(config.artifact_root)
    batch = make_batch(corpus_rows(list(config.labels)), args.rows, args.seed)
    print(f"batch: {len(batch)} rows, mean {np.mean([len(row['text']) for row in batch]):.0f} characters; "
          f"cores available: {len(os.sched_getaffinity(0))}")

    def crawl_body(ctx: StepContext) -> None:
        write_parquet(batch, ctx.out_dir / "records.parquet", schema=RECORD_SCHEMA)
        ctx.add_output("records", "records.parquet", "dataset", rows=len(batch))

    crawl = execute("crawl", crawl_body, config, {}, run_id="bench", store=store)
    configure(config)  # creates the MLflow database once, outside the timings (a one-time ~5-10 s)

    frame = pd.DataFrame(batch)
    frame[expectations.ROW_NUMBER] = np.arange(len(frame))
    frame[expectations.PRINTABLE_RATIO] = [expectations.printable_ratio(text) for text in frame["text"]]
    expectations.run_expectations(frame.head(100), config)  # warm-up: GX's import and first context cost seconds
    timed("validate core (GX suite, 9 expectations)", len(batch), expectations.run_expectations, frame, config)
    manifest = timed("validate step (+ quarantine, I/O, MLflow)", len(batch), validate.run, config,
                     {"crawl": crawl}, run_id="bench", store=store)
    valid = read_rows(store.local_path(manifest.output("valid").uri))
    print(f"  valid {manifest.metrics['rows_valid']}, quarantined {manifest.metrics['rows_quarantined']}")

    history = clean.History({}, set(), [])
    result = timed("clean core (normalise, dedup, near-dup, leak)", len(valid), clean.clean_rows, valid, config,
                   history)
    print("  " + ", ".join(f"{rule} {count}" for rule, count in result.counts.items() if count))
    manifest = timed("clean step (+ I/O, MLflow)", len(valid), clean.run, config, {"validate": manifest},
                     run_id="bench", store=store)
    print(f"  dataset {manifest.metrics['rows_out']} rows; artifacts and MLflow store in {home}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
