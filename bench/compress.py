"""Compression vs the PyTorch fp32 anchor: size, CPU latency and macro-F1 per variant.

Variants: int8-dynamic (torch), onnx-fp32, onnx-int8 (onnxruntime dynamic), pruned (global
magnitude), and distilled / distilled-onnx-int8 (a shallower student trained on the teacher's logits
over the corpus train split, as the compress step does; settings from the config's `compress`
section). Size: bytes on disk vs the fp32 safetensors. Latency: each variant timed in its own
block (batch 1 over the sample texts, batch 32), blocks interleaved over several rounds, medians.
Quality: macro-F1 on the demo corpus test split (same stable hash split as training).
The last line applies the compress step's selection policy and checks the issue's goal for the
chosen variant (>= 8x faster at batch 1, <= 0.2x size, <= 0.5 macro-F1 points lost).
With no champion and no --model-dir, `--fine-tune-rows N` fine-tunes MiniLM on N train rows first
(cached under --work).

    python bench/compress.py [--model-dir DIR | --fine-tune-rows 6000] [--config configs/demo.yaml] [--rounds 5]
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
    parser.add_argument("--fine-tune-rows", type=int, default=0, help="no champion: fine-tune MiniLM on N train rows")
    parser.add_argument("--distill-rows", type=int, default=None, help="default: compress.distill_max_rows")
    parser.add_argument("--distill-layers", type=int, default=None, help="default: compress.distill_layers")
    parser.add_argument("--distill-epochs", type=int, default=None, help="default: compress.distill_epochs")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "freshet-bench-compress"))
    args = parser.parse_args()
    os.environ.setdefault("FRESHET_HOME", str(home))

    import random

    from sklearn.metrics import f1_score

    from tasks.compress import SERVABLE, _safetensors_size, _saved_size, select_serving_variant
    from tasks.config import load_config
    from tasks.models.build import build_model, load_classifier, load_tokenizer, quantize_int8
    from tasks.models.compression import (
        OnnxClassifier,
        build_student,
        distill,
        export_onnx,
        prune_magnitude,
        quantize_onnx_int8,
        teacher_logits,
    )
    from tasks.models.inference import interleaved_latency, predict
    from tasks.records import split_of
    from tasks.training.runtime import threads_per_rank

    config = load_config(args.config)
    settings = config.compress
    rows = [json.loads(line) for line in Path(args.corpus).read_text().splitlines() if line.strip()]
    rows = [dict(row, split=split_of(f"{config.crawl.sources[0].name}:{row['id']}", config.split))
            for row in rows if row["label"] in config.labels]
    test = [row for row in rows if row["split"] == "test"]
    train_rows = [row for row in rows if row["split"] == "train"]
    random.Random(0).shuffle(train_rows)
    texts, truth = [row["text"] for row in test], [row["label"] for row in test]
    label_index = {label: position for position, label in enumerate(config.labels)}
    work = Path(args.work)
    if args.model_dir:
        model_dir, source = Path(args.model_dir), args.model_dir
    else:
        from tasks import model_registry

        champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
        if champion is not None:
            model_dir = model_registry.download_model_dir(config, str(champion.version))
            source = f"champion v{champion.version}"
        elif args.fine_tune_rows:
            model_dir = work / f"minilm-finetuned-{args.fine_tune_rows}"
            source = f"MiniLM fine-tuned on {args.fine_tune_rows} train rows"
            if not (model_dir / "config.json").exists():
                started = time.perf_counter()
                sample = train_rows[: args.fine_tune_rows]
                teacher = build_model(config.train, config.labels)
                tokenizer = load_tokenizer()
                stats = distill(teacher, tokenizer, [row["text"] for row in sample],
                                [label_index[row["label"]] for row in sample], None,
                                max_length=config.train.max_length, epochs=max(1, round(config.train.epochs)),
                                batch_size=config.train.batch_size, learning_rate=config.train.learning_rate)
                teacher.save_pretrained(model_dir)
                tokenizer.save_pretrained(model_dir)
                print(f"fine-tuned MiniLM in {time.perf_counter() - started:.0f} s: {stats}", flush=True)
        else:
            print("no champion in the registry yet: run `make demo` first, pass --model-dir, or --fine-tune-rows N")
            return 1

    fp32, tokenizer = load_classifier(model_dir)
    fp32_size = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    scratch = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    started = time.perf_counter()
    onnx_fp32 = export_onnx(fp32, tokenizer, scratch / "model.onnx")
    onnx_int8 = quantize_onnx_int8(onnx_fp32, scratch / "model.int8.onnx")
    pruned, sparsity = prune_magnitude(load_classifier(model_dir)[0], args.prune_amount)
    build_seconds = time.perf_counter() - started

    # Distillation on train rows only (never the test rows scored below), as the compress step does.
    started = time.perf_counter()
    layers = args.distill_layers or settings.distill_layers or max(1, fp32.config.num_hidden_layers // 2)
    distill_sample = train_rows[: args.distill_rows or settings.distill_max_rows]
    distill_texts = [row["text"] for row in distill_sample]
    student = build_student(fp32, layers, settings.distill_hidden_size)
    distill_stats = distill(student, tokenizer, distill_texts, [label_index[row["label"]] for row in distill_sample],
                            teacher_logits(fp32, tokenizer, distill_texts, max_length=config.train.max_length),
                            max_length=config.train.max_length, epochs=args.distill_epochs or settings.distill_epochs,
                            batch_size=settings.distill_batch_size, learning_rate=settings.distill_learning_rate,
                            temperature=settings.distill_temperature, alpha=settings.distill_alpha)
    student.save_pretrained(scratch / "student")
    student_onnx_int8 = quantize_onnx_int8(export_onnx(student, tokenizer, scratch / "student.onnx"),
                                           scratch / "student.int8.onnx")
    distill_seconds = time.perf_counter() - started

    models = {"fp32": fp32, "int8-dynamic": quantize_int8(load_classifier(model_dir)[0]),
              "onnx-fp32": OnnxClassifier(onnx_fp32, fp32.config), "onnx-int8": OnnxClassifier(onnx_int8, fp32.config),
              f"pruned-{args.prune_amount:g}": pruned, "distilled": student,
              "distilled-onnx-int8": OnnxClassifier(student_onnx_int8, fp32.config)}
    sizes = {"fp32": fp32_size, "int8-dynamic": _saved_size(models["int8-dynamic"]),
             "onnx-fp32": onnx_fp32.stat().st_size, "onnx-int8": onnx_int8.stat().st_size,
             f"pruned-{args.prune_amount:g}": _safetensors_size(pruned),
             "distilled": sum(path.stat().st_size for path in (scratch / "student").glob("*.safetensors")),
             "distilled-onnx-int8": student_onnx_int8.stat().st_size}

    quality = {}
    for name, model in models.items():
        result = predict(model, tokenizer, texts, max_length=config.train.max_length)
        quality[name] = f1_score(truth, [fp32.config.id2label[int(index)] for index in result.label_ids],
                                 labels=sorted(set(truth)), average="macro")
    latency = interleaved_latency(models, tokenizer, texts[: args.latency_rows], max_length=config.train.max_length,
                                  rounds=args.rounds)

    print(f"model {source} ({model_dir}); test rows {len(test)}; threads {threads_per_rank()}; "
          f"{args.rounds} interleaved rounds, medians; variants built in {build_seconds:.1f} s")
    print(f"distilled: {layers} of {fp32.config.num_hidden_layers} layers, {len(distill_texts)} train rows, "
          f"T={settings.distill_temperature:g}, alpha={settings.distill_alpha:g}, {distill_stats['steps']:.0f} steps, "
          f"{distill_seconds:.0f} s (teacher logits + training + ONNX export + int8)")
    print(f"fp32 anchor: {fp32_size / 1e6:.1f} MB safetensors, batch-1 p50 {latency['fp32']['latency_ms_batch1_p50']:.2f} ms, "
          f"batch-32 p50 {latency['fp32']['latency_ms_batch32_p50']:.1f} ms, macro-F1 {quality['fp32']:.4f}")
    print(f"{'variant':<20} {'size ratio':>10} {'lat b1':>8} {'lat b32':>8} {'macro-F1':>9} {'delta':>8}")
    for name in models:
        print(f"{name:<20} {sizes[name] / fp32_size:>10.3f} "
              f"{latency[name]['latency_ms_batch1_p50'] / latency['fp32']['latency_ms_batch1_p50']:>8.2f} "
              f"{latency[name]['latency_ms_batch32_p50'] / latency['fp32']['latency_ms_batch32_p50']:>8.2f} "
              f"{quality[name]:>9.4f} {quality[name] - quality['fp32']:>+8.4f}")
    print(f"(pruned: {sparsity:.1%} of Linear weights zero, stored dense; int8-dynamic size = its packed torch state dict)")
    batch1 = {name: latency[name]["latency_ms_batch1_p50"] for name in models}
    table = {name: {"size_ratio": sizes[name] / fp32_size, "latency_ratio_batch1": batch1[name] / batch1["fp32"],
                    "macro_f1_delta": {"test": quality[name] - quality["fp32"]}} for name in models if name != "fp32"}
    chosen = select_serving_variant(table, config.evaluate.gate.max_compressed_drop, servable=SERVABLE)
    row = table.get(chosen, {"size_ratio": 1.0, "latency_ratio_batch1": 1.0, "macro_f1_delta": {"test": 0.0}})
    speedup, size, loss = 1 / row["latency_ratio_batch1"], row["size_ratio"], -100 * row["macro_f1_delta"]["test"]
    goal = speedup >= 8 and size <= 0.2 and loss <= 0.5
    print(f"policy (max drop {config.evaluate.gate.max_compressed_drop:g}) serves {chosen}: {speedup:.1f}x faster at "
          f"batch 1, {size:.3f}x size, {loss:+.2f} macro-F1 points lost (negative: gained) -> "
          f"issue goal (>=8x, <=0.2x, <=0.5 pt) {'MET' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
