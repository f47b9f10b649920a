"""Label metrics from a confusion matrix: accuracy (or agreement), Cohen's kappa, per-class
precision, recall, F1 and support, as scikit-learn defines them (``zero_division=0``).

Labels are coded per column (``Vocab``); a row without a valid label (an error, or a
null value) is predicted as ``NO_LABEL``, a class no truth has, so it counts as wrong.
Rows whose truth is missing are left out. Counts are summed chunk by chunk into one
matrix (``Tally``), so nothing is held per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

NO_LABEL = "(no valid label)"
Codes = npt.NDArray[np.int64]


class Vocab:
    """Each label's code (0, 1, ...) in the order first seen; -1 for no label."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self._codes: dict[str, int] = {}

    def codes(self, array: pa.Array[Any] | pa.ChunkedArray[Any]) -> Codes:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if not pa.types.is_string(array.type):
            array = array.cast(pa.string())
        encoded = cast("pa.DictionaryArray[Any, Any]", pc.dictionary_encode(array))
        known = [self._code(str(value)) for value in encoded.dictionary.to_pylist()]
        lookup = np.array([*known, -1], dtype=np.int64)
        indices = encoded.indices.fill_null(len(known)).to_numpy(zero_copy_only=False)
        codes: Codes = lookup[indices]
        return codes

    def _code(self, label: str) -> int:
        code = self._codes.get(label)
        if code is None:
            code = self._codes[label] = len(self.labels)
            self.labels.append(label)
        return code


@dataclass
class Tally:
    """Counts of (truth, prediction) pairs; index 0 is ``NO_LABEL``, label code c is c + 1."""

    matrix: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((1, 1), np.int64))

    def add(self, truth: Codes, predicted: Codes, labels: int) -> None:
        """Add rows; ``truth`` -1 leaves a row out, ``predicted`` -1 is no valid label."""
        keep = truth >= 0
        size = labels + 1
        pairs = (truth[keep] + 1) * size + (predicted[keep] + 1)
        counts = np.bincount(pairs, minlength=size * size).reshape(size, size)
        if self.matrix.shape[0] < size:
            grown = np.zeros((size, size), np.int64)
            old = self.matrix.shape[0]
            grown[:old, :old] = self.matrix
            self.matrix = grown
        self.matrix[:size, :size] += counts


@dataclass(frozen=True)
class Scores:
    """One variant's labels for one column, against the truth."""

    accuracy: float | None
    kappa: float | None
    per_class: dict[str, dict[str, float | int]]
    labels: list[str]  # the confusion matrix's rows (truth) and columns (predicted)
    matrix: list[list[int]]
    compared: int  # rows with a truth


def scores(tally: Tally, vocab: Vocab) -> Scores:
    """The metrics of a tally; the classes are the labels seen in truth or prediction."""
    full = tally.matrix
    seen = [
        code
        for code in range(len(vocab.labels))
        if code + 1 < full.shape[0] and (full[code + 1, :].sum() or full[:, code + 1].sum())
    ]
    seen.sort(key=lambda code: vocab.labels[code])
    order = [code + 1 for code in seen] + [0]
    matrix = full[np.ix_(order, order)]
    total = int(matrix.sum())
    labels = [vocab.labels[code] for code in seen]
    truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    hits = np.diag(matrix)
    return Scores(
        accuracy=float(hits.sum() / total) if total else None,
        kappa=_kappa(matrix, total),
        per_class={
            label: _class(int(hits[i]), int(predicted[i]), int(truth[i]))
            for i, label in enumerate(labels)
        },
        labels=[*labels, NO_LABEL],
        matrix=matrix.tolist(),
        compared=total,
    )


def _kappa(matrix: npt.NDArray[np.int64], total: int) -> float | None:
    if not total:
        return None
    observed = np.trace(matrix) / total
    expected = float((matrix.sum(axis=1) * matrix.sum(axis=0)).sum()) / (total * total)
    return None if expected == 1 else float((observed - expected) / (1 - expected))


def _class(hits: int, predicted: int, truth: int) -> dict[str, float | int]:
    false_pos, false_neg = predicted - hits, truth - hits
    return {
        "precision": hits / predicted if predicted else 0.0,
        "recall": hits / truth if truth else 0.0,
        "f1": 2 * hits / (2 * hits + false_pos + false_neg) if hits else 0.0,
        "support": truth,
    }
