"""Active learning: the labels each selection strategy needs to reach random sampling's final macro-F1.

A pool-based simulation on the demo corpus; the anchor is random sampling (DESIGN.md section 9). The corpus, the
fixed test set (every row whose stable hash falls in the first `--test-fraction`: 7,523 of the 37,646 synopses)
and the pool (the rest) are bench/label_efficiency.py's. Per seed, `--seed-labels` (100) pool rows are labelled,
stratified by class, then each of `--rounds` (10) rounds labels `--batch` (100) more, chosen by:

- `random`: a seeded uniform sample of the unlabelled pool (the anchor);
- `margin`: the smallest margin between the two most probable classes ("breaking ties");
- `freshet`: the product's own selection, `tasks.labelling.selection.select` with the config's `label` and `clean`
  settings, called as the label step calls it: TF-IDF clusters for diversity, class-balanced turns, no
  near-duplicate of a labelled text, and its random control share.

The model that scores the pool and the test set each round stands in for the champion, fast enough for seconds a
round: a logistic regression on frozen sentence embeddings of the `--model` encoder (all-MiniLM-L6-v2,
mean-pooled; computed once per corpus and cached under `--cache-dir` by the corpus digest), beside (`--scorer
blend`, the default) a 256-dimension SVD of the pool's word TF-IDF, as the champion serves its transformer blended
with a lexical model; `--scorer embeddings` uses the embeddings alone. After the last round, each strategy's
labelled rows are fine-tuned with freshet's recipe (bench/label_efficiency.py's `freshet` method: trainer,
lexical baseline, blend) and scored on the same test set: the final points.

Each finished point (a round of one strategy and seed, or a final fine-tune) is appended to `--results` (JSON
lines). A round keeps the ids it labelled, so a rerun replays them and goes on where it stopped. Ends with the
macro-F1 per round (mean +- sd over seeds), the labels each strategy needs to reach random's final F1 (interpolated
on the mean curve) as a share of random's, the CPU seconds of each, and the fine-tuned final points.

    python bench/active_learning.py                     # 3 seeds x 3 strategies, every seed's final fine-tunes
    python bench/active_learning.py --final-seeds 1     # the final fine-tunes of seed 0 only
    python bench/active_learning.py --quick --corpus F --labels a,b,c --model tiny --results R   # smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import label_efficiency as efficiency

if TYPE_CHECKING:
    from tasks.config import CleanConfig, LabelConfig

STRATEGIES = ("random", "margin", "freshet")
SCORERS = ("blend", "embeddings")
ANCHOR = "random"
# Quick mode trains the tiny model for a few epochs, as label_efficiency.py's --quick does.
QUICK_RECIPE: dict[str, Any] = {"epochs": 3, "early_stopping_patience": 1}


@dataclass(frozen=True)
class Pool:
    """What every round of every strategy shares: the pool (positions index its rows) and the test set, embedded."""

    labels: list[str]
    rows: list[dict[str, Any]]
    vectors: np.ndarray
    targets: np.ndarray  # each pool row's label index: what the annotator answers
    test_vectors: np.ndarray
    test_truth: np.ndarray
    label_settings: LabelConfig
    clean: CleanConfig


# ------------------------------------------------------------------------------------------ embeddings


def corpus_digest(rows: Sequence[dict[str, Any]], model: str, max_length: int) -> str:
    digest = hashlib.sha256(f"{model}\0{max_length}".encode())
    for row in rows:
        digest.update(f"\0{row['id']}\0{row['text']}".encode())
    return digest.hexdigest()[:16]


def embed(args: argparse.Namespace, labels: list[str], texts: Sequence[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of the encoder freshet would fine-tune (`--model`).

    The product has no embedding path (the monitoring scorer and `tasks.models.inference.predict` return class
    probabilities only), so this pools the encoder under the classifier `build_model` makes, with predict's own
    length-sorted batches and input filtering."""
    import torch

    from tasks.models.build import build_model
    from tasks.models.families import accepted_inputs, model_features, preflight
    from tasks.models.inference import length_sorted_batches

    train = efficiency.Point(args, labels, [], [], [], seed=0).config().train
    tokenizer = preflight(train, None, warm_start=False).tokenizer
    classifier = build_model(train, labels, pad_token_id=tokenizer.pad_token_id)
    encoder = classifier.base_model.eval()
    encoded = model_features(tokenizer(list(texts), truncation=True, max_length=args.max_length),
                             accepted_inputs(classifier))
    vectors = np.zeros((len(texts), classifier.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for batch in length_sorted_batches([len(ids) for ids in encoded["input_ids"]], 128):
            features = tokenizer.pad({key: [encoded[key][i] for i in batch] for key in encoded}, return_tensors="pt")
            hidden = encoder(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors[batch] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return vectors


def corpus_embeddings(args: argparse.Namespace, labels: list[str], rows: Sequence[dict[str, Any]],
                      digest: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Every corpus row's embedding (in corpus order) and how it was made: computed once per corpus and encoder."""
    path = Path(args.cache_dir) / f"embeddings-{digest}.npy"
    facts_path = path.with_suffix(".json")
    if path.exists() and facts_path.exists():
        return np.load(path), json.loads(facts_path.read_text())
    cpu, wall = time.process_time(), time.perf_counter()
    vectors = embed(args, labels, [row["text"] for row in rows])
    facts = {"rows": len(rows), "dimensions": int(vectors.shape[1]), "model": args.model,
             "max_length": args.max_length, "cpu_seconds": time.process_time() - cpu,
             "wall_seconds": time.perf_counter() - wall}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.npy")
    np.save(partial, vectors)
    os.replace(partial, path)
    facts_path.write_text(json.dumps(facts))  # written last: the pair is complete
    print(f"embedded {len(rows)} texts in {facts['cpu_seconds']:.0f} CPU s -> {path}", flush=True)
    return vectors, facts


# ------------------------------------------------------------------------------------------ the rounds


def stratified_seed(targets: np.ndarray, size: int, label_count: int, seed: int) -> list[int]:
    """`size` pool positions, each label's share as in the pool (largest remainders, at least one per label)."""
    generator = random.Random(f"seed-labels:{seed}")
    counts = np.bincount(targets, minlength=label_count)
    quotas = counts / counts.sum() * size
    take = np.maximum(np.floor(quotas).astype(int), (counts > 0).astype(int))
    for label in np.argsort(-(quotas - np.floor(quotas)), kind="stable")[:max(0, size - int(take.sum()))]:
        take[label] += 1
    return sorted(position for label in range(label_count)
                  for position in generator.sample(np.flatnonzero(targets == label).tolist(),
                                                   int(min(take[label], counts[label]))))


def lexical_features(fit_texts: Sequence[str], *texts: Sequence[str], dimensions: int = 256) -> list[np.ndarray]:
    """Each text set as unit-length rows of a `dimensions` SVD of word 1-2 gram TF-IDF (sublinear tf, words in at
    least two texts) fitted on `fit_texts`: the lexical half of the blend stand-in, dense so it sits beside the
    embeddings."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2).fit(fit_texts)
    except ValueError as error:  # no word in two texts: nothing lexical to stand in with
        raise SystemExit(f"--scorer blend: the pool's texts share no word ({error}); use --scorer embeddings") from error
    if len(vectorizer.vocabulary_) < 2:
        raise SystemExit("--scorer blend: the pool's texts share fewer than 2 words; use --scorer embeddings")
    svd = TruncatedSVD(min(dimensions, len(vectorizer.vocabulary_) - 1), random_state=0).fit(
        vectorizer.transform(fit_texts))
    projected = [svd.transform(vectorizer.transform(list(part))) for part in texts]
    return [(part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-9)).astype(np.float32)
            for part in projected]


def fit_classifier(pool: Pool, labelled: Sequence[int]) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=2000).fit(pool.vectors[labelled], pool.targets[labelled])


def class_probabilities(model: Any, vectors: np.ndarray, label_count: int) -> np.ndarray:
    """Every label's probability, zero for a label no labelled row has yet."""
    probabilities = np.zeros((len(vectors), label_count))
    probabilities[:, model.classes_] = model.predict_proba(vectors)
    return probabilities


@dataclass(frozen=True)
class Turn:
    """One round's question: which `batch` of the unlabelled positions to label next."""

    pool: Pool
    labelled: list[int]
    unlabelled: list[int]
    probabilities: np.ndarray  # of the unlabelled rows, by the model of the labelled ones
    batch: int
    seed: int
    round_number: int


def pick_random(turn: Turn) -> tuple[list[int], dict[str, Any]]:
    generator = random.Random(f"random:{turn.seed}:{turn.round_number}")
    return generator.sample(turn.unlabelled, min(turn.batch, len(turn.unlabelled))), {}


def pick_margin(turn: Turn) -> tuple[list[int], dict[str, Any]]:
    from tasks.labelling.selection import margins

    order = np.argsort(margins(turn.probabilities), kind="stable")[:turn.batch]
    return [turn.unlabelled[index] for index in order], {}


def pick_freshet(turn: Turn) -> tuple[list[int], dict[str, Any]]:
    """The label step's selection (tasks/label.py pick_texts) with the pool as the day's scored texts."""
    from tasks.labelling.selection import CONTROL, UNCERTAINTY, Candidate, margins, select

    pool, settings = turn.pool, turn.pool.label_settings
    candidates = [Candidate(pool.rows[position]["id"], pool.rows[position]["text"],
                            pool.labels[int(probabilities.argmax())], float(probabilities.max()), float(margin))
                  for position, probabilities, margin in zip(turn.unlabelled, turn.probabilities,
                                                             margins(turn.probabilities))]
    selection = select(candidates, budget=turn.batch, control_fraction=settings.control_fraction,
                       pool_factor=settings.candidate_pool_factor,
                       seed=settings.seed + 1000 * turn.seed + turn.round_number,
                       known_texts=[pool.rows[position]["text"] for position in turn.labelled],
                       near_duplicate_threshold=settings.near_duplicate_threshold, clean=pool.clean,
                       label_order=pool.labels)
    position_of = {pool.rows[position]["id"]: position for position in turn.unlabelled}
    by = Counter(pick.selected_by for pick in selection.picks)
    return [position_of[pick.candidate.id] for pick in selection.picks], {
        "by_uncertainty": by[UNCERTAINTY], "by_control": by[CONTROL], "eligible": selection.eligible,
        "near_duplicates": selection.near_duplicates}


PICKERS: dict[str, Callable[[Turn], tuple[list[int], dict[str, Any]]]] = {
    "random": pick_random, "margin": pick_margin, "freshet": pick_freshet}


def append(results: Path, record: dict[str, Any]) -> None:
    with results.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_curve(args: argparse.Namespace, pool: Pool, strategy: str, seed: int, done: Sequence[dict[str, Any]],
              results: Path, base: dict[str, Any]) -> list[list[int]]:
    """The rounds of one strategy and seed not in `done` (the earlier ones are replayed from their ids); the
    labelled positions after each round."""
    from sklearn.metrics import f1_score

    position_of = {row["id"]: position for position, row in enumerate(pool.rows)}
    earlier = sorted(done, key=lambda record: record["round"])
    if [record["round"] for record in earlier] != list(range(len(earlier))):
        raise SystemExit(f"{results}: {strategy} seed {seed} has rounds {[r['round'] for r in earlier]}, not 0..n")
    history: list[list[int]] = []
    for record in earlier:
        history.append([*(history[-1] if history else []), *(position_of[i] for i in record["new_ids"])])
    labelled = history[-1] if history else []
    model = fit_classifier(pool, labelled) if 0 < len(earlier) <= args.rounds else None
    for round_number in range(len(earlier), args.rounds + 1):
        cpu, wall = time.process_time(), time.perf_counter()
        facts: dict[str, Any] = {}
        if round_number == 0:
            new = stratified_seed(pool.targets, args.seed_labels, len(pool.labels), seed)
        else:
            chosen = set(labelled)
            unlabelled = [position for position in range(len(pool.rows)) if position not in chosen]
            probabilities = class_probabilities(model, pool.vectors[unlabelled], len(pool.labels))
            new, facts = PICKERS[strategy](Turn(pool, labelled, unlabelled, probabilities, args.batch, seed,
                                                round_number))
        selection_cpu = time.process_time() - cpu
        labelled = labelled + new
        history.append(labelled)
        model = fit_classifier(pool, labelled)
        macro_f1 = float(f1_score(pool.test_truth, model.predict(pool.test_vectors), average="macro"))
        record = base | {
            "kind": "round", "strategy": strategy, "seed": seed, "round": round_number, "labels": len(labelled),
            "macro_f1": macro_f1, "cpu_seconds": time.process_time() - cpu, "selection_cpu_seconds": selection_cpu,
            "wall_seconds": time.perf_counter() - wall, "picked": len(new),
            "picked_by_label": dict(Counter(pool.labels[pool.targets[position]] for position in new)),
            **facts, "new_ids": [pool.rows[position]["id"] for position in new]}
        append(results, record)
        print(f"{strategy:>8} seed {seed} round {round_number:>2}: {len(labelled):>5} labels, "
              f"macro-F1 {macro_f1:.4f}  cpu {record['cpu_seconds']:.1f} s", flush=True)
    return history


def run_final(args: argparse.Namespace, pool: Pool, test: list[dict[str, Any]], strategy: str, seed: int,
              round_number: int, labelled: Sequence[int], results: Path, base: dict[str, Any]) -> None:
    """freshet's fine-tune (label_efficiency.py's `freshet` method) on the rows the strategy had labelled after
    `round_number`."""
    point = efficiency.Point(args, pool.labels, [pool.rows[position] for position in labelled], test, [], seed)
    cpu, wall = time.process_time(), time.perf_counter()
    outcome = efficiency.run_freshet(point)
    record = base | {"kind": "final", "strategy": strategy, "seed": seed, "round": round_number,
                     "labels": len(labelled), "recipe": recipe_key(args)} | outcome | {
        "cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall}
    append(results, record)
    print(f"{strategy:>8} seed {seed} round {round_number} fine-tuned on {len(labelled)} labels: "
          f"macro-F1 {record['macro_f1']:.4f}  "
          f"cpu {record['cpu_seconds']:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------ the run


def recipe_key(args: argparse.Namespace) -> str:
    return json.dumps(efficiency.RECIPE | args.recipe, sort_keys=True)


# Records from before `--scorer` existed were made with the embeddings alone.
RECORD_DEFAULTS = {"scorer": "embeddings"}


def matches(record: dict[str, Any], base: dict[str, Any]) -> bool:
    return all(record.get(key, RECORD_DEFAULTS.get(key)) == value for key, value in base.items())


def measure(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Run what `--results` lacks; the results file and the fields every record of this setup shares."""
    import torch

    from tasks.config import load_config

    config = load_config(args.config)
    labels = list(config.labels) if not args.labels else args.labels.split(",")
    corpus = efficiency.load_corpus(args, labels)
    pool_rows, test = efficiency.split_corpus(corpus, args.test_fraction)
    test = test[:args.test_rows] if args.test_rows else test
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    digest = corpus_digest(corpus, args.model, args.max_length)
    vectors, embedding = corpus_embeddings(args, labels, corpus, digest)
    row_of = {row["id"]: index for index, row in enumerate(corpus)}
    pool_vectors, test_vectors = (vectors[[row_of[row["id"]] for row in rows]] for rows in (pool_rows, test))
    if args.scorer == "blend":
        pool_texts = [row["text"] for row in pool_rows]
        lexical = lexical_features(pool_texts, pool_texts, [row["text"] for row in test])
        pool_vectors, test_vectors = (np.hstack([semantic, words]) for semantic, words in
                                      zip((pool_vectors, test_vectors), lexical, strict=True))
    pool = Pool(labels, pool_rows, pool_vectors, np.array([labels.index(row["label"]) for row in pool_rows]),
                test_vectors, np.array([labels.index(row["label"]) for row in test]), config.label, config.clean)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    base = {"text": args.text, "model": args.model, "corpus": digest, "test_rows": len(test),
            "seed_labels": args.seed_labels, "batch": args.batch, "scorer": args.scorer}
    records = [record for record in efficiency.done_points(results) if matches(record, base)]
    if not any(record["kind"] == "embeddings" for record in records):
        append(results, base | {"kind": "embeddings"} | embedding)
    print(f"corpus {len(corpus)} rows ({args.text}), pool {len(pool_rows)}, fixed test set {len(test)}; "
          f"{args.seed_labels} seed labels + {args.rounds} rounds of {args.batch}; results {results}", flush=True)
    history: dict[tuple[str, int], list[list[int]]] = {}
    for seed in range(args.seeds):
        for strategy in args.strategies:
            done = [record for record in records if record["kind"] == "round" and record["strategy"] == strategy
                    and record["seed"] == seed and record["round"] <= args.rounds]
            history[strategy, seed] = run_curve(args, pool, strategy, seed, done, results, base)
    finished = {(record["strategy"], record["seed"], record["round"]) for record in records
                if record["kind"] == "final" and record["recipe"] == recipe_key(args)}
    for seed in range(min(args.final_seeds, args.seeds)):
        for strategy in args.strategies:
            rounds = sorted({args.rounds, *([] if strategy == ANCHOR else args.finetune_rounds)})
            for number in rounds:
                if (strategy, seed, number) not in finished:
                    run_final(args, pool, test, strategy, seed, number, history[strategy, seed][number], results,
                              base)
    return results, base


# ------------------------------------------------------------------------------------------ the summary


def mean_sd(values: Sequence[float], digits: int = 4) -> str:
    return f"{statistics.mean(values):.{digits}f}" + (
        f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def labels_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The labels at which `curve` ((labels, F1) by labels) first reaches `target`, linear between its points;
    None: never."""
    previous: tuple[float, float] | None = None
    for labels, f1 in curve:
        if f1 >= target:
            if previous is None:
                return labels
            return previous[0] + (target - previous[1]) / (f1 - previous[1]) * (labels - previous[0])
        previous = (labels, f1)
    return None


def share(labels: float | None, anchor: float) -> str:
    return "not reached" if labels is None else f"{100 * labels / anchor:.0f}%"


class Curves:
    """The complete curves of one setup: strategy -> seed -> round -> record, on the seeds every strategy has."""

    def __init__(self, records: Sequence[dict[str, Any]], rounds: int) -> None:
        by: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
        for record in records:
            if record["kind"] == "round" and record["round"] <= rounds:
                by.setdefault(record["strategy"], {}).setdefault(record["seed"], {})[record["round"]] = record
        complete = {strategy: {seed: points for seed, points in seeds.items() if len(points) == rounds + 1}
                    for strategy, seeds in by.items()}
        self.rounds = rounds
        self.strategies = [strategy for strategy in STRATEGIES if complete.get(strategy)]
        self.seeds = sorted(set.intersection(*(set(complete[strategy]) for strategy in self.strategies))
                            if self.strategies else set())
        self.by = complete

    def points(self, strategy: str, key: str, round_numbers: Sequence[int] | None = None) -> list[float]:
        """Per seed, `key` summed over `round_numbers` (default: the last round's)."""
        numbers = [self.rounds] if round_numbers is None else round_numbers
        return [sum(self.by[strategy][seed][number][key] for number in numbers) for seed in self.seeds]

    def curve(self, strategy: str, seeds: Sequence[int]) -> list[tuple[float, float]]:
        """(labels, macro-F1 averaged over `seeds`) after each round."""
        return [(float(self.by[strategy][seeds[0]][number]["labels"]),
                 statistics.mean(self.by[strategy][seed][number]["macro_f1"] for seed in seeds))
                for number in range(self.rounds + 1)]


def curve_table(curves: Curves, scorer: str) -> list[str]:
    features = "the frozen embeddings" + (" and the TF-IDF SVD" if scorer == "blend" else "")
    lines = ["", f"macro-F1 of logistic regression on {features} after each round, mean ± sd over seeds "
             + ", ".join(map(str, curves.seeds)),
             "| round | labels | " + " | ".join(curves.strategies) + " |", "|---:|---:|" + "---|" * len(curves.strategies)]
    for number in range(curves.rounds + 1):
        cells = [mean_sd(curves.points(strategy, "macro_f1", [number])) for strategy in curves.strategies]
        lines.append(f"| {number} | {curves.by[ANCHOR][curves.seeds[0]][number]['labels']} | " + " | ".join(cells) + " |")
    return lines


def reach_table(curves: Curves) -> list[str]:
    """Labels to reach random's final F1 on the mean curve (and per seed, against that seed's random), and CPU."""
    anchor_labels, target = curves.curve(ANCHOR, curves.seeds)[-1]
    selection_rounds = range(1, curves.rounds + 1)
    anchor_cpu = statistics.mean(curves.points(ANCHOR, "cpu_seconds", selection_rounds))
    lines = ["", (f"labels to reach random's final F1 ({target:.4f} at {anchor_labels:.0f} labels), interpolated on "
                  "the mean curve; per seed: on its own curve, against its own random final"),
             "| strategy | labels | / random's | per seed | CPU s of the rounds | of which selection | CPU / random |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for strategy in curves.strategies:
        if strategy == ANCHOR:
            needed: float | None = anchor_labels
            per_seed = ["100%"] * len(curves.seeds)
        else:
            needed = labels_to_reach(curves.curve(strategy, curves.seeds), target)
            per_seed = [share(labels_to_reach(curves.curve(strategy, [seed]), curves.curve(ANCHOR, [seed])[-1][1]),
                              anchor_labels) for seed in curves.seeds]
        cpu = statistics.mean(curves.points(strategy, "cpu_seconds", selection_rounds))
        selection = statistics.mean(curves.points(strategy, "selection_cpu_seconds", selection_rounds))
        lines.append(f"| {strategy} | {'not reached' if needed is None else f'{needed:.0f}'} | "
                     f"{share(needed, anchor_labels)} | {', '.join(per_seed)} | {cpu:.1f} | {selection:.1f} | "
                     f"{cpu / anchor_cpu:.2f}x |")
    return lines


def efficiency_curve(records: Sequence[dict[str, Any]], base: dict[str, Any], recipe: str) -> list[tuple[float, float]]:
    """label_efficiency.py's `freshet` points (random samples of the same pool, the same test set): (rows, mean F1)."""
    by_rows: dict[int, list[float]] = {}
    for record in records:
        if (record.get("method") == "freshet" and record.get("text") == base["text"]
                and record.get("model") == base["model"] and record.get("recipe") == recipe
                and record.get("test_rows") == base["test_rows"]):
            by_rows.setdefault(record["rows"], []).append(record["macro_f1"])
    return [(float(rows), statistics.mean(values)) for rows, values in sorted(by_rows.items())]


def final_table(records: Sequence[dict[str, Any]], rounds: int, recipe: str,
                random_curve: Sequence[tuple[float, float]]) -> list[str]:
    """The fine-tuned final points, paired with random's; with label_efficiency.py's curve of random samples
    (its results file), the labels random sampling needs for each point's F1, as a share of what it needs for
    random's own final point (the share cancels a level offset between the two runs' random draws)."""
    finals: dict[str, dict[int, dict[str, Any]]] = {}
    for record in records:
        if record["kind"] == "final" and record["round"] == rounds and record["recipe"] == recipe:
            finals.setdefault(record["strategy"], {})[record["seed"]] = record
    if not finals:
        return []
    labels = next(iter(next(iter(finals.values())).values()))["labels"]

    def equivalent(strategy: str) -> float | None:
        """Random-sampling labels for the strategy's mean fine-tuned F1 on label_efficiency.py's curve."""
        points = finals.get(strategy)
        return labels_to_reach(random_curve, statistics.mean(p["macro_f1"] for p in points.values())) \
            if points and random_curve else None

    lines = ["", (f"final points: freshet's fine-tune (trainer + lexical baseline + blend) on the {labels} labels "
                  f"of the last round; recipe {recipe}"),
             ("| strategy | seeds | macro-F1 | transformer alone | - random (points, paired) | random-sampling labels "
              "for this F1 (label_efficiency.py) | / random's | CPU s |"),
             "|---|---|---|---|---:|---:|---:|---:|"]
    anchor = equivalent(ANCHOR)
    for strategy in STRATEGIES:
        points = finals.get(strategy, {})
        if not points:
            continue
        paired = [seed for seed in points if seed in finals.get(ANCHOR, {})]
        gain = [points[seed]["macro_f1"] - finals[ANCHOR][seed]["macro_f1"] for seed in paired]
        difference = "" if strategy == ANCHOR or not gain else f"{100 * statistics.mean(gain):+.1f}"
        needed = equivalent(strategy)
        reach = "" if not random_curve else f"> {random_curve[-1][0]:.0f}" if needed is None else f"{needed:.0f}"
        ratio = f"{100 * anchor / needed:.0f}%" if anchor and needed else ""
        lines.append(f"| {strategy} | {', '.join(map(str, sorted(points)))} | "
                     f"{mean_sd([point['macro_f1'] for point in points.values()])} | "
                     f"{mean_sd([point['transformer_macro_f1'] for point in points.values()])} | {difference} | "
                     f"{reach} | {ratio} | {statistics.mean(point['cpu_seconds'] for point in points.values()):.0f} |")
    return lines


def finetuned_reach_table(records: Sequence[dict[str, Any]], rounds: int, recipe: str) -> list[str]:
    """The product's measure: with a strategy's rounds fine-tuned (`--finetune-rounds`), the labels its fine-tune
    needs to reach random's fine-tuned final F1, interpolated on the strategy's fine-tuned points (mean over the
    seeds that have all of them and random's final; per seed: against that seed's random final)."""
    points: dict[str, dict[int, dict[int, float]]] = {}  # strategy -> seed -> labels -> macro-F1
    for record in records:
        if record["kind"] == "final" and record["recipe"] == recipe and record["round"] <= rounds:
            points.setdefault(record["strategy"], {}).setdefault(record["seed"], {})[record["labels"]] = \
                record["macro_f1"]
    anchor = points.get(ANCHOR, {})
    final_labels = max((max(by_labels) for by_labels in anchor.values()), default=0)
    anchor_final = {seed: by_labels[final_labels] for seed, by_labels in anchor.items() if final_labels in by_labels}
    lines: list[str] = []
    for strategy in STRATEGIES:
        by_seed = {seed: by_labels for seed, by_labels in points.get(strategy, {}).items() if seed in anchor_final}
        counts = sorted(set.intersection(*(set(by_labels) for by_labels in by_seed.values()))) if by_seed else []
        if strategy == ANCHOR or len(counts) < 2:
            continue
        seeds = sorted(by_seed)
        target = statistics.mean(anchor_final[seed] for seed in seeds)
        curve = [(float(count), statistics.mean(by_seed[seed][count] for seed in seeds)) for count in counts]
        needed = labels_to_reach(curve, target)
        per_seed = [share(labels_to_reach([(float(c), by_seed[seed][c]) for c in counts], anchor_final[seed]),
                          final_labels) for seed in seeds]
        if not lines:
            lines = ["", ("labels each strategy's fine-tune needs to reach random's fine-tuned final F1 (freshet's "
                          "recipe on the labels of each round), interpolated on the mean of its fine-tuned points"),
                     ("| strategy | seeds | random's final F1 | fine-tuned macro-F1 by labels | labels | / random's "
                      "| per seed |"), "|---|---|---:|---|---:|---:|---|"]
        lines.append(f"| {strategy} | {', '.join(map(str, seeds))} | {target:.4f} at {final_labels} | "
                     + ", ".join(f"{count:.0f}: {f1:.4f}" for count, f1 in curve)
                     + f" | {'not reached' if needed is None else f'{needed:.0f}'} | {share(needed, final_labels)} | "
                     f"{', '.join(per_seed)} |")
    return lines


def summary(records: Sequence[dict[str, Any]], base: dict[str, Any], rounds: int, recipe: str,
            efficiency_records: Sequence[dict[str, Any]] = ()) -> str:
    """The curves (mean ± sd over seeds), the labels to reach random's final F1 and CPU, the final points."""
    chosen = [record for record in records if matches(record, base)]
    lines = [(f"active learning ({base['text']}, {base['model']}; {base['seed_labels']} stratified seed labels + "
              f"{rounds} rounds of {base['batch']}; fixed test set of {base['test_rows']} rows)")]
    embedding = next((record for record in chosen if record["kind"] == "embeddings"), None)
    if embedding:
        lines.append(f"frozen embeddings of {embedding['rows']} texts: {embedding['cpu_seconds']:.0f} CPU s, once")
    curves = Curves(chosen, rounds)
    if ANCHOR not in curves.strategies or not curves.seeds:
        return "\n".join([*lines, "no complete random curve yet: nothing to compare against"])
    lines += curve_table(curves, base["scorer"]) + reach_table(curves)
    lines += final_table(chosen, rounds, recipe, efficiency_curve(efficiency_records, base, recipe))
    lines += finetuned_reach_table(chosen, rounds, recipe)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"),
                        help="where the labels and the label and clean settings come from")
    parser.add_argument("--labels", default=None, help="comma-separated labels instead of the config's")
    parser.add_argument("--corpus", default=None, help="JSON-lines corpus (default: the Debian corpus, built once)")
    parser.add_argument("--text", choices=("short", "long"), default="short")
    parser.add_argument("--model", default="minilm", help="minilm, tiny (smoke tests) or a model directory")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--scorer", choices=SCORERS, default="blend",
                        help="the champion's stand-in that scores the pool each round: logistic regression on the "
                             "frozen embeddings beside the pool's TF-IDF (blend), or on the embeddings alone")
    parser.add_argument("--seed-labels", type=int, default=100, help="stratified labels before the first round")
    parser.add_argument("--batch", type=int, default=100, help="labels per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--final-seeds", type=int, default=None,
                        help="fine-tune the final points of the first N seeds (default: every seed; 0: none)")
    parser.add_argument("--finetune-rounds", default="",
                        help="comma-separated rounds whose labels are also fine-tuned (every strategy but random, "
                             "the final seeds), for the labels the fine-tune needs to reach random's final F1")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--test-rows", type=int, default=None, help="cap the fixed test set (smoke tests)")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="freshet train setting on top of the recipe (repeatable), e.g. learning_rate=2e-4")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="where the corpus embeddings are kept (by corpus digest)")
    parser.add_argument("--results", default=None, help="JSON-lines results file (appended; finished points skipped)")
    parser.add_argument("--efficiency-results", default=str(REPO / "bench" / "results" / "label_efficiency-short.jsonl"),
                        help="label_efficiency.py's results: the random-sampling curve the final points are read on")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 30 seed labels + 3 rounds of 20, 2 seeds, 300 test rows, 3 epochs")
    args = parser.parse_args(argv)
    recipe = {key: json.loads(value) if value[:1] in "0123456789-[{tfn" else value
              for key, value in (item.split("=", 1) for item in args.recipe)}
    if args.quick:
        args.seed_labels, args.batch, args.rounds, args.seeds = 30, 20, 3, 2
        args.test_rows = args.test_rows or 300
        recipe = QUICK_RECIPE | recipe
    args.recipe = recipe
    args.strategies = args.strategies.split(",")
    args.finetune_rounds = [int(number) for number in args.finetune_rounds.split(",") if number.strip()]
    if any(not 0 <= number < args.rounds for number in args.finetune_rounds):
        parser.error(f"--finetune-rounds: each in 0..{args.rounds - 1} (the last round is always fine-tuned)")
    unknown = sorted(set(args.strategies) - set(PICKERS))
    if unknown:
        parser.error(f"--strategies: unknown {unknown}; known: {', '.join(STRATEGIES)}")
    args.final_seeds = args.seeds if args.final_seeds is None else args.final_seeds
    home = Path(os.environ.get("FRESHET_HOME", REPO / ".freshet")) / "bench"
    args.cache_dir = args.cache_dir or str(home)
    args.results = args.results or str(home / "active_learning-quick.jsonl" if args.quick
                                       else REPO / "bench" / "results" / "active_learning.jsonl")
    results, base = measure(args)
    efficiency_path = Path(args.efficiency_results)
    print(summary(efficiency.done_points(results), base, args.rounds, recipe_key(args),
                  efficiency.done_points(efficiency_path) if efficiency_path.exists() else []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
