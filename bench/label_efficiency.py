"""Label efficiency: macro-F1 against the number of labelled training rows, per method, on one large fixed test set.

The anchors (docs/benchmarks.md): TF-IDF + logistic regression on the same rows, and a plain fine-tune with
Hugging Face Trainer's defaults (3 epochs, lr 5e-5, linear schedule; batch 32 like freshet's). Against them:

- `freshet`: what a round serves. The labelled rows are split 90/10 by a stable hash into train and validation
  (as clean splits a day); freshet's trainer (tasks.train.fit) with the recipe below trains on the 90% with early
  stopping on the 10%, the lexical baseline is fitted on the same 90%, and the blend weight is chosen on the 10%
  (tasks/models/blend.py), exactly as the evaluate step does. `freshet-transformer` is its transformer alone.
- `freshet-self`: freshet plus one round of self-training on unlabelled pool texts (5x the labelled count):
  the first model pseudo-labels them (tasks/training/pseudo_labels.py: confident, class-balanced, capped
  share), a second trainer learns real + pseudo rows, and the validation split decides which one is kept.

The test set is every corpus row whose stable hash falls in the first `--test-fraction` (default 20%, about
5,600 of the ~28k synopses); the labelled rows of each point are a seeded sample of the rest. Each finished point
(method, rows, seed) is appended to `--results` (JSON lines) with its macro-F1 and CPU seconds; a rerun skips
points already there, so the whole curve can be built in parts. Ends with a table of mean +- sd per method and
rows, the differences against both anchors and the CPU-time ratio against the plain fine-tune.

    python bench/label_efficiency.py                          # 250..2000 x 3 seeds, 4000/8000/all x 1 seed
    python bench/label_efficiency.py --counts 250,500 --seeds 3 --methods tfidf,trainer,freshet
    python bench/label_efficiency.py --text long              # the long descriptions
    python bench/label_efficiency.py --quick --corpus F --model tiny   # smoke test (tests/test_label_efficiency.py)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

METHODS = ("tfidf", "trainer", "freshet", "freshet-self")
ANCHORS = ("tfidf", "trainer")
DEFAULT_COUNTS = "250,500,1000,2000,4000,8000,all"
# The recipe freshet's bench point uses, as the product's defaults set it (tasks/config.py TrainConfig).
RECIPE: dict[str, Any] = {"epochs": 6, "early_stopping_patience": 2, "learning_rate": 1e-4, "warmup_fraction": 0.1,
                          "class_balanced_loss": True}


def stable_fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def split_corpus(rows: Sequence[dict[str, Any]], test_fraction: float) -> tuple[list[dict], list[dict]]:
    """(pool, test): the test set is fixed by the row ids alone, whatever the seed or count."""
    test = [row for row in rows if stable_fraction(f"test:{row['id']}") < test_fraction]
    pool = [row for row in rows if stable_fraction(f"test:{row['id']}") >= test_fraction]
    return pool, test


def labelled_sample(pool: Sequence[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    return list(pool) if count >= len(pool) else random.Random(seed).sample(list(pool), count)


def train_validation(rows: Sequence[dict[str, Any]], seed: int) -> tuple[list[dict], list[dict]]:
    """90/10 by a stable hash, as clean splits a day's rows (at least one validation row)."""
    validation = [row for row in rows if stable_fraction(f"validation:{seed}:{row['id']}") < 0.1] or list(rows[:1])
    chosen = {row["id"] for row in validation}
    return [row for row in rows if row["id"] not in chosen], validation


class Point:
    """One (method, rows, seed) measurement: the labelled rows, the test set and what each method needs."""

    def __init__(self, args: argparse.Namespace, labels: list[str], rows: list[dict], test: list[dict],
                 unlabelled: list[dict], seed: int) -> None:
        self.args, self.labels, self.rows, self.test, self.unlabelled, self.seed = args, labels, rows, test, unlabelled, seed
        self.test_texts = [row["text"] for row in test]
        self.truth = [labels.index(row["label"]) for row in test]

    def macro_f1(self, probabilities: Any) -> float:
        from sklearn.metrics import f1_score

        return float(f1_score(self.truth, probabilities.argmax(axis=1), average="macro"))

    def config(self, **train: Any):
        from tasks.config import PipelineConfig

        return PipelineConfig.model_validate({
            "labels": self.labels, "artifact_root": tempfile.mkdtemp(), "mlflow": {"tracking_uri": "sqlite:///unused.db"},
            "crawl": {"sources": [{"name": "bench", "url": "http://127.0.0.1:1/"}]},
            "train": {"model": self.args.model, "max_length": self.args.max_length, "batch_size": 32, "precision": "fp32",
                      "seed": self.seed, "warm_start": False, "checkpoint_every_steps": 10**9,
                      "log_every_steps": 10**9, "max_validation_rows": 10**9, **train}})


def run_tfidf(point: Point) -> dict[str, float]:
    from tasks.config import BaselineConfig
    from tasks.models.lexical import LexicalModel

    model = LexicalModel.fit([row["text"] for row in point.rows], [row["label"] for row in point.rows], point.labels,
                             BaselineConfig())
    return {"macro_f1": point.macro_f1(model.predict_proba(point.test_texts))}


def run_trainer(point: Point) -> dict[str, float]:
    """Hugging Face Trainer with its defaults (3 epochs, lr 5e-5, linear decay, no warmup), dynamic padding."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tasks.models.build import build_model
    from tasks.models.families import preflight

    config = point.config()
    tokenizer = preflight(config.train, None, warm_start=False).tokenizer
    model = build_model(config.train, point.labels, pad_token_id=tokenizer.pad_token_id)
    dataset = Dataset.from_list([{"text": row["text"], "label": point.labels.index(row["label"])} for row in point.rows])
    dataset = dataset.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=point.args.max_length),
                          batched=True, remove_columns=["text"])
    arguments = TrainingArguments(output_dir=tempfile.mkdtemp(), num_train_epochs=3, learning_rate=5e-5,
                                  lr_scheduler_type="linear", per_device_train_batch_size=32, seed=point.seed,
                                  save_strategy="no", report_to=[], logging_strategy="no", use_cpu=True,
                                  dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer)).train()
    probabilities = predict_probabilities(model.eval(), tokenizer, point.test_texts, point.args.max_length)
    torch.set_grad_enabled(True)
    return {"macro_f1": point.macro_f1(np.asarray(probabilities))}


def predict_probabilities(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    from tasks.models.inference import predict

    return predict(model, tokenizer, texts, max_length=max_length, batch_size=128).probabilities


def freshet_round(point: Point, train: list[dict], validation: list[dict]) -> tuple[Any, Any, dict[str, Any]]:
    """freshet's trainer on `train`, early-stopped on `validation`: (model, tokenizer, trainer metrics)."""
    from tasks.train import fit
    from tasks.training.data import TrainingData
    from tasks.training.distributed import DistributedEnv

    config = point.config(**(RECIPE | point.args.recipe))
    result = fit(config, TrainingData(train, validation, {}), DistributedEnv.from_environment(),
                 Path(tempfile.mkdtemp()) / "checkpoints", None)
    return result.model, result.tokenizer, result.metrics


def served_blend(point: Point, train: list[dict], validation: list[dict], model: Any, tokenizer: Any):
    """The lexical baseline on `train` and the blend weight chosen on `validation`, as evaluate does."""
    from tasks.config import BaselineConfig
    from tasks.models.blend import Blend, choose_weight
    from tasks.models.lexical import LexicalModel

    lexical = LexicalModel.fit([row["text"] for row in train], [row["label"] for row in train], point.labels,
                               BaselineConfig())
    texts = [row["text"] for row in validation]
    truth = [point.labels.index(row["label"]) for row in validation]
    transformer = predict_probabilities(model, tokenizer, texts, point.args.max_length)
    choice = choose_weight(truth, transformer, lexical.predict_proba(texts))
    blend = Blend(choice.weight, lexical, choice.transformer_temperature, choice.lexical_temperature)
    return blend, float(-choice.log_loss)


def run_freshet(point: Point) -> dict[str, float]:
    train, validation = train_validation(point.rows, point.seed)
    model, tokenizer, metrics = freshet_round(point, train, validation)
    blend, _ = served_blend(point, train, validation, model, tokenizer)
    transformer = predict_probabilities(model, tokenizer, point.test_texts, point.args.max_length)
    return {"macro_f1": point.macro_f1(blend.mix(point.test_texts, transformer)),
            "transformer_macro_f1": point.macro_f1(transformer), "blend_weight": blend.weight,
            "epochs": float(metrics["epochs_completed"])}


def run_freshet_self(point: Point) -> dict[str, float]:
    """freshet, then a second round on real + pseudo-labelled rows; the validation log-likelihood picks the round."""
    from tasks.config import PseudoLabelConfig
    from tasks.training.pseudo_labels import select_pseudo_labels

    train, validation = train_validation(point.rows, point.seed)
    model, tokenizer, _ = freshet_round(point, train, validation)
    blend, first_score = served_blend(point, train, validation, model, tokenizer)
    unlabelled = [row["text"] for row in point.unlabelled]
    teacher = blend.mix(unlabelled, predict_probabilities(model, tokenizer, unlabelled, point.args.max_length))
    pseudo = select_pseudo_labels(point.unlabelled, teacher, point.labels, len(train), PseudoLabelConfig())
    second_model, second_tokenizer, _ = freshet_round(point, train + pseudo, validation)
    second_blend, second_score = served_blend(point, train, validation, second_model, second_tokenizer)
    kept = second_score > first_score
    final_model, final_tokenizer, final_blend = ((second_model, second_tokenizer, second_blend) if kept
                                                 else (model, tokenizer, blend))
    transformer = predict_probabilities(final_model, final_tokenizer, point.test_texts, point.args.max_length)
    second_test = (final_blend.mix(point.test_texts, transformer) if kept else second_blend.mix(
        point.test_texts, predict_probabilities(second_model, second_tokenizer, point.test_texts, point.args.max_length)))
    return {"macro_f1": point.macro_f1(final_blend.mix(point.test_texts, transformer)),
            "with_pseudo_macro_f1": point.macro_f1(second_test), "pseudo_rows": float(len(pseudo)),
            "pseudo_kept": float(kept)}


RUNNERS: dict[str, Callable[[Point], dict[str, float]]] = {
    "tfidf": run_tfidf, "trainer": run_trainer, "freshet": run_freshet, "freshet-self": run_freshet_self}


def load_corpus(args: argparse.Namespace, labels: list[str]) -> list[dict[str, Any]]:
    if args.corpus:
        path = Path(args.corpus)
    else:
        from tasks.demo.corpus import build_debian_corpus

        path = Path(os.environ.get("FRESHET_HOME", REPO / ".freshet")) / "bench" / f"corpus-{args.text}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            build_debian_corpus(path, labels, text=args.text)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["label"] in labels]


def done_points(results: Path) -> list[dict[str, Any]]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def point_key(record: dict[str, Any]) -> tuple:
    return (record["text"], record["model"], record["method"], record["rows"], record["seed"], record["recipe"])


def plan(args: argparse.Namespace, pool_size: int) -> list[tuple[int, int]]:
    """(rows, seed) pairs: `--seeds` seeds up to 2,000 rows, `--big-seeds` above."""
    counts = sorted({pool_size if count == "all" else min(int(count), pool_size) for count in args.counts.split(",")})
    return [(count, seed) for count in counts for seed in range(args.seeds if count <= 2000 else args.big_seeds)]


def measure(args: argparse.Namespace) -> Path:
    import torch

    from tasks.config import load_config

    labels = list(load_config(args.config).labels) if not args.labels else args.labels.split(",")
    corpus = load_corpus(args, labels)
    pool, test = split_corpus(corpus, args.test_fraction)
    test = test[: args.test_rows] if args.test_rows else test
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {point_key(record) for record in done_points(results)}
    print(f"corpus {len(corpus)} rows ({args.text}), pool {len(pool)}, fixed test set {len(test)}; results {results}",
          flush=True)
    recipe = json.dumps(RECIPE | args.recipe, sort_keys=True)
    for count, seed in plan(args, len(pool)):
        rows = labelled_sample(pool, count, seed)
        others = [row for row in pool if row["id"] not in {labelled["id"] for labelled in rows}]
        unlabelled = random.Random(seed + 1).sample(others, min(len(others), args.unlabelled_ratio * count))
        point = Point(args, labels, rows, test, unlabelled, seed)
        for method in args.methods.split(","):
            record = {"text": args.text, "model": args.model, "method": method, "rows": count, "seed": seed,
                      "recipe": recipe if method.startswith("freshet") else "", "test_rows": len(test)}
            if point_key(record) in done:
                continue
            cpu, wall = time.process_time(), time.perf_counter()
            outcome = RUNNERS[method](point)
            record |= outcome | {"cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall}
            with results.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{method:>13} rows {count:>6} seed {seed}: macro-F1 {record['macro_f1']:.4f}  "
                  f"cpu {record['cpu_seconds']:.0f} s", flush=True)
    return results


def summary(records: Sequence[dict[str, Any]], text: str, model: str, recipe: str) -> str:
    """Mean +- sd per method and rows; differences and CPU ratio against the anchors, on the seeds both have."""
    def mean_sd(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")

    chosen = [record for record in records if record["text"] == text and record["model"] == model
              and record["recipe"] in ("", recipe)]
    by: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for record in chosen:
        by.setdefault((record["method"], record["rows"]), {})[record["seed"]] = record
    lines = [f"label efficiency ({text}, {model}; recipe {recipe}): macro-F1 mean ± sd over seeds",
             "| rows | method | seeds | macro-F1 | - TF-IDF (points) | - plain fine-tune (points) | CPU s | CPU / fine-tune |",
             "|---:|---|---:|---|---:|---:|---:|---:|"]
    for count in sorted({rows for _, rows in by}):
        for method in METHODS:
            seeds = by.get((method, count))
            if not seeds:
                continue
            cells = [count, method, len(seeds), mean_sd([record["macro_f1"] for record in seeds.values()])]
            for anchor in ANCHORS:
                paired = [seed for seed in seeds if seed in by.get((anchor, count), {})]
                cells.append(f"{100 * statistics.mean(seeds[s]['macro_f1'] - by[(anchor, count)][s]['macro_f1'] for s in paired):+.1f}"
                             if paired and method != anchor else "")
            cpu = statistics.mean(record["cpu_seconds"] for record in seeds.values())
            trainer = by.get(("trainer", count))
            cells += [f"{cpu:.0f}", f"{cpu / statistics.mean(r['cpu_seconds'] for r in trainer.values()):.2f}x"
                      if trainer and method != "trainer" else ""]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="where the labels come from")
    parser.add_argument("--labels", default=None, help="comma-separated labels instead of the config's")
    parser.add_argument("--corpus", default=None, help="JSON-lines corpus (default: the Debian corpus, built once)")
    parser.add_argument("--text", choices=("short", "long"), default="short")
    parser.add_argument("--model", default="minilm", help="minilm, tiny (smoke tests) or a model directory")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--counts", default=DEFAULT_COUNTS, help="labelled training rows per point ('all' = the pool)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per point up to 2,000 rows")
    parser.add_argument("--big-seeds", type=int, default=1, help="seeds per point above 2,000 rows")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--test-rows", type=int, default=None, help="cap the fixed test set (smoke tests)")
    parser.add_argument("--unlabelled-ratio", type=int, default=5, help="unlabelled pool texts per labelled row")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="freshet train setting on top of the recipe (repeatable), e.g. learning_rate=2e-4")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=None, help="JSON-lines results file (appended; finished points skipped)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 small counts, 1 seed, 300 test rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts, args.seeds, args.big_seeds, args.test_rows = "60,120", 1, 1, args.test_rows or 300
        RECIPE.update(epochs=3, early_stopping_patience=1)
    args.recipe = {key: json.loads(value) if value[:1] in "0123456789-[{tfn" else value
                   for key, value in (item.split("=", 1) for item in args.recipe)}
    args.results = args.results or str(Path(os.environ.get("FRESHET_HOME", REPO / ".freshet")) / "bench"
                                       / f"label_efficiency-{args.text}.jsonl")
    results = measure(args)
    print(summary(done_points(results), args.text, args.model, json.dumps(RECIPE | args.recipe, sort_keys=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
