"""Builders for the monitoring tests: a corpus a tiny model cannot learn perfectly, a champion trained on it,
daily drop files for batch scoring, and labelled feedback that arrives later."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.contract import StepContext, execute
from tasks.records import RECORD_SCHEMA, write_parquet
from tests.pipeline_support import LABELS, tiny_config

FILLER = ("the", "a", "of", "and", "with", "for", "on", "new", "tool", "data", "small", "fast", "text", "file",
          "system", "simple", "library", "support", "module", "server")
WORDS_PER_LABEL = 8


def ambiguous_corpus(n_rows: int, labels=LABELS, *, seed: int, ambiguity: float = 0.3, prefix: str = "amb",
                     only: str | None = None, foreign: bool = False) -> list[dict[str, str]]:
    """Rows whose cue words come from their own label with probability 1 - `ambiguity`, else from another one,
    so even a perfect model is often unsure and sometimes wrong: macro-F1 well below 1, and confidence
    that means something. `only`: every row of that label (a shifted label mix); `foreign`: cue and filler
    words from a vocabulary the model never saw (shifted inputs)."""
    generator = random.Random(seed)
    rows = []
    for index in range(n_rows):
        label = only or labels[generator.randrange(len(labels))]
        cues = []
        for _ in range(generator.randint(2, 4)):
            source = label if generator.random() >= ambiguity else generator.choice([other for other in labels
                                                                                      if other != label])
            cues.append(f"{source}{generator.randrange(WORDS_PER_LABEL)}")
        filler = generator.choices(FILLER, k=generator.randint(3, 7))
        if foreign:
            filler = [f"zq{generator.randrange(500)}x" for _ in filler]
        words = cues + filler
        generator.shuffle(words)
        rows.append({"id": f"{prefix}-{seed}-{index:05d}", "text": " ".join(words), "label": label})
    return rows


def monitor_config(root: Path, **monitor) -> PipelineConfig:
    data = tiny_config(root, epochs=12, early_stopping_patience=12, learning_rate=5e-3, warmup_fraction=0.1, batch_size=32).to_dict()
    data["name"] = "monitored"
    data["mlflow"]["model_name"] = "monitored-model"
    data["split"] = {"test_fraction": 0.6, "validation_fraction": 0.1}
    data["compress"] = {"variants": ["int8-dynamic"], "latency_rounds": 1, "latency_sample_rows": 8,
                        "serving_check_rows": 8}
    data["evaluate"] = {"gate": {"floors": {"frozen.macro_f1": 0.4}, "min_comparison_rows": 20}}
    data["score"] = {"input": str(root / "drop" / "{date}" / "*.jsonl")}
    data["monitor"] = {"min_rows": 100, **monitor}
    return PipelineConfig.model_validate(data)


def drop_day(config: PipelineConfig, day: str, rows: list[dict[str, str]]) -> Path:
    """A day's unlabelled texts in the score drop folder (id and text only)."""
    assert config.score.input is not None
    folder = Path(config.score.input.replace("{date}", day)).parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "texts.jsonl"
    path.write_text("".join(json.dumps({"id": row["id"], "text": row["text"]}) + "\n" for row in rows))
    return path


def labels_arrive(config: PipelineConfig, store, run_id: str, day: str, rows: list[dict[str, str]]):
    """The day's labels, as the pipeline's validate step leaves them (what the monitor takes as feedback)."""
    records = [{"id": row["id"], "text": row["text"], "label": row["label"], "source": "feedback",
                "fetched_at": f"{day}T12:00:00+00:00", "content_hash": None} for row in rows]

    def body(context: StepContext) -> None:
        write_parquet(records, context.out_dir / "valid.parquet", schema=RECORD_SCHEMA)
        context.add_output("valid", "valid.parquet", "dataset", rows=len(records))

    return execute("validate", body, config, {}, run_id=run_id, store=store, logical_date=day,
                   extra_fingerprint={"rows": len(records)})
