"""Shared pieces of the generated benchmarks: how visual prototypes are planted from word vectors."""

from __future__ import annotations

import math

import numpy as np


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-8)


def text_prototypes(vectors: np.ndarray, D: int, hidden: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``[n, D]`` unit visual prototypes of ``n`` word vectors:
    ``normalise(normalise(W2 tanh(1.5 sqrt(E) W1 w/|w|)) + noise * xi)`` with fixed random ``W1``
    ``[E, hidden]``, ``W2`` ``[hidden, D]`` and per-row noise ``xi``, all drawn from ``rng`` in that
    order. The map is smooth in ``w``, so a word never seen in training stays predictable from its
    vector; ``noise`` sets how much of each prototype is not."""
    n, E = vectors.shape
    W1 = rng.standard_normal((E, hidden)) / math.sqrt(E)
    W2 = rng.standard_normal((hidden, D)) / math.sqrt(hidden)
    text = unit(vectors.astype(np.float64))
    mapped = unit(np.tanh(1.5 * math.sqrt(E) * (text @ W1)) @ W2)
    return unit(mapped + noise * unit(rng.standard_normal((n, D))))
