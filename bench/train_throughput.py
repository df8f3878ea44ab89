"""Training throughput: freshet's trainer vs the Hugging Face `Trainer`, same model, data, batch
size, precision and number of optimizer steps; interleaved rounds, medians, printed as ratios.

Trainer configurations a user would try: padding to max length, `DataCollatorWithPadding`
(dynamic padding) and length grouping (its best). freshet: length-bucketed batches with dynamic
padding, fused AdamW, CPU dropout masks from numpy's PCG64, the word-embedding gradient zeroed and
clipped on the touched rows only, glibc keeping freed memory for reuse, one process with all cores;
`--compile` adds a torch.compile variant. `--attribution` adds freshet with torch's dropout, freshet
with autograd's dense embedding gradient, and Trainer's best with freshet's memory setting, to show
what each lever is worth. `--frozen-embeddings` adds freshet with the word embeddings frozen: a
different recipe, not the same training, shown for what it would buy.
`--ddp` adds the scaling part: freshet under torchrun with 1 vs 2 processes (threads per rank =
threads / processes, at least 1; global batch = processes x batch), samples/s per variant.

Every measurement runs in a fresh interpreter with OMP_NUM_THREADS set before torch starts: in one
long-lived process the variants run after the first ones were measurably slower (allocator and
thread-pool state carried over), which skewed the ratios.

    python bench/train_throughput.py [--steps 60] [--rounds 5] [--precision fp32|bf16] [--compile] [--ddp] [--attribution]

Any encoder in a local Hugging Face directory (`--model-dir DIR`: both sides train the classifier freshet
builds from it, with its tokenizer); bench/families.py runs this per model family:

    python bench/train_throughput.py --model-dir DIR --no-pad-to-max --rounds 3

On a GPU (never in CI): samples/s vs Trainer and model FLOPs utilisation for a randomly initialised
BERT-base at exactly 128 tokens in bf16 (MFU = 6 x non-embedding parameters + attention, per token,
against the GPU's dense bf16 peak; `synthetic` needs no corpus on the machine):

    python bench/train_throughput.py --model bert-base --fixed-length --max-length 128 --batch-size 64 \
        --steps 100 --rounds 3 --precision bf16 --no-pad-to-max --compile --corpus synthetic
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


def load_rows(corpus: Path, count: int, fixed_words: int | None = None) -> list[dict]:
    """`count` shuffled rows of `corpus` (with `fixed_words`, see `load_rows_from`)."""
    import random

    if str(corpus) == "synthetic":  # no corpus on the machine (a lent GPU box): the demo's toy rows
        from tests.corpus_support import synthetic_corpus

        return load_rows_from(synthetic_corpus(count, LABELS, seed=0), count, fixed_words)
    rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row["label"] in LABELS]
    random.Random(0).shuffle(rows)
    if len(rows) < count:
        raise SystemExit(f"{corpus}: {len(rows)} rows with the bench labels, need {count} (steps x batch x processes)")
    return load_rows_from(rows, count, fixed_words)


def load_rows_from(rows: list[dict], count: int, fixed_words: int | None) -> list[dict]:
    """The first `count` rows; with `fixed_words`, their words re-cut into texts of exactly that many."""
    rows = rows[:count]
    if fixed_words:
        # Every word is at least one token, so each text truncates to exactly max_length tokens.
        words = " ".join(row["text"] for row in rows).split()
        words = (words * (count * fixed_words // len(words) + 1))[: count * fixed_words]
        rows = [dict(row, text=" ".join(words[i * fixed_words:(i + 1) * fixed_words])) for i, row in enumerate(rows)]
    return rows


# --model bert-base: a randomly initialised BERT-base (the GPU MFU configuration).
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
# Dense bf16 peak of the GPUs the MFU figure is meant for (TFLOP/s, no sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def training_flops_per_token(model: str, sequence_length: int) -> float:
    """6 x non-embedding parameters (forward + backward matmuls) + 12 x layers x hidden x sequence (attention)."""
    minilm = {"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536}
    shape = BERT_BASE if model == "bert-base" else minilm
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    per_layer = 4 * hidden * hidden + 2 * hidden * shape["intermediate_size"]
    return 6 * layers * per_layer + 12 * layers * hidden * sequence_length


def train_settings(model_name: str, batch_size: int, precision: str, max_length: int, **overrides) -> dict:
    """freshet's train section for a measurement; Trainer gets the model it builds. `model_name`: minilm,
    bert-base (the tiny BERT at BERT-base size), or a model directory."""
    model = {"minilm": "minilm", "bert-base": "tiny"}.get(model_name, model_name)
    return {"model": model, "tiny": BERT_BASE, "batch_size": batch_size,
            "epochs": 1, "max_length": max_length, "precision": precision, "checkpoint_every_steps": 10_000,
            "warmup_fraction": 0.0, "log_every_steps": 10_000, **overrides}


def hf_trainer_samples_per_second(rows, mode: str, steps: int, batch_size: int, precision: str, max_length: int,
                                  model_name: str = "minilm") -> float:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    from tasks.config import TrainConfig
    from tasks.models.build import build_model, load_tokenizer

    tokenizer = load_tokenizer(Path(model_name) if model_name not in ("minilm", "bert-base") else None)
    settings = TrainConfig.model_validate(train_settings(model_name, batch_size, precision, max_length))
    model = build_model(settings, LABELS, pad_token_id=tokenizer.pad_token_id)
    index = {label: position for position, label in enumerate(LABELS)}
    padding = "max_length" if mode == "pad-to-max" else False
    dataset = Dataset.from_list([{"text": row["text"], "label": index[row["label"]]} for row in rows]).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length, padding=padding),
        batched=True, remove_columns=["text"])
    arguments = {"output_dir": tempfile.mkdtemp(), "per_device_train_batch_size": batch_size, "max_steps": steps,
                     "learning_rate": 5e-5, "save_strategy": "no", "report_to": [], "logging_strategy": "no",
                     "use_cpu": not torch.cuda.is_available(), "bf16": precision == "bf16", "dataloader_num_workers": 0,
                     "disable_tqdm": True}
    if mode == "group-by-length":
        arguments["train_sampling_strategy"] = "group_by_length"  # transformers 5 name of group_by_length
    if torch.cuda.is_available():
        # What a GPU user of Trainer would set (its AdamW is already the fused one): TF32 for any fp32 left.
        arguments["tf32"] = True
    collator = default_data_collator if mode == "pad-to-max" else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=TrainingArguments(**arguments), train_dataset=dataset, data_collator=collator)
    return float(trainer.train().metrics["train_samples_per_second"])


def freshet_fit(rows, steps: int, batch_size: int, precision: str, max_length: int, model_name: str = "minilm",
                **train_overrides) -> dict:
    from tasks.config import PipelineConfig
    from tasks.train import fit
    from tasks.training.data import TrainingData
    from tasks.training.distributed import DistributedEnv

    environment = DistributedEnv.from_environment()
    config = PipelineConfig.model_validate({
        "labels": LABELS, "artifact_root": tempfile.mkdtemp(), "mlflow": {"tracking_uri": "sqlite:///unused.db"},
        "crawl": {"sources": [{"name": "bench", "url": "http://127.0.0.1:1/"}]},
        "train": train_settings(model_name, batch_size, precision, max_length, **train_overrides),
    })
    data = TrainingData(rows[: steps * batch_size * environment.world_size], [], {})
    return fit(config, data, environment, Path(tempfile.mkdtemp()), None).metrics


TRAINER_MODES = {"trainer pad-to-max": "pad-to-max", "trainer dynamic padding": "dynamic",
                 "trainer group_by_length": "group-by-length"}
# --attribution: each of freshet's CPU levers on its own.
TRAINER_WITH_FRESHET_MEMORY = "trainer group_by_length +freed-memory reuse"
FRESHET_TORCH_DROPOUT = "freshet bucketed, torch dropout"
FRESHET_DENSE_EMBEDDING_GRAD = "freshet bucketed, dense embedding grad"
FRESHET_FROZEN_EMBEDDINGS = "freshet, frozen word embeddings (other recipe)"
# Train settings of each freshet variant that is not the default.
FRESHET_OVERRIDES = {"freshet bucketed+compile": {"compile": True}, FRESHET_TORCH_DROPOUT: {"fast_cpu_dropout": False},
                     FRESHET_DENSE_EMBEDDING_GRAD: {"row_sparse_embedding_grad": False},
                     FRESHET_FROZEN_EMBEDDINGS: {"freeze_word_embeddings": True}}
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
               "--precision", args.precision, "--model", args.model, *(["--fixed-length"] if args.fixed_length else []),
               *(["--model-dir", args.model_dir] if args.model_dir else [])]
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

    from tasks.training.runtime import threads_per_rank

    torch.set_num_threads(threads_per_rank())
    variant = args.worker
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rows = load_rows(Path(args.corpus), args.steps * args.batch_size * world_size,
                     args.max_length if args.fixed_length else None)
    one = (args.steps, args.batch_size, args.precision, args.max_length, args.model_dir or args.model)
    if variant == TRAINER_WITH_FRESHET_MEMORY:
        from tasks.training.runtime import keep_freed_memory

        keep_freed_memory()
        value = hf_trainer_samples_per_second(rows, "group-by-length", *one)
    elif variant in TRAINER_MODES:
        value = hf_trainer_samples_per_second(rows, TRAINER_MODES[variant], *one)
    else:
        value = float(freshet_fit(rows, *one, **FRESHET_OVERRIDES.get(variant, {}))["samples_per_second"])
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"samples_per_second": value}), flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="JSON-lines corpus, or `synthetic` for the demo's toy rows",
                        default=str(Path(os.environ.get("FRESHET_HOME", REPO / ".freshet")) / "demo" / "corpus.jsonl"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="both sides run at this precision")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant of freshet's loop")
    parser.add_argument("--no-pad-to-max", action="store_true", help="skip the (slow, ~10x) pad-to-max Trainer variant")
    parser.add_argument("--ddp", action="store_true", help="add freshet under torchrun with 1 and 2 processes")
    parser.add_argument("--attribution", action="store_true",
                        help="add freshet with torch's dropout, freshet with the dense embedding gradient, and Trainer's "
                             "best with freshet's memory setting")
    parser.add_argument("--frozen-embeddings", action="store_true",
                        help="add freshet with frozen word embeddings: a different recipe (fewer weights trained)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per measurement, split among DDP ranks (default: all cores); on a loaded machine 1 "
                             "avoids the spin-wait collapse of oversubscribed OpenMP threads")
    parser.add_argument("--model", choices=("minilm", "bert-base"), default="minilm",
                        help="bert-base: randomly initialised, for the GPU MFU figure")
    parser.add_argument("--model-dir", default=None,
                        help="a local Hugging Face model directory instead of --model (any supported family)")
    parser.add_argument("--fixed-length", action="store_true",
                        help="every sequence exactly --max-length tokens (for MFU at a known sequence length)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the accelerator's dense bf16 peak for MFU (default: looked up from the GPU name)")
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
        names += [FRESHET_TORCH_DROPOUT, FRESHET_DENSE_EMBEDDING_GRAD, TRAINER_WITH_FRESHET_MEMORY]
    if args.frozen_embeddings:
        names.append(FRESHET_FROZEN_EMBEDDINGS)
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
    model = args.model_dir or ("MiniLM-L6" if args.model == "minilm" else "BERT-base (random init)")
    print(f"\n{model}, {args.precision} on both sides, batch {args.batch_size} per process, {args.steps} optimizer "
          f"steps, {args.threads or len(os.sched_getaffinity(0))} threads, medians of {args.rounds} interleaved rounds")
    width = max(len(name) for name in medians)
    for name, value in medians.items():
        spread = f"{min(measured[name]):.1f}-{max(measured[name]):.1f}"
        # The ratio within each round as well: both sides of a round saw the same machine load.
        paired = statistics.median(mine / theirs
                                   for mine, theirs in zip(measured[name], measured[best_name], strict=True))
        print(f"  {name:<{width}} {value:7.1f} samples/s  (range {spread:>13})   x{value / best_trainer:.2f} vs {best_name}"
              f"  (median of per-round ratios x{paired:.2f})")
    if args.attribution:
        print(f"  freshet bucketed vs {TRAINER_WITH_FRESHET_MEMORY}: "
              f"x{medians['freshet bucketed'] / medians[TRAINER_WITH_FRESHET_MEMORY]:.2f}")
    if args.ddp:
        print(f"  DDP scaling x2 / x1: {medians['freshet torchrun x2'] / medians['freshet torchrun x1']:.2f}")
    if args.fixed_length:
        print_model_flops_utilisation(args, medians)
    return 0


def print_model_flops_utilisation(args, medians: dict[str, float]) -> None:
    """Achieved training FLOP/s per variant; as MFU where the accelerator's peak is known."""
    import torch

    peak = args.peak_tflops
    if peak is None and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)
    flops_per_sample = training_flops_per_token(args.model, args.max_length) * args.max_length
    print(f"  {args.model} at {args.max_length} tokens: {flops_per_sample / 1e9:.1f} GFLOP per training sample")
    for name, value in medians.items():
        achieved = value * flops_per_sample / 1e12
        utilisation = f", MFU {achieved / peak:.1%} of {peak:.0f}" if peak else " (peak unknown: --peak-tflops)"
        print(f"  {name}: {achieved:.2f} TFLOP/s{utilisation}")


if __name__ == "__main__":
    raise SystemExit(main())
