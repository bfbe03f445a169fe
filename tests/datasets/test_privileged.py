"""The privileged-information setups (Lopez-Paz et al. 2016, section 5) against their definitions:
labels, privileged features, shapes, standardization, determinism, the registry, subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayesdistill as bd
from bayesdistill.datasets import PrivilegedDataset, privileged_synthetic


def _raw(experiment, variant="text", n_train=300, n_test=500, dim=12, seed=3):
    return privileged_synthetic(experiment, n_train=n_train, n_test=n_test, dim=dim, seed=seed, standardize=False,
                                variant=variant)


def test_experiment_1_clean_labels():
    b = _raw(1)
    alpha = b.info["alpha"]
    for split in (b.train, b.test):
        # x* = <alpha, x> exactly; y = 1[x* + eps > 0] with eps ~ N(0, 1): y agrees with sign(x*)
        # except where the noise flips it (|x*| small)
        torch.testing.assert_close(split.privileged[:, 0], split.x @ alpha, rtol=1e-4, atol=1e-4)
        clean = (split.privileged[:, 0] > 0).long()
        far = split.privileged[:, 0].abs() > 4  # 4 noise standard deviations
        assert torch.equal(split.y[far], clean[far])
        assert 0.02 < float((split.y != clean).float().mean()) < 0.15  # the corrupted labels
    # the noise is N(0, 1): recover it from the same generator stream
    rng = np.random.default_rng(3)
    a = rng.standard_normal(12)
    x = rng.standard_normal((300, 12))
    eps = rng.standard_normal(300)
    np.testing.assert_allclose(b.train.x.numpy(), x, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b.train.y.numpy(), ((x @ a + eps) > 0).astype(np.int64))
    assert b.info["privileged_shape"] == (1,)


def test_experiment_2_clean_features():
    b = _raw(2)
    alpha = b.info["alpha"]
    rng = np.random.default_rng(3)
    rng.standard_normal(12)
    xs = rng.standard_normal((300, 12))
    eps = rng.standard_normal((300, 12))
    np.testing.assert_allclose(b.train.privileged.numpy(), xs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.train.x.numpy(), xs + eps, rtol=1e-5, atol=1e-5)
    for split in (b.train, b.test):
        assert torch.equal(split.y, (split.privileged @ alpha > 0).long())
    assert b.info["privileged_shape"] == (12,)


def test_experiment_3_relevant_features():
    b = _raw(3)
    alpha = b.info["alpha"]
    for split in (b.train, b.test):
        assert torch.equal(split.privileged, split.x[:, :3])
        assert torch.equal(split.y, (split.privileged @ alpha[:3] > 0).long())
    assert b.info["privileged_shape"] == (3,)


def test_experiment_4_text_sample_dependent_features():
    b = _raw(4, "text")
    alpha = b.info["alpha"]
    for split in (b.train, b.test):
        x, xs = split.x, split.privileged
        assert xs.shape == (len(x), 3)
        # each row's x* are three distinct entries of its x, with the label from alpha at those columns
        cols = [[int((x[i] == v).nonzero()[0]) for v in xs[i]] for i in range(len(x))]
        assert all(len(set(c)) == 3 for c in cols)
        labels = torch.tensor([int(float((alpha[c] * xs[i]).sum()) > 0) for i, c in enumerate(cols)])
        assert torch.equal(split.y, labels)
    # the column sets vary from example to example
    sets = {tuple(sorted(int((b.train.x[i] == v).nonzero()[0]) for v in b.train.privileged[i])) for i in range(50)}
    assert len(sets) > 40


def test_experiment_4_code_one_column_set_per_draw_and_a_median_threshold():
    b = _raw(4, "code")
    alpha = b.info["alpha"]
    j_tr, j_te = b.info["J_train"], b.info["J_test"]
    assert len(set(j_tr)) == 3 and len(set(j_te)) == 3
    for split, J in ((b.train, j_tr), (b.test, j_te)):
        assert torch.equal(split.privileged, split.x[:, J])
        assert abs(float(split.y.float().mean()) - 0.5) < 0.01  # balanced by the median
    # the authors' synthetic_04 on the same generator stream: alpha, then per set x, J, median threshold
    rng = np.random.default_rng(3)
    a = rng.standard_normal(12)
    for split, size in ((b.train, 300), (b.test, 500)):
        x = rng.standard_normal((size, 12))
        J = rng.permutation(12)[:3]
        score = x[:, J] @ a[:3]  # alpha[:3], whatever J is
        np.testing.assert_array_equal(split.y.numpy(), (score > np.median(score)).astype(np.int64))
        np.testing.assert_allclose(split.privileged.numpy(), x[:, J], rtol=1e-6, atol=1e-6)
    # the training and test sets are drawn with different column sets (for these seeds)
    assert any(set(privileged_synthetic(4, n_train=10, n_test=10, seed=s, variant="code").info["J_train"])
               != set(privileged_synthetic(4, n_train=10, n_test=10, seed=s, variant="code").info["J_test"])
               for s in range(3))


def test_experiment_4_code_top3_the_three_largest_entries():
    b = _raw(4, "code-top3")
    alpha = b.info["alpha"]
    rng = np.random.default_rng(3)
    a = rng.standard_normal(12)
    for split, size in ((b.train, 300), (b.test, 500)):
        top3 = split.x.sort(dim=1, descending=True).values[:, :3]
        assert torch.equal(split.privileged, top3)  # sample-dependent columns: each row's largest
        x = rng.standard_normal((size, 12))
        score = np.sort(x, axis=1)[:, ::-1][:, :3] @ a[:3]
        np.testing.assert_array_equal(split.y.numpy(), (score > np.median(score)).astype(np.int64))
    assert torch.equal(alpha, torch.from_numpy(a.astype(np.float32)))


def test_standardization_uses_the_training_statistics():
    raw, std = _raw(2), privileged_synthetic(2, n_train=300, n_test=500, dim=12, seed=3)
    for attr in ("x", "privileged"):
        tr_raw, te_raw = getattr(raw.train, attr).double(), getattr(raw.test, attr).double()
        mean, sd = tr_raw.mean(0), tr_raw.std(0, unbiased=False)
        torch.testing.assert_close(getattr(std.train, attr).double(), (tr_raw - mean) / sd, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(getattr(std.test, attr).double(), (te_raw - mean) / sd, rtol=1e-4, atol=1e-4)
    assert torch.equal(raw.train.y, std.train.y)


def test_shapes_dtypes_determinism_and_defaults():
    b = privileged_synthetic(1, seed=0)
    assert (len(b.train), len(b.test)) == (200, 10_000)  # the paper's sizes
    assert b.input_shape == (50,) and b.num_classes == 2 and b.output_dim == 2 and b.task == "classification"
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    again = privileged_synthetic(1, seed=0)
    other = privileged_synthetic(1, seed=1)
    for t, u in zip(b.train.tensors, again.train.tensors):
        assert torch.equal(t, u)
    assert not torch.equal(b.train.x, other.train.x)
    item = b.train[5]
    assert set(item) == {"x", "privileged", "y"} and torch.equal(item["x"], b.train.x[5])
    x, y = b.tensors("train")  # the regular view
    assert x is b.train.x and y is b.train.y
    assert b.train.side_names == ("privileged",)


def test_registry_names_and_train_fraction_keep_the_privileged_inputs():
    for name, (e, v) in {"privileged-clean-labels": (1, "text"), "privileged-clean-features": (2, "text"),
                         "privileged-relevant-features": (3, "text"), "privileged-sample-dependent": (4, "text"),
                         "privileged-sample-dependent-code": (4, "code"),
                         "privileged-sample-dependent-top3": (4, "code-top3")}.items():
        b = bd.datasets.load(name, seed=2)
        assert b.name == name and b.info["experiment"] == e and b.info["variant"] == v
        assert isinstance(b.train, PrivilegedDataset) and isinstance(b.test, PrivilegedDataset)
    half = bd.datasets.load("privileged-relevant-features", seed=2, train_fraction=0.5)
    assert isinstance(half.train, PrivilegedDataset) and len(half.train) == 100
    assert torch.equal(half.train.privileged, half.train.x[:, :3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="experiment"):
        privileged_synthetic(5)
    with pytest.raises(ValueError, match="variant"):
        privileged_synthetic(4, variant="paper")
    with pytest.raises(ValueError, match="experiment 4"):
        privileged_synthetic(1, variant="code")
    with pytest.raises(ValueError, match="dim"):
        privileged_synthetic(3, dim=2)
    with pytest.raises(ValueError, match="differ in length"):
        PrivilegedDataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="0-d"):
        PrivilegedDataset(torch.zeros(3, 2), torch.tensor(1), torch.zeros(3, 1))
