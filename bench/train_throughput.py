"""Training throughput: freshet's trainer vs the Hugging Face `Trainer`, same model, data, batch
size, precision and number of optimizer steps; interleaved rounds, medians, printed as ratios.

Trainer configurations a user would try: padding to max length, `DataCollatorWithPadding`
(dynamic padding) and length grouping (its best). freshet: length-bucketed batches with dynamic
padding, one process with all cores.

    python bench/train_throughput.py [--steps 20] [--rounds 3] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = ["libs", "libdevel", "python", "doc", "perl", "devel", "utils", "haskell", "net", "rust"]


def load_rows(corpus: Path, count: int) -> list[dict]:
    import random

    rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row["label"] in LABELS]
    random.Random(0).shuffle(rows)
    return rows[:count]


def hf_trainer_samples_per_second(rows, mode: str, steps: int, batch_size: int, precision: str, max_length: int) -> float:
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, default_data_collator)

    from tasks.modeling import pretrained_minilm_path

    path = str(pretrained_minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))
    index = {label: position for position, label in enumerate(LABELS)}
    padding = "max_length" if mode == "pad-to-max" else False
    dataset = Dataset.from_list([{"text": row["text"], "label": index[row["label"]]} for row in rows]).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length, padding=padding),
        batched=True, remove_columns=["text"])
    arguments = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, max_steps=steps,
                     learning_rate=5e-5, save_strategy="no", report_to=[], logging_strategy="no",
                     use_cpu=True, bf16=precision == "bf16", dataloader_num_workers=0, disable_tqdm=True)
    if mode == "group-by-length":
        arguments["train_sampling_strategy"] = "group_by_length"  # transformers 5 name of group_by_length
    collator = default_data_collator if mode == "pad-to-max" else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=TrainingArguments(**arguments), train_dataset=dataset, data_collator=collator)
    return float(trainer.train().metrics["train_samples_per_second"])


def freshet_samples_per_second(rows, steps: int, batch_size: int, precision: str, max_length: int) -> float:
    from tasks.config import PipelineConfig
    from tasks.train import DistributedEnv, TrainingData, fit

    config = PipelineConfig.model_validate({
        "labels": LABELS, "artifact_root": tempfile.mkdtemp(), "mlflow": {"tracking_uri": "sqlite:///unused.db"},
        "crawl": {"sources": [{"name": "bench", "url": "http://127.0.0.1:1/"}]},
        "train": {"model": "minilm", "batch_size": batch_size, "epochs": 1, "max_length": max_length,
                  "precision": precision, "checkpoint_every_steps": 10_000, "warmup_fraction": 0.0},
    })
    data = TrainingData(rows[: steps * batch_size], [], {})
    result = fit(config, data, DistributedEnv.from_environment(), Path(tempfile.mkdtemp()), None)
    return float(result.metrics["samples_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(Path(os.environ.get("FRESHET_HOME", REPO / ".freshet")) / "demo" / "corpus.jsonl"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    rows = load_rows(Path(args.corpus), args.steps * args.batch_size)
    variants = {
        "trainer pad-to-max": lambda: hf_trainer_samples_per_second(rows, "pad-to-max", args.steps, args.batch_size, args.precision, args.max_length),
        "trainer dynamic padding": lambda: hf_trainer_samples_per_second(rows, "dynamic", args.steps, args.batch_size, args.precision, args.max_length),
        "trainer group_by_length": lambda: hf_trainer_samples_per_second(rows, "group-by-length", args.steps, args.batch_size, args.precision, args.max_length),
        "freshet bucketed": lambda: freshet_samples_per_second(rows, args.steps, args.batch_size, args.precision, args.max_length),
    }
    measured: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(args.rounds):  # interleaved: every variant once per round
        for name, measure in variants.items():
            measured[name].append(measure())
        print(f"round {round_number + 1}: " + ", ".join(f"{name} {values[-1]:.1f}" for name, values in measured.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in measured.items()}
    best_trainer = max(value for name, value in medians.items() if name.startswith("trainer"))
    print(f"\nMiniLM-L6, {args.precision}, batch {args.batch_size}, {args.steps} optimizer steps, medians of {args.rounds} rounds")
    for name, value in medians.items():
        print(f"  {name:<26} {value:7.1f} samples/s   x{value / best_trainer:.2f} vs Trainer's best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
