"""The served blend of the fine-tuned transformer and the lexical baseline, and how it is chosen.

p = w * calibrated(p_transformer) + (1 - w) * calibrated(p_lexical). On the trainer's validation rows (which
neither model learned from), each model's probabilities are first calibrated by one temperature (the log-loss
minimiser; a fine-tune on a few hundred rows is far less confident than it is right, a strongly regularised
linear model the other way), then w in [0, 1] is the weight of lowest log-loss: a smooth function of w, so
the choice is stable on the small validation splits of the first days, where macro-F1 over 50-150 rows jumps
between neighbouring weights. w = 1 is the transformer alone, w = 0 the baseline alone: the round serves
whichever of the three the validation split prefers. Saved as `blend.json` + the lexical model's files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.models.lexical import LexicalModel

BLEND_FILE = "blend.json"
LEXICAL_DIR = "lexical"


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens, T < 1 sharpens; the argmax never changes."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exponentiated = np.exp(logits)
    return (exponentiated / exponentiated.sum(axis=1, keepdims=True)).astype(probabilities.dtype)


@dataclass
class Blend:
    weight: float  # the transformer's share
    lexical: LexicalModel
    transformer_temperature: float = 1.0
    lexical_temperature: float = 1.0

    def mix(self, texts: Sequence[str], transformer_probabilities: np.ndarray) -> np.ndarray:
        lexical = self.lexical.predict_proba(texts).astype(transformer_probabilities.dtype)
        return (self.weight * tempered(transformer_probabilities, self.transformer_temperature)
                + (1.0 - self.weight) * tempered(lexical, self.lexical_temperature))

    def save(self, directory: Path) -> Path:
        self.lexical.save(directory / LEXICAL_DIR)
        (directory / BLEND_FILE).write_text(json.dumps({
            "weight": self.weight, "transformer_temperature": self.transformer_temperature,
            "lexical_temperature": self.lexical_temperature, "labels": self.lexical.labels, "lexical": LEXICAL_DIR}))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Blend:
        meta = json.loads((directory / BLEND_FILE).read_text())
        return cls(weight=float(meta["weight"]), lexical=LexicalModel.load(directory / meta["lexical"]),
                   transformer_temperature=float(meta.get("transformer_temperature", 1.0)),
                   lexical_temperature=float(meta.get("lexical_temperature", 1.0)))


def load_blend(directory: Path | None) -> Blend | None:
    """The blend saved in `directory`, or None where there is none (a transformer-alone version)."""
    if directory is None or not (Path(directory) / BLEND_FILE).exists():
        return None
    return Blend.load(Path(directory))


@dataclass(frozen=True)
class WeightChoice:
    weight: float
    log_loss: float
    grid: list[tuple[float, float]]  # (weight, validation log-loss) for every weight tried
    transformer_temperature: float = 1.0
    lexical_temperature: float = 1.0
    unshrunk_weight: float | None = None  # the validation rows' own choice, before the prior


PRIOR_ROWS = 100


def _log_loss(truth: np.ndarray, probabilities: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(truth.size), truth], 1e-12, 1.0))))


def fit_temperature(truth: Sequence[int] | np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature of lowest log-loss on `truth` (bounded to [0.05, 20]): calibration by one number."""
    from scipy.optimize import minimize_scalar

    truth_array = np.asarray(truth, dtype=np.int64)
    result = minimize_scalar(lambda log_t: _log_loss(truth_array, tempered(probabilities, float(np.exp(log_t)))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(result.x))


def choose_weight(truth: Sequence[int] | np.ndarray, transformer: np.ndarray, lexical: np.ndarray, points: int = 21,
                  calibrate: bool = True) -> WeightChoice:
    """Each model calibrated by a temperature, then the transformer's weight with the lowest mean log-loss on
    `truth`; ties go to the larger weight."""
    truth_array = np.asarray(truth, dtype=np.int64)
    if truth_array.size == 0:
        raise ValueError("choosing a blend weight needs validation rows")
    transformer_t = fit_temperature(truth_array, transformer) if calibrate else 1.0
    lexical_t = fit_temperature(truth_array, lexical) if calibrate else 1.0
    calibrated_transformer, calibrated_lexical = tempered(transformer, transformer_t), tempered(lexical, lexical_t)
    grid = [(float(weight), _log_loss(truth_array, weight * calibrated_transformer + (1 - weight) * calibrated_lexical))
            for weight in np.linspace(0.0, 1.0, points)]
    best = min(grid, key=lambda point: (round(point[1], 12), -point[0]))[0]
    # A prior towards an even blend, worth PRIOR_ROWS validation rows: 50 rows pick a weight by luck as often as
    # by merit (measured in bench/label_efficiency.py), 2,000 rows all but decide it alone. Snapped to the grid.
    shrunk = (truth_array.size * best + PRIOR_ROWS * 0.5) / (truth_array.size + PRIOR_ROWS)
    weight, loss = min(grid, key=lambda point: abs(point[0] - shrunk))
    return WeightChoice(weight=weight, log_loss=loss, grid=grid, transformer_temperature=transformer_t,
                        lexical_temperature=lexical_t, unshrunk_weight=best)
