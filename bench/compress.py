"""Compression vs the PyTorch fp32 anchor: size, CPU latency and macro-F1 per variant.

Variants: int8-dynamic (torch), onnx-fp32, onnx-int8 (onnxruntime dynamic) and pruned (global
magnitude). Size: bytes on disk vs the fp32 safetensors. Latency: each variant timed in its own
block (batch 1 over the sample texts, batch 32), blocks interleaved over several rounds, medians.
Quality: macro-F1 on the demo corpus test split (same stable hash split as training).

    python bench/compress.py [--model-dir DIR] [--config configs/demo.yaml] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("FRESHET_HOME", REPO / ".freshet"))
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--corpus", default=str(home / "demo" / "corpus.jsonl"))
    parser.add_argument("--model-dir", default=None, help="a saved HF classifier (default: the registry champion)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing blocks per variant")
    parser.add_argument("--latency-rows", type=int, default=32, help="texts timed at batch 1 per block")
    parser.add_argument("--prune-amount", type=float, default=0.3)
    args = parser.parse_args()
    os.environ.setdefault("FRESHET_HOME", str(home))

    from sklearn.metrics import f1_score

    from tasks.compress import _safetensors_size, _saved_size
    from tasks.config import load_config
    from tasks.data import split_of
    from tasks.modeling import (OnnxClassifier, export_onnx, interleaved_latency, load_classifier, predict,
                                prune_magnitude, quantize_int8, quantize_onnx_int8, threads_per_rank)

    config = load_config(args.config)
    if args.model_dir:
        model_dir, source = Path(args.model_dir), args.model_dir
    else:
        from tasks import registry

        champion = registry.version_by_alias(config, registry.CHAMPION)
        if champion is None:
            print("no champion in the registry yet: run `make demo` first, or pass --model-dir")
            return 1
        model_dir, source = registry.download_model_dir(config, str(champion.version)), f"champion v{champion.version}"
    rows = [json.loads(line) for line in Path(args.corpus).read_text().splitlines() if line.strip()]
    test = [row for row in rows if row["label"] in config.labels
            and split_of(f"{config.crawl.sources[0].name}:{row['id']}", config.split) == "test"]
    texts, truth = [row["text"] for row in test], [row["label"] for row in test]

    fp32, tokenizer = load_classifier(model_dir)
    fp32_size = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    scratch = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    started = time.perf_counter()
    onnx_fp32 = export_onnx(fp32, tokenizer, scratch / "model.onnx")
    onnx_int8 = quantize_onnx_int8(onnx_fp32, scratch / "model.int8.onnx")
    pruned, sparsity = prune_magnitude(load_classifier(model_dir)[0], args.prune_amount)
    models = {"fp32": fp32, "int8-dynamic": quantize_int8(load_classifier(model_dir)[0]),
              "onnx-fp32": OnnxClassifier(onnx_fp32, fp32.config), "onnx-int8": OnnxClassifier(onnx_int8, fp32.config),
              f"pruned-{args.prune_amount:g}": pruned}
    sizes = {"fp32": fp32_size, "int8-dynamic": _saved_size(models["int8-dynamic"]),
             "onnx-fp32": onnx_fp32.stat().st_size, "onnx-int8": onnx_int8.stat().st_size,
             f"pruned-{args.prune_amount:g}": _safetensors_size(pruned)}
    build_seconds = time.perf_counter() - started

    quality = {}
    for name, model in models.items():
        result = predict(model, tokenizer, texts, max_length=config.train.max_length)
        quality[name] = f1_score(truth, [fp32.config.id2label[int(index)] for index in result.label_ids],
                                 labels=sorted(set(truth)), average="macro")
    latency = interleaved_latency(models, tokenizer, texts[: args.latency_rows], max_length=config.train.max_length,
                                  rounds=args.rounds)

    print(f"model {source} ({model_dir}); test rows {len(test)}; threads {threads_per_rank()}; "
          f"{args.rounds} interleaved rounds, medians; variants built in {build_seconds:.1f} s")
    print(f"fp32 anchor: {fp32_size / 1e6:.1f} MB safetensors, batch-1 p50 {latency['fp32']['latency_ms_batch1_p50']:.2f} ms, "
          f"batch-32 p50 {latency['fp32']['latency_ms_batch32_p50']:.1f} ms, macro-F1 {quality['fp32']:.4f}")
    print(f"{'variant':<14} {'size ratio':>10} {'lat b1':>8} {'lat b32':>8} {'macro-F1':>9} {'delta':>8}")
    for name in models:
        print(f"{name:<14} {sizes[name] / fp32_size:>10.3f} "
              f"{latency[name]['latency_ms_batch1_p50'] / latency['fp32']['latency_ms_batch1_p50']:>8.2f} "
              f"{latency[name]['latency_ms_batch32_p50'] / latency['fp32']['latency_ms_batch32_p50']:>8.2f} "
              f"{quality[name]:>9.4f} {quality[name] - quality['fp32']:>+8.4f}")
    print(f"(pruned: {sparsity:.1%} of Linear weights zero, stored dense; int8-dynamic size = its packed torch state dict)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
