"""Model quality vs the TF-IDF + logistic-regression anchor, on the same stable hash split.

Two modes:

- default: the registry's champion from `make demo` (or any config) against the anchor, both scored
  on the test split of the demo corpus.
- `--train`: the issue's budgeted comparison. The anchor and our trainer (`tasks.train.fit`, from
  MiniLM-L6, one process) learn the same train split of a corpus (by default every package of the
  config's sections: `--text short` synopses or `--text long` descriptions), then both, and their
  probability average (weight chosen on the validation split), are scored on the test split.
  The trainer's wall time is printed next to the budget; nothing is asserted.

    python bench/quality.py [--config configs/demo.yaml] [--corpus .freshet/demo/corpus.jsonl]
    python bench/quality.py --train --text short --epochs 2 --precision bf16 [--budget-s 600]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fit_anchor(train, test):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    anchor = LogisticRegression(max_iter=2000, C=10.0)
    anchor.fit(vectorizer.fit_transform([row["text"] for row in train]), [row["label"] for row in train])
    return anchor, vectorizer, time.perf_counter() - started


def anchor_probabilities(anchor, vectorizer, rows, labels):
    """Probabilities in `labels` order (sklearn orders classes alphabetically)."""
    import numpy as np

    probabilities = anchor.predict_proba(vectorizer.transform([row["text"] for row in rows]))
    order = [list(anchor.classes_).index(label) for label in labels]
    return np.asarray(probabilities)[:, order]


def split_rows(rows, config):
    from tasks.records import split_of

    source = config.crawl.sources[0].name
    splits = {"train": [], "validation": [], "test": []}
    for row in rows:
        splits[split_of(f"{source}:{row['id']}", config.split)].append(row)
    return splits


def champion_mode(args, config) -> int:
    from sklearn.metrics import f1_score

    from tasks import model_registry
    from tasks.models.build import load_classifier
    from tasks.models.inference import predict

    rows = [json.loads(line) for line in Path(args.corpus).read_text().splitlines() if line.strip()]
    splits = split_rows([row for row in rows if row["label"] in config.labels], config)
    train, test = splits["train"], splits["test"]
    anchor, vectorizer, anchor_seconds = fit_anchor(train, test)
    anchor_f1 = f1_score([row["label"] for row in test], anchor.predict(vectorizer.transform([row["text"] for row in test])),
                         average="macro")
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    if champion is None:
        print("no champion in the registry yet: run `make demo` first")
        return 1
    model, tokenizer = load_classifier(model_registry.download_model_dir(config, str(champion.version)))
    result = predict(model, tokenizer, [row["text"] for row in test], max_length=config.train.max_length)
    labels = [model.config.id2label[index] for index in result.label_ids]
    model_f1 = f1_score([row["label"] for row in test], labels, average="macro")
    print(f"test rows {len(test)} (train rows available to the anchor: {len(train)})")
    print(f"TF-IDF + logistic regression macro-F1 {anchor_f1:.4f}  (fit {anchor_seconds:.1f} s)")
    print(f"freshet champion v{champion.version}    macro-F1 {model_f1:.4f}")
    print(f"difference (freshet - anchor)       {model_f1 - anchor_f1:+.4f}")
    return 0


def train_mode(args, config) -> int:
    import numpy as np
    import torch
    from sklearn.metrics import f1_score

    from tasks.demo.corpus import build_debian_corpus
    from tasks.models.inference import predict
    from tasks.train import fit
    from tasks.training.data import TrainingData
    from tasks.training.distributed import DistributedEnv

    labels = list(config.labels)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(args.corpus) if args.corpus_given else Path(scratch) / "corpus.jsonl"
        if not args.corpus_given:
            build_debian_corpus(corpus, labels, max_rows=args.max_rows, text=args.text)
        rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
        splits = split_rows([row for row in rows if row["label"] in labels], config)
        train, validation, test = splits["train"], splits["validation"], splits["test"]
        truth = [row["label"] for row in test]
        print(f"corpus {len(rows)} rows ({args.text}): train {len(train)}, validation {len(validation)}, test {len(test)}")

        settings = config.train.model_copy(update={
            "model": "minilm", "epochs": args.epochs, "learning_rate": args.learning_rate,
            "precision": args.precision, "max_length": args.max_length, "batch_size": args.batch_size,
            "max_train_rows": None, "early_stopping_patience": max(1, math.ceil(args.epochs)), "checkpoint_every_steps": 10**9,
            "warm_start": False, "freeze_word_embeddings": args.freeze_word_embeddings})
        run_config = config.model_copy(update={"train": settings})
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        cpu_started, started = time.process_time(), time.perf_counter()
        result = fit(run_config, TrainingData(train, validation[: settings.max_validation_rows], {}),
                     DistributedEnv.from_environment(), Path(scratch) / "checkpoints", None)
        train_seconds, train_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        model_test = predict(result.model, result.tokenizer, [row["text"] for row in test],
                             max_length=settings.max_length).probabilities
        model_validation = predict(result.model, result.tokenizer, [row["text"] for row in validation],
                                   max_length=settings.max_length).probabilities
        model_f1 = f1_score(truth, [labels[i] for i in model_test.argmax(1)], average="macro")

        # The anchor after the trainer: the trainer's wall time (against the budget) is measured first.
        anchor, vectorizer, anchor_seconds = fit_anchor(train, test)
        anchor_test = anchor_probabilities(anchor, vectorizer, test, labels)
        anchor_validation = anchor_probabilities(anchor, vectorizer, validation, labels)
        anchor_f1 = f1_score(truth, [labels[i] for i in anchor_test.argmax(1)], average="macro")

        validation_truth = [row["label"] for row in validation]
        weights = np.linspace(0, 1, 11)
        scores = [f1_score(validation_truth, [labels[i] for i in (w * model_validation + (1 - w) * anchor_validation).argmax(1)],
                           average="macro") for w in weights]
        weight = float(weights[int(np.argmax(scores))])
        blend_f1 = f1_score(truth, [labels[i] for i in (weight * model_test + (1 - weight) * anchor_test).argmax(1)],
                            average="macro")

    budget = f" (budget {args.budget_s:.0f} s: {'within' if train_seconds <= args.budget_s else 'OVER'})"
    print(f"TF-IDF + logistic regression      macro-F1 {anchor_f1:.4f}  (fit {anchor_seconds:.1f} s)")
    frozen = ", word embeddings frozen" if args.freeze_word_embeddings else ""
    print(f"freshet trainer, MiniLM-L6        macro-F1 {model_f1:.4f}  ({args.epochs} epochs{frozen}, "
          f"{args.precision}, "
          f"lr {args.learning_rate}, max_length {args.max_length}: {train_seconds:.0f} s wall, "
          f"{train_cpu / 60:.1f} CPU-min{budget}; {result.metrics.get('samples_per_second', 0):.0f} samples/s)")
    print(f"average of both (weight {weight:.1f} on freshet, from validation) macro-F1 {blend_f1:.4f}")
    print(f"ratios: freshet/anchor {model_f1 / anchor_f1:.4f}, blend/anchor {blend_f1 / anchor_f1:.4f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("FRESHET_HOME", REPO / ".freshet"))
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--corpus", default=None, help="JSON-lines corpus (default: the demo's, or built with --train)")
    parser.add_argument("--train", action="store_true", help="budgeted fine-tune from MiniLM vs the anchor")
    parser.add_argument("--text", choices=("short", "long"), default="short")
    parser.add_argument("--max-rows", type=int, default=None, help="stratified sample of the built corpus")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--freeze-word-embeddings", action="store_true", help="train.freeze_word_embeddings: true")
    args = parser.parse_args()
    os.environ.setdefault("FRESHET_HOME", str(home))
    args.corpus_given = args.corpus is not None
    if not args.train and args.corpus is None:
        args.corpus = str(home / "demo" / "corpus.jsonl")

    from tasks.config import load_config

    config = load_config(args.config)
    return train_mode(args, config) if args.train else champion_mode(args, config)


if __name__ == "__main__":
    raise SystemExit(main())
