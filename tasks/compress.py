"""Compress the candidate (int8 dynamic quantization) and re-gate the compressed model.

The int8 model is re-evaluated on the same slices as the fp32 candidate; the serving variant is
int8 when it loses at most `gate.max_compressed_drop` on every slice, else fp32. Quantization is a
deterministic recipe applied at load time to the fp32 safetensors weights, so nothing pickled is
ever stored or registered. The manifest carries the final gate verdict (candidate checks plus
compressed checks) that decides promotion.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.contract import Manifest, StepContext, cli, execute
from tasks.evaluate import evaluation_slices, score
from tasks.gate import Verdict, judge_compressed
from tasks.store import ArtifactStore

STEP = "compress"
INT8 = "int8-dynamic"
log = logging.getLogger("freshet.compress")


def _saved_size(model) -> int:
    """Bytes on disk of the model's state dict as torch would store it."""
    import torch

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "weights.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    def body(context: StepContext) -> None:
        from tasks.modeling import load_classifier, measure_latency

        labels = list(config.labels)
        model_dir = context.input_path("train", "model")
        evaluation = json.loads(context.input_path("evaluate", "evaluation").read_text())
        slices = evaluation_slices(context.input("clean"), store)
        fp32_model, tokenizer = load_classifier(model_dir)
        settings = dict(max_length=config.train.max_length, batch_size=config.evaluate.batch_size)
        sample = [row["text"] for row in (slices["fresh"] or slices["frozen"])[: config.compress.latency_sample_rows]]

        variants: dict[str, dict] = {}
        checks = []
        if config.compress.quantize_int8:
            int8_model, _ = load_classifier(model_dir, quantization=INT8)
            int8_metrics, _ = score(int8_model, tokenizer, slices, labels, **settings)
            # Time each variant in its own block (alternating single calls skews both; see STACK.md).
            fp32_latency = measure_latency(fp32_model, tokenizer, sample, max_length=config.train.max_length)
            int8_latency = measure_latency(int8_model, tokenizer, sample, max_length=config.train.max_length)
            fp32_size, int8_size = _saved_size(fp32_model), _saved_size(int8_model)
            verdict = judge_compressed(config.evaluate.gate, int8_metrics, evaluation["candidate"], INT8)
            checks = verdict.checks
            variants[INT8] = {
                "passed": verdict.passed,
                "size_ratio": int8_size / fp32_size,
                "latency_ratio_batch1": int8_latency["latency_ms_batch1_p50"] / fp32_latency["latency_ms_batch1_p50"],
                "latency_ratio_batch32": int8_latency["latency_ms_batch32_p50"] / fp32_latency["latency_ms_batch32_p50"],
                "macro_f1": {name: metrics["macro_f1"] for name, metrics in int8_metrics.items()},
                "macro_f1_delta": {name: int8_metrics[name]["macro_f1"] - evaluation["candidate"][name]["macro_f1"]
                                   for name in int8_metrics},
                "latency_ms": int8_latency, "fp32_latency_ms": fp32_latency,
                "size_bytes": int8_size, "fp32_size_bytes": fp32_size,
            }
        serving_variant = INT8 if variants.get(INT8, {}).get("passed") else "fp32"
        candidate_gate = context.input("evaluate").facts["gate"]
        final = Verdict.model_validate({"passed": candidate_gate["passed"], "checks": candidate_gate["checks"] + [
            check.model_dump() for check in checks]})
        # A compressed variant that fails its re-gate does not reject the candidate: fp32 is served.
        gate = final.summary() | {"passed": candidate_gate["passed"], "reasons": candidate_gate["reasons"],
                                  "serving_variant": serving_variant}
        (context.out_dir / "compression.json").write_text(json.dumps({"variants": variants,
                                                                      "serving_variant": serving_variant}, indent=2))
        (context.out_dir / "gate.json").write_text(json.dumps(gate, indent=2))
        context.add_output("compression", "compression.json", "report")
        context.add_output("gate", "gate.json", "report")
        for variant, facts in variants.items():
            context.metrics[f"{variant}.size_ratio"] = facts["size_ratio"]
            context.metrics[f"{variant}.latency_ratio_batch1"] = facts["latency_ratio_batch1"]
            context.metrics[f"{variant}.latency_ratio_batch32"] = facts["latency_ratio_batch32"]
            for name, delta in facts["macro_f1_delta"].items():
                context.metrics[f"{variant}.{name}.macro_f1_delta"] = delta
        context.metrics["serving_variant"] = serving_variant
        context.metrics["gate_passed"] = gate["passed"]
        context.facts.update({"gate": gate, "serving_variant": serving_variant, "variants": variants,
                              "champion_version": context.input("evaluate").facts.get("champion_version")})

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("compress", "evaluate"))
    if not manifest.reused:
        from tasks.tracking import log_manifest, step_run

        with step_run(config, run_id, STEP, logical_date):
            import mlflow

            log_manifest(manifest)
            mlflow.log_artifact(str(store.local_path(manifest.output("compression").uri)), artifact_path="compression")
            mlflow.log_artifact(str(store.local_path(manifest.output("gate").uri)), artifact_path="gate")
    return manifest


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
