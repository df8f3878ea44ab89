"""Model quality vs the TF-IDF + logistic-regression anchor, on the same stable hash split.

Reads the demo corpus and the registry's champion produced by `make demo` (or any config), trains
the anchor on the train split, scores both on the test split and prints macro-F1 and the difference.

    python bench/quality.py [--config configs/demo.yaml] [--corpus .freshet/demo/corpus.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("FRESHET_HOME", REPO / ".freshet"))
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--corpus", default=str(home / "demo" / "corpus.jsonl"))
    args = parser.parse_args()
    os.environ.setdefault("FRESHET_HOME", str(home))

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from tasks import registry
    from tasks.config import load_config
    from tasks.data import split_of
    from tasks.modeling import load_classifier, predict

    config = load_config(args.config)
    rows = [json.loads(line) for line in Path(args.corpus).read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row["label"] in config.labels]
    train = [row for row in rows if split_of(f"{config.crawl.sources[0].name}:{row['id']}", config.split) == "train"]
    test = [row for row in rows if split_of(f"{config.crawl.sources[0].name}:{row['id']}", config.split) == "test"]

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    anchor = LogisticRegression(max_iter=2000, C=10.0)
    anchor.fit(vectorizer.fit_transform([row["text"] for row in train]), [row["label"] for row in train])
    anchor_f1 = f1_score([row["label"] for row in test], anchor.predict(vectorizer.transform([row["text"] for row in test])),
                         average="macro")
    anchor_seconds = time.perf_counter() - started

    champion = registry.version_by_alias(config, registry.CHAMPION)
    if champion is None:
        print("no champion in the registry yet: run `make demo` first")
        return 1
    model, tokenizer = load_classifier(registry.download_model_dir(config, str(champion.version)))
    result = predict(model, tokenizer, [row["text"] for row in test], max_length=config.train.max_length)
    labels = [model.config.id2label[index] for index in result.label_ids]
    model_f1 = f1_score([row["label"] for row in test], labels, average="macro")
    print(f"test rows {len(test)} (train rows available to the anchor: {len(train)})")
    print(f"TF-IDF + logistic regression macro-F1 {anchor_f1:.4f}  (fit {anchor_seconds:.1f} s)")
    print(f"freshet champion v{champion.version}    macro-F1 {model_f1:.4f}")
    print(f"difference (freshet - anchor)       {model_f1 - anchor_f1:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
