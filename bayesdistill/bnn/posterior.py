"""The mean-field Gaussian posterior q(w) = prod_i N(w_i | loc_i, scale_i^2) as a plain object.

A :class:`MeanFieldPosterior` is what a trained :class:`~bayesdistill.BNN` hands over: a
mapping from parameter names (``"features.0.weight"``) to ``(loc, scale)`` tensor pairs, in the
network's parameter order, plus the point estimates (deterministic parameters and buffers such
as BatchNorm statistics) that predictions need. It is the teacher's posterior that becomes the
student's prior in Bayesian distillation (Grabovoy & Strijov, 2021).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import atomic_write, check_plain, read_torch_file
from ..errors import PosteriorFormatError, PosteriorMismatchError

__all__ = ["MeanFieldPosterior", "ParamInfo", "atomic_save"]

FORMAT_NAME = "bayesdistill.MeanFieldPosterior"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ParamInfo:
    """Where a Bayesian parameter lives: its module path, module type and parameter attribute."""

    module: str
    module_type: str
    attr: str


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then ``os.replace``.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    return atomic_write(path, lambda fh: torch.save(obj, fh))


@dataclass
class MeanFieldPosterior(Mapping[str, tuple[Tensor, Tensor]]):
    """A mean-field Gaussian posterior over named weight tensors.

    ``q[name]`` is ``(loc, scale)``, two tensors of the parameter's shape; ``scale`` is a
    standard deviation (same units as the weight), strictly positive.

    Args:
        locs: parameter name -> posterior mean, in the network's parameter order.
        scales: parameter name -> posterior standard deviation (same keys and shapes as ``locs``).
        info: parameter name -> :class:`ParamInfo` (module path and type the weight belongs to).
        point_estimates: deterministic parameters and buffers of the network (BatchNorm running
            statistics, layers kept deterministic, a learned likelihood noise), name -> tensor.
        metadata: free-form JSON-like data (architecture name, dataset, likelihood, ...); only
            plain values (str, int, float, bool, ``None``, lists, tuples, dicts with str keys)
            can be saved, which :meth:`save` checks before writing anything.

    Raises:
        PosteriorMismatchError: ``locs`` and ``scales`` differ in names, order or shapes.
    """

    locs: dict[str, Tensor]
    scales: dict[str, Tensor]
    info: dict[str, ParamInfo] = field(default_factory=dict)
    point_estimates: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if list(self.locs) != list(self.scales):
            raise PosteriorMismatchError(
                f"locs and scales must have the same names in the same order; "
                f"got locs={list(self.locs)} and scales={list(self.scales)}"
            )
        for name, loc in self.locs.items():
            scale = self.scales[name]
            if not (torch.is_tensor(loc) and torch.is_tensor(scale)):
                raise TypeError(
                    f"posterior entry {name!r}: loc and scale must be tensors, got {type(loc).__name__} "
                    f"and {type(scale).__name__}"
                )
            if loc.shape != scale.shape:
                raise PosteriorMismatchError(
                    f"posterior entry {name!r}: loc has shape {tuple(loc.shape)} but scale has "
                    f"shape {tuple(scale.shape)}"
                )
            _check_entry(name, loc, scale, "posterior")

    # --- Mapping protocol -------------------------------------------------------------
    def __getitem__(self, name: str) -> tuple[Tensor, Tensor]:
        try:
            return self.locs[name], self.scales[name]
        except KeyError:
            raise KeyError(
                f"no parameter {name!r} in this posterior; it has: {', '.join(self.locs)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.locs)

    def __len__(self) -> int:
        return len(self.locs)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self.locs.values())
        lines = [f"MeanFieldPosterior({len(self)} tensors, {n} weights)"]
        for name, (loc, scale) in self.items():
            lines.append(
                f"  {name:<30} {str(tuple(loc.shape)):<18} |loc| {loc.abs().mean():.3g}  "
                f"scale {scale.mean():.3g}"
            )
        return "\n".join(lines)

    # --- derived quantities -----------------------------------------------------------
    @property
    def shapes(self) -> dict[str, torch.Size]:
        """Parameter name -> shape."""
        return {k: v.shape for k, v in self.locs.items()}

    @property
    def device(self) -> torch.device:
        return next(iter(self.locs.values())).device

    def num_weights(self) -> int:
        """Total number of Bayesian weights (scalars)."""
        return sum(t.numel() for t in self.locs.values())

    def snr(self) -> dict[str, Tensor]:
        """Signal-to-noise ratio ``|loc| / scale`` per weight (dimensionless), name -> tensor."""
        return {k: self.locs[k].abs() / self.scales[k] for k in self.locs}

    def sample(
        self, sample_shape: torch.Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw weights ``w ~ q``; each tensor has shape ``sample_shape + param_shape``."""
        out = {}
        for name, (loc, scale) in self.items():
            shape = torch.Size(sample_shape) + loc.shape
            eps = torch.randn(shape, generator=generator, dtype=loc.dtype, device=loc.device)
            out[name] = loc + scale * eps
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MeanFieldPosterior":
        """A copy on ``device`` (and/or floating ``dtype``)."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return MeanFieldPosterior(
            {k: move(v) for k, v in self.locs.items()},
            {k: move(v) for k, v in self.scales.items()},
            dict(self.info),
            {k: move(v) for k, v in self.point_estimates.items()},
            dict(self.metadata),
        )

    def clone(self) -> "MeanFieldPosterior":
        """A deep copy (tensors cloned, metadata copied)."""
        import copy

        return MeanFieldPosterior(
            {k: v.detach().clone() for k, v in self.locs.items()},
            {k: v.detach().clone() for k, v in self.scales.items()},
            dict(self.info),
            {k: v.detach().clone() for k, v in self.point_estimates.items()},
            copy.deepcopy(self.metadata),
        )

    def check_compatible(self, shapes: Mapping[str, torch.Size], what: str = "network") -> None:
        """Raise :class:`PosteriorMismatchError` unless names and shapes equal ``shapes``."""
        missing = [k for k in shapes if k not in self.locs]
        extra = [k for k in self.locs if k not in shapes]
        if missing or extra:
            raise PosteriorMismatchError(
                f"this posterior belongs to another {what}: "
                + (f"parameters the {what} has but the posterior lacks: {missing}; " if missing else "")
                + (f"parameters the posterior has but the {what} lacks: {extra}" if extra else "")
            )
        for k, shape in shapes.items():
            if self.locs[k].shape != torch.Size(shape):
                raise PosteriorMismatchError(
                    f"parameter {k!r}: the {what} expects shape {tuple(shape)}, the posterior has "
                    f"{tuple(self.locs[k].shape)}"
                )

    # --- persistence ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A plain, ``torch.save``-able dict (the on-disk format, version 1)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "names": list(self.locs),
            "locs": {k: v.detach().cpu() for k, v in self.locs.items()},
            "scales": {k: v.detach().cpu() for k, v in self.scales.items()},
            "info": {k: (i.module, i.module_type, i.attr) for k, i in self.info.items()},
            "point_estimates": {k: v.detach().cpu() for k, v in self.point_estimates.items()},
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_state(cls, state: Any, *, map_location: torch.device | str | None = None, source: str = "state") -> "MeanFieldPosterior":
        """Inverse of :meth:`state`; validates the format and raises :class:`PosteriorFormatError`."""
        if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
            raise PosteriorFormatError(
                f"{source} is not a bayesdistill posterior (expected a dict with format="
                f"{FORMAT_NAME!r}; got {type(state).__name__}"
                + (f" with format={state.get('format')!r}" if isinstance(state, dict) else "")
                + ")"
            )
        version = state.get("version")
        if version != FORMAT_VERSION:
            raise PosteriorFormatError(
                f"{source} has posterior format version {version!r}; this bayesdistill reads "
                f"version {FORMAT_VERSION}. Upgrade bayesdistill or re-save the posterior."
            )
        try:
            names = state["names"]
            locs = {k: state["locs"][k].to(map_location) for k in names}
            scales = {k: state["scales"][k].to(map_location) for k in names}
            info = {k: ParamInfo(*v) for k, v in state.get("info", {}).items()}
            points = {k: v.to(map_location) for k, v in state.get("point_estimates", {}).items()}
        except (KeyError, TypeError, AttributeError) as err:
            raise PosteriorFormatError(f"{source} is a damaged posterior: missing or bad field ({err})") from err
        for k, sc in scales.items():
            _check_entry(k, locs[k], sc, source)
        return cls(locs, scales, info, points, dict(state.get("metadata", {})))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior to ``path`` atomically (temporary file + ``os.replace``).

        ``metadata`` must hold plain values (str, int, float, bool, None, lists, tuples, dicts
        with str keys) so that :meth:`load` can read the file with ``weights_only=True``.
        """
        check_plain(self.metadata, "metadata", what="posterior")
        return atomic_save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = "cpu") -> "MeanFieldPosterior":
        """Read a posterior written by :meth:`save`, onto ``map_location`` (any device).

        Raises:
            FileNotFoundError: no file at ``path``.
            PosteriorFormatError: the file is corrupt, truncated or not a posterior.
        """
        state = read_torch_file(path, "posterior", PosteriorFormatError)
        return cls.from_state(state, map_location=map_location, source=repr(str(path)))


def _check_entry(name: str, loc: Tensor, scale: Tensor, source: str) -> None:
    """Means finite, scales finite and > 0, else :class:`PosteriorFormatError` naming the entry."""
    bad_loc = int((~torch.isfinite(loc)).sum()) if loc.is_floating_point() else 0
    bad_scale = int((~(torch.isfinite(scale) & (scale > 0))).sum())
    if bad_loc or bad_scale:
        what = []
        if bad_loc:
            what.append(f"{bad_loc} non-finite means")
        if bad_scale:
            what.append(f"{bad_scale} scales that are not finite and > 0 (min {float(scale.min()):.3g})")
        raise PosteriorFormatError(
            f"{source} entry {name!r} has {' and '.join(what)}; a posterior needs finite means and "
            "positive, finite standard deviations"
        )
