"""The lexical baseline: TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, fitted in seconds.

Every round fits it on the candidate's own train rows and reports it beside the candidate (a one-second
model that beats the served one must never go unnoticed); blended with the transformer it is part of what
freshet serves (tasks/models/blend.py). Saved as JSON and .npy arrays, no pickle: the vocabulary in feature
order, the idf weights and the classifier's coefficients.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from tasks.config import BaselineConfig

FORMAT_VERSION = 1


class BaselineSkipped(ValueError):
    """The baseline cannot be fitted on these rows (no rows, one class): reported with the reason, never a crash."""


@dataclass
class LexicalModel:
    """TF-IDF features -> per-class scores -> softmax (sigmoid for two fitted classes), over `labels`."""

    labels: list[str]  # the probability columns, in the run's label order
    vocabulary: list[str]  # n-gram of each feature column
    idf: np.ndarray  # (features,)
    coef: np.ndarray  # (fitted classes, features); one row when two classes were fitted
    intercept: np.ndarray  # (fitted classes,)
    class_columns: np.ndarray  # the column in `labels` of each fitted class
    ngram_max: int
    lowercase: bool

    @classmethod
    def fit(cls, texts: Sequence[str], targets: Sequence[str], labels: Sequence[str],
            settings: BaselineConfig) -> LexicalModel:
        labels = list(labels)
        unknown = sorted(set(targets) - set(labels))
        if unknown:
            raise BaselineSkipped(f"train rows carry labels outside the label set: {unknown}")
        if not texts:
            raise BaselineSkipped("no train rows")
        present = sorted(set(targets), key=labels.index)
        if len(present) < 2:
            raise BaselineSkipped(f"the train rows hold one class only ({present[0]!r})")
        vectorizer = TfidfVectorizer(ngram_range=(1, settings.ngram_max), sublinear_tf=True,
                                     lowercase=settings.lowercase, min_df=settings.min_df, dtype=np.float64)
        try:
            features = vectorizer.fit_transform(texts)
        except ValueError as error:  # an empty vocabulary: every text was stop characters
            raise BaselineSkipped(f"no word features in the train rows ({error})") from None
        classifier = LogisticRegression(C=settings.c, max_iter=settings.max_iter)
        classifier.fit(features, [present.index(target) for target in targets])
        vocabulary = [""] * len(vectorizer.vocabulary_)
        for term, column in vectorizer.vocabulary_.items():
            vocabulary[column] = term
        return cls(labels=labels, vocabulary=vocabulary, idf=np.asarray(vectorizer.idf_, dtype=np.float64),
                   coef=np.asarray(classifier.coef_, dtype=np.float64),
                   intercept=np.asarray(classifier.intercept_, dtype=np.float64),
                   class_columns=np.asarray([labels.index(label) for label in present], dtype=np.int64),
                   ngram_max=settings.ngram_max, lowercase=settings.lowercase)

    @functools.cached_property
    def _counter(self) -> CountVectorizer:
        # Built once per loaded model: the vocabulary dict is the costly part (100k+ n-grams), not a request.
        return CountVectorizer(ngram_range=(1, self.ngram_max), lowercase=self.lowercase, dtype=np.float64,
                               vocabulary={term: column for column, term in enumerate(self.vocabulary)})

    @functools.cached_property
    def _idf_diagonal(self) -> sparse.dia_matrix:
        return sparse.diags(self.idf)

    def features(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """What TfidfVectorizer computes (1 + log tf, times idf, L2 rows), from the saved vocabulary alone."""
        counts = self._counter.transform(list(texts)).tocsr()
        counts.data = 1.0 + np.log(counts.data)
        return normalize(counts @ self._idf_diagonal, norm="l2", copy=False).tocsr()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(rows, len(labels)) probabilities; a label the train rows never had gets 0."""
        probabilities = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not len(texts):
            return probabilities
        scores = self.features(texts) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # two classes: sklearn fits one row, for the second class
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            fitted = np.stack([1.0 - positive, positive], axis=1)
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            fitted = shifted / shifted.sum(axis=1, keepdims=True)
        probabilities[:, self.class_columns] = fitted
        return probabilities

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "lexical.json").write_text(json.dumps({
            "format": FORMAT_VERSION, "kind": "tfidf-logistic-regression", "labels": self.labels,
            "class_columns": self.class_columns.tolist(), "ngram_max": self.ngram_max, "lowercase": self.lowercase,
            "vocabulary": self.vocabulary}))
        for name in ("idf", "coef", "intercept"):
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)
        return directory

    @classmethod
    def load(cls, directory: Path) -> LexicalModel:
        meta = json.loads((directory / "lexical.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory}/lexical.json: format {meta.get('format')!r}, this freshet reads "
                             f"{FORMAT_VERSION}")
        arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in ("idf", "coef", "intercept")}
        return cls(labels=list(meta["labels"]), vocabulary=list(meta["vocabulary"]),
                   class_columns=np.asarray(meta["class_columns"], dtype=np.int64), ngram_max=int(meta["ngram_max"]),
                   lowercase=bool(meta["lowercase"]), **arrays)
