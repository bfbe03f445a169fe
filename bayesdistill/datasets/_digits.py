"""The scikit-learn 8x8 handwritten digits (bundled with scikit-learn, offline).

Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten
Digits", UCI Machine Learning Repository, 1998 (the test portion, as shipped
in ``sklearn.datasets.load_digits``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._base import DatasetBundle

__all__ = ["load_digits"]

NUM_CLASSES = 10
N_TEST = 360
SPLIT_SEED = 0
_MAX_PIXEL = 16.0


def load_digits() -> DatasetBundle:
    """1437 train / 360 test 8x8 digit images, flattened.

    Inputs are ``float32`` of shape ``[N, 64]``: per-pixel ink counts
    (integers ``0..16`` in the raw data) divided by 16, so in ``[0, 1]``.
    Targets are ``int64`` digit labels in ``0..9``. The split is fixed:
    ``train_test_split(test_size=360, stratify=y, random_state=0)``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x = (x / _MAX_PIXEL).astype(np.float32)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=N_TEST, stratify=y, random_state=SPLIT_SEED
    )
    return DatasetBundle(
        name="digits",
        task="classification",
        train=TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=NUM_CLASSES,
        input_shape=(x.shape[1],),
        output_dim=NUM_CLASSES,
        info={
            "source": (
                "Alpaydin & Kaynak, Optical Recognition of Handwritten Digits "
                "(UCI, 1998)"
            ),
            "split_seed": SPLIT_SEED,
        },
    )
