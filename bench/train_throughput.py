"""Training throughput: freshet's trainer vs the Hugging Face `Trainer`, same model, data, batch
size, precision and number of optimizer steps; interleaved rounds, medians, printed as ratios.

Trainer configurations a user would try: padding to max length, `DataCollatorWithPadding`
(dynamic padding) and length grouping (its best). freshet: length-bucketed batches with dynamic
padding, fused AdamW, CPU dropout masks from numpy's PCG64, glibc keeping freed memory for reuse,
one process with all cores; `--compile` adds a torch.compile variant. `--attribution` adds freshet
with torch's dropout, and Trainer's best with freshet's memory setting, to show what each lever is worth.
`--ddp` adds the scaling part: freshet under torchrun with 1 vs 2 processes (threads per rank =
threads / processes, at least 1; global batch = processes x batch), samples/s per variant.

Every measurement runs in a fresh interpreter with OMP_NUM_THREADS set before torch starts: in one
long-lived process the variants run after the first ones were measurably slower (allocator and
thread-pool state carried over), which skewed the ratios.

    python bench/train_throughput.py [--steps 60] [--rounds 5] [--precision fp32|bf16] [--compile] [--ddp] [--attribution]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LABELS = ["libs", "libdevel", "python", "doc", "perl", "devel", "utils", "haskell", "net", "rust"]


def load_rows(corpus: Path, count: int) -> list[dict]:
    import random

    rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row["label"] in LABELS]
    random.Random(0).shuffle(rows)
    if len(rows) < count:
        raise SystemExit(f"{corpus}: {len(rows)} rows with the bench labels, need {count} (steps x batch x processes)")
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


def freshet_fit(rows, steps: int, batch_size: int, precision: str, max_length: int, compile: bool = False,
                fast_cpu_dropout: bool = True) -> dict:
    from tasks.config import PipelineConfig
    from tasks.train import DistributedEnv, TrainingData, fit

    environment = DistributedEnv.from_environment()
    config = PipelineConfig.model_validate({
        "labels": LABELS, "artifact_root": tempfile.mkdtemp(), "mlflow": {"tracking_uri": "sqlite:///unused.db"},
        "crawl": {"sources": [{"name": "bench", "url": "http://127.0.0.1:1/"}]},
        "train": {"model": "minilm", "batch_size": batch_size, "epochs": 1, "max_length": max_length,
                  "precision": precision, "checkpoint_every_steps": 10_000, "warmup_fraction": 0.0,
                  "compile": compile, "fast_cpu_dropout": fast_cpu_dropout, "log_every_steps": 10_000},
    })
    data = TrainingData(rows[: steps * batch_size * environment.world_size], [], {})
    return fit(config, data, environment, Path(tempfile.mkdtemp()), None).metrics


def freshet_samples_per_second(rows, steps: int, batch_size: int, precision: str, max_length: int,
                               compile: bool = False, fast_cpu_dropout: bool = True) -> float:
    metrics = freshet_fit(rows, steps, batch_size, precision, max_length, compile, fast_cpu_dropout)
    return float(metrics["samples_per_second"])


TRAINER_MODES = {"trainer pad-to-max": "pad-to-max", "trainer dynamic padding": "dynamic",
                 "trainer group_by_length": "group-by-length"}
# --attribution: each of freshet's CPU levers on its own.
TRAINER_WITH_FRESHET_MEMORY = "trainer group_by_length +freed-memory reuse"
FRESHET_TORCH_DROPOUT = "freshet bucketed, torch dropout"
TORCHRUN_PROCESSES = {"freshet torchrun x1": 1, "freshet torchrun x2": 2}


def measure_in_fresh_process(args, variant: str) -> float:
    """Run one variant in its own interpreter (under torchrun for the DDP ones); its samples/s."""
    total_threads = args.threads or len(os.sched_getaffinity(0))
    processes = TORCHRUN_PROCESSES.get(variant, 1)
    threads = max(1, total_threads // processes)
    launcher = [sys.executable]
    if variant in TORCHRUN_PROCESSES:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                     "--local-ranks-filter=0"]
    command = [*launcher, str(Path(__file__).resolve()), "--worker", variant, "--corpus", args.corpus,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--precision", args.precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FRESHET_THREADS_PER_RANK": str(threads),
           "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith('{"samples_per_second"')]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed ({result.returncode}): {result.stderr[-2000:]}")
    return float(json.loads(lines[-1])["samples_per_second"])


def worker(args) -> int:
    """One measurement (one rank under torchrun): train, and rank 0 prints samples/s as a JSON line."""
    import torch

    from tasks.modeling import threads_per_rank

    torch.set_num_threads(threads_per_rank())
    variant = args.worker
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rows = load_rows(Path(args.corpus), args.steps * args.batch_size * world_size)
    one = (args.steps, args.batch_size, args.precision, args.max_length)
    if variant == TRAINER_WITH_FRESHET_MEMORY:
        from tasks.modeling import keep_freed_memory

        keep_freed_memory()
        value = hf_trainer_samples_per_second(rows, "group-by-length", *one)
    elif variant in TRAINER_MODES:
        value = hf_trainer_samples_per_second(rows, TRAINER_MODES[variant], *one)
    else:
        value = freshet_samples_per_second(rows, *one, compile=variant.endswith("+compile"),
                                           fast_cpu_dropout=variant != FRESHET_TORCH_DROPOUT)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"samples_per_second": value}), flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(Path(os.environ.get("FRESHET_HOME", REPO / ".freshet")) / "demo" / "corpus.jsonl"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="both sides run at this precision")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant of freshet's loop")
    parser.add_argument("--no-pad-to-max", action="store_true", help="skip the (slow, ~10x) pad-to-max Trainer variant")
    parser.add_argument("--ddp", action="store_true", help="add freshet under torchrun with 1 and 2 processes")
    parser.add_argument("--attribution", action="store_true",
                        help="add freshet with torch's dropout and Trainer's best with freshet's memory setting")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per measurement, split among DDP ranks (default: all cores); on a loaded machine 1 "
                             "avoids the spin-wait collapse of oversubscribed OpenMP threads")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    load_rows(Path(args.corpus), args.steps * args.batch_size * (2 if args.ddp else 1))  # fail early if too few
    names = [name for name in TRAINER_MODES if not (args.no_pad_to_max and name == "trainer pad-to-max")]
    names.append("freshet bucketed")
    if args.compile:
        names.append("freshet bucketed+compile")
    if args.attribution:
        names += [FRESHET_TORCH_DROPOUT, TRAINER_WITH_FRESHET_MEMORY]
    if args.ddp:
        names += list(TORCHRUN_PROCESSES)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(args.rounds):
        # Interleaved, order rotated each round: load drift on a shared machine hits every variant alike.
        for offset in range(len(names)):
            name = names[(round_number + offset) % len(names)]
            measured[name].append(measure_in_fresh_process(args, name))
        print(f"round {round_number + 1}: " + ", ".join(f"{name} {values[-1]:.1f}" for name, values in measured.items()),
              flush=True)
    medians = {name: statistics.median(values) for name, values in measured.items()}
    best_name = max((name for name in medians if name in TRAINER_MODES), key=medians.get)
    best_trainer = medians[best_name]
    print(f"\nMiniLM-L6, {args.precision} on both sides, batch {args.batch_size} per process, {args.steps} optimizer "
          f"steps, {args.threads or len(os.sched_getaffinity(0))} threads, medians of {args.rounds} interleaved rounds")
    width = max(len(name) for name in medians)
    for name, value in medians.items():
        spread = f"{min(measured[name]):.1f}-{max(measured[name]):.1f}"
        print(f"  {name:<{width}} {value:7.1f} samples/s  (range {spread:>13})   x{value / best_trainer:.2f} vs {best_name}")
    if args.attribution:
        print(f"  freshet bucketed vs {TRAINER_WITH_FRESHET_MEMORY}: "
              f"x{medians['freshet bucketed'] / medians[TRAINER_WITH_FRESHET_MEMORY]:.2f}")
    if args.ddp:
        print(f"  DDP scaling x2 / x1: {medians['freshet torchrun x2'] / medians['freshet torchrun x1']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
