"""Shared task: linear regression on synthetic data, one partition per SuperNode."""

from __future__ import annotations

import numpy as np

FEATURES = 8
TRUE_W = np.linspace(-1.0, 1.0, FEATURES)


def partition(partition_id: int, site: int = 0, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The SuperNode's local data: its own seed (its site and its partition there), the same
    underlying model for everyone."""
    rng = np.random.default_rng(1000 + 100 * site + partition_id)
    x = rng.normal(size=(n, FEATURES))
    y = x @ TRUE_W + 0.01 * rng.normal(size=n)
    return x, y


def loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w - y) ** 2))


def local_steps(w: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> np.ndarray:
    w = w.copy()
    for _ in range(steps):
        w -= lr * 2.0 * x.T @ (x @ w - y) / len(y)
    return w
