"""Small builders shared by the Bayesian-core tests (tiny networks and toy data).

Everything here is deterministic in its ``seed`` argument, so a subprocess can rebuild the
very same network and data as the test that launched it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


def tiny_mlp(in_dim: int = 4, hidden: int = 6, out_dim: int = 3, seed: int = 0) -> nn.Sequential:
    """``in_dim -> hidden -> out_dim`` ReLU MLP with a seeded initialization."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def tiny_bn_net(in_dim: int = 4, hidden: int = 6, out_dim: int = 3, seed: int = 0) -> nn.Sequential:
    """MLP with a BatchNorm1d between the two Linear layers (paths "0", "1", "3")."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )


def tiny_conv1d(length: int = 12, channels: int = 4, out_dim: int = 3, seed: int = 0) -> nn.Sequential:
    """``[B, 1, L] -> Conv1d -> ReLU -> Flatten -> Linear`` with a seeded initialization."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv1d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * length, out_dim),
        )


def toy_classification(n: int = 64, in_dim: int = 4, num_classes: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Linearly separable-ish blobs: float32 ``[n, in_dim]`` and int64 labels ``[n]``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    centers = 2.0 * torch.randn(num_classes, in_dim, generator=g)
    x = centers[y] + 0.5 * torch.randn(n, in_dim, generator=g)
    return x, y


def toy_regression(n: int = 64, in_dim: int = 4, out_dim: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``y = x A + 0.1 eps``: float32 ``[n, in_dim]`` and float32 ``[n, out_dim]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    a = torch.randn(in_dim, out_dim, generator=g)
    return x, x @ a + 0.1 * torch.randn(n, out_dim, generator=g)


def randomize_posterior(bnn, seed: int = 0, scale_range: tuple[float, float] = (0.05, 0.8)) -> None:
    """Give ``bnn`` a non-trivial posterior: random means and random scales in ``scale_range``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = scale_range
    with torch.no_grad():
        bnn.loc.copy_(torch.randn(bnn.loc.shape, generator=g))
        scale = lo + (hi - lo) * torch.rand(bnn.rho.shape, generator=g)
        bnn.rho.copy_(scale + torch.log(-torch.expm1(-scale)))  # softplus^-1


def without_time(history: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """History rows without the wall-clock column (the only one that may differ between runs)."""
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


def states_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Same keys, bit-identical tensors and equal extra state (e.g. a term's weight)."""
    return list(a) == list(b) and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def clone_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run_cli(cache_dir, args: list[str]) -> int:
    """``bayesdistill.cli.main(args)`` with the dataset cache pointed at ``cache_dir``.

    For module-scoped fixtures, which cannot use the function-scoped ``monkeypatch``.
    """
    import pytest

    from bayesdistill.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAYESDISTILL_CACHE", str(cache_dir))
        return main(args)


class PlainDataset(Dataset):
    """A map-style Dataset that is not a TensorDataset (exercises the DataLoader paths)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def one_line_error(capsys, *needles: str) -> str:
    """The CLI's stderr after a clean failure: one line, no traceback, containing every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


FACTORY_MODULE = '''"""A user's own model and data: factories named by import path in the tests."""
import pathlib

import torch
from torch import nn

# importing this module leaves a trace: the tests check it is absent when the import was refused
pathlib.Path(__file__).with_name("imported.marker").write_text("imported")


def tiny(input_shape, output_dim, hidden=8):
    n = 1
    for d in input_shape:
        n *= int(d)
    return nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, output_dim))


class _Data:
    pass


def data(n=96, seed=0):
    """A DatasetBundle-like object: two classes on 6 features, (inputs, targets) pairs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    d = _Data()
    d.task, d.input_shape, d.output_dim = "classification", (6,), 2
    d.train, d.test = (x[: n * 3 // 4], y[: n * 3 // 4]), (x[n * 3 // 4:], y[n * 3 // 4:])
    return d


def bn_tiny(input_shape, output_dim, hidden=8):
    """With a BatchNorm1d (its running statistics are point estimates) and a deterministic LayerNorm."""
    return nn.Sequential(nn.Linear(int(input_shape[0]), hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.LayerNorm(hidden), nn.Linear(hidden, output_dim))


def not_a_model(input_shape, output_dim):
    return "a string"


NOT_CALLABLE = 3
'''


def write_factory_package(root, name: str):
    """A package ``name`` under ``root`` with the module ``name.nets`` (:data:`FACTORY_MODULE`):
    ``name.nets:tiny`` (a model factory), ``name.nets:data`` (a data-set factory). Returns the
    marker file that importing the module writes. Put ``root`` on ``sys.path`` to use it."""
    from pathlib import Path

    pkg = Path(root) / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY_MODULE)
    return pkg / "imported.marker"
