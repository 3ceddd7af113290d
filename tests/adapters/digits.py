"""scikit-learn's bundled 8x8 digits: the real dataset the adapter tests train on (no download)."""

from __future__ import annotations

import numpy as np


def digits(seed: int = 0, test_fraction: float = 0.25):
    """``(x_train, y_train, x_test, y_test)``: images ``(n, 8, 8)`` in [0, 1], labels 0-9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    cut = int(len(labels) * (1 - test_fraction))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]
