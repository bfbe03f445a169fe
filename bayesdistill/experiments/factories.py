"""Models and data sets by name: the built-in ones, or a user's own by import path.

A name without a colon is a built-in (``bd.models.available()``, ``bd.datasets.available()``);
``package.module:factory`` names a callable of the user's (``package.module:Class.method`` also
works). Importing a module runs its code, so an import path is used only where the user allows it:
``allow_imports=True``, or a list of the top-level packages allowed (``["mypkg"]``); otherwise
:class:`ImportNotAllowedError` says what would be imported and how to allow it.

The contracts:

- a **model factory** is called as ``factory(input_shape, output_dim, **model_kwargs)``
  (``input_shape``: a tuple without the batch dimension, e.g. ``(40,)``; ``output_dim``: the
  number of classes, or of regression targets) and returns an ``nn.Module`` mapping ``[B,
  *input_shape]`` to ``[B, output_dim]``: the signature of the built-in factories
  (``bd.models.build``);
- a **data-set factory** is called as ``factory(**dataset_kwargs)`` and returns a
  ``bd.datasets.DatasetBundle``, or any object with the attributes ``task``
  (``"classification"`` or ``"regression"``), ``train`` and ``test`` (``TensorDataset`` or
  ``(inputs, targets)`` tensor pairs: float inputs ``[N, *input_shape]``, int64 labels ``[N]`` or
  float targets ``[N, D]``), ``input_shape`` and ``output_dim`` (``name`` and ``num_classes``
  optional). The pipelines take the class-balanced ``train_fraction`` subset themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .. import datasets, models
from ..datasets import DatasetBundle, subset_train
from ..errors import BayesDistillError

__all__ = [
    "ImportPath",
    "ImportNotAllowedError",
    "FactoryError",
    "AllowImports",
    "is_import_path",
    "import_allowed",
    "resolve",
    "check_model_name",
    "check_dataset_name",
    "build_model",
    "load_dataset",
    "as_bundle",
    "architecture_kwargs",
]

#: ``True`` (any import path), ``False`` (none) or the top-level packages allowed.
AllowImports = Union[bool, Sequence[str]]


class ImportNotAllowedError(BayesDistillError, PermissionError):
    """A model or data set named by import path, used without the user's permission to import it."""


class FactoryError(BayesDistillError, ValueError):
    """An import path that does not lead to a usable factory, or a factory that broke its contract."""


@dataclass(frozen=True)
class ImportPath:
    """``package.module:attribute`` split in two."""

    module: str
    attribute: str

    @classmethod
    def parse(cls, text: str, what: str = "factory") -> "ImportPath":
        module, sep, attribute = text.partition(":")
        ok = bool(sep) and all(p.isidentifier() for p in module.split(".")) and all(
            p.isidentifier() for p in attribute.split("."))
        if not ok:
            raise FactoryError(f"{what} {text!r} is not an import path of the form package.module:factory")
        return cls(module, attribute)

    @property
    def package(self) -> str:
        """The top-level package (what an allow list names)."""
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}"


def is_import_path(name: Any) -> bool:
    """Whether ``name`` names a factory by import path (it holds a colon)."""
    return isinstance(name, str) and ":" in name


def import_allowed(path: ImportPath, allow: AllowImports) -> bool:
    """Whether ``allow`` permits importing ``path``: ``True``, or its module is (inside) a listed package."""
    if isinstance(allow, bool):
        return allow
    if isinstance(allow, str):
        allow = [allow]
    return any(path.module == p or path.module.startswith(p + ".") for p in allow)


def resolve(text: str, *, allow_imports: AllowImports = False, what: str = "factory") -> Callable[..., Any]:
    """The callable named by the import path ``text``, imported only if ``allow_imports`` permits.

    Raises:
        ImportNotAllowedError: the import is not allowed (the message names the module and the fix).
        FactoryError: a malformed path, a module that cannot be imported, a missing or
            non-callable attribute.
    """
    path = ImportPath.parse(text, what)
    if not import_allowed(path, allow_imports):
        raise ImportNotAllowedError(
            f"{what} {text!r} is named by import path: using it imports the module {path.module!r} and runs its "
            f"code; allow it with --allow-imports (Python: allow_imports=True or allow_imports=[{path.package!r}])"
        )
    try:
        obj: Any = importlib.import_module(path.module)
    except ImportError as err:
        raise FactoryError(f"{what} {text!r}: cannot import module {path.module!r} ({err})") from err
    for part in path.attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FactoryError(f"{what} {text!r}: module {path.module!r} has no attribute {path.attribute!r}") from None
    if not callable(obj):
        raise FactoryError(f"{what} {text!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def check_model_name(name: str, *, allow_imports: AllowImports = False, what: str = "model") -> None:
    """Fail early (before data are loaded) for an unknown built-in or an unusable import path."""
    if is_import_path(name):
        resolve(name, allow_imports=allow_imports, what=what)
    elif name not in models.available():
        raise KeyError(f"unknown model {name!r}" + (f" for the {what}" if what != "model" else "")
                       + f"; available: {', '.join(models.available())}, or a factory of your own by import path "
                       "package.module:factory (with --allow-imports)")


def check_dataset_name(name: str, *, allow_imports: AllowImports = False) -> None:
    """Fail early for an unknown built-in data set or an unusable import path."""
    if is_import_path(name):
        resolve(name, allow_imports=allow_imports, what="dataset")
    elif name.strip().lower().replace("_", "-") not in datasets.available():
        raise datasets.UnknownDatasetError(
            f"unknown dataset {name!r}; available datasets: {', '.join(datasets.available())}, or a loader of "
            "your own by import path package.module:factory (with --allow-imports)")


def build_model(name: str, input_shape: Sequence[int], output_dim: int, kwargs: Optional[Mapping[str, Any]] = None,
                *, allow_imports: AllowImports = False, what: str = "model") -> nn.Module:
    """The network ``name`` (built-in or import path) for ``input_shape`` and ``output_dim``."""
    kwargs = dict(kwargs or {})
    check_model_name(name, allow_imports=allow_imports, what=what)
    if not is_import_path(name):
        try:
            return models.build(name, input_shape, output_dim, **kwargs)
        except TypeError as err:
            raise FactoryError(f"{what} {name!r}: bad architecture options {kwargs} ({err})") from err
    factory = resolve(name, allow_imports=allow_imports, what=what)
    try:
        net = factory(tuple(int(d) for d in input_shape), int(output_dim), **kwargs)
    except TypeError as err:
        raise FactoryError(f"{what} {name!r}: calling factory(input_shape, output_dim, **{kwargs}) failed ({err})") from err
    if not isinstance(net, nn.Module):
        raise FactoryError(f"{what} {name!r} returned a {type(net).__name__}, not an nn.Module")
    return net


def _tensor_dataset(split: Any, what: str) -> TensorDataset:
    if isinstance(split, TensorDataset):
        return split
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(torch.is_tensor(t) for t in split):
        return TensorDataset(*split)
    raise FactoryError(f"{what} must be a TensorDataset or an (inputs, targets) pair of tensors, "
                       f"got {type(split).__name__}")


def as_bundle(obj: Any, name: str) -> DatasetBundle:
    """A data-set factory's return value as a :class:`~bayesdistill.datasets.DatasetBundle`."""
    if isinstance(obj, DatasetBundle):
        return obj
    needed = ("task", "train", "test", "input_shape", "output_dim")
    missing = [a for a in needed if not hasattr(obj, a)]
    if missing:
        raise FactoryError(f"dataset {name!r} returned a {type(obj).__name__} without {missing}; a data-set factory "
                           "returns a bd.datasets.DatasetBundle or an object with task, train, test, input_shape "
                           "and output_dim")
    task = obj.task
    num_classes = getattr(obj, "num_classes", None)
    if num_classes is None and task == "classification":
        num_classes = int(obj.output_dim)
    try:
        return DatasetBundle(name=str(getattr(obj, "name", None) or name), task=task,
                             train=_tensor_dataset(obj.train, f"dataset {name!r}: train"),
                             test=_tensor_dataset(obj.test, f"dataset {name!r}: test"), num_classes=num_classes,
                             input_shape=tuple(obj.input_shape), output_dim=int(obj.output_dim))
    except (TypeError, ValueError) as err:
        if isinstance(err, FactoryError):
            raise
        raise FactoryError(f"dataset {name!r}: {err}") from err


def load_dataset(name: str, *, train_fraction: float = 1.0, seed: int = 0,
                 kwargs: Optional[Mapping[str, Any]] = None, allow_imports: AllowImports = False) -> DatasetBundle:
    """The data set ``name`` (built-in or import path) with ``train_fraction`` of its training set."""
    if not is_import_path(name):
        if kwargs:
            raise FactoryError(f"dataset options {dict(kwargs)} apply to a data set named by import path, "
                               f"not to the built-in {name!r}")
        return datasets.load(name, train_fraction=train_fraction, seed=seed)
    factory = resolve(name, allow_imports=allow_imports, what="dataset")
    try:
        obj = factory(**dict(kwargs or {}))
    except TypeError as err:
        raise FactoryError(f"dataset {name!r}: calling factory(**{dict(kwargs or {})}) failed ({err})") from err
    bundle = as_bundle(obj, name)
    return subset_train(bundle, train_fraction, seed=seed)


def architecture_kwargs(model: str, *, channels: Optional[int] = None, hidden: Optional[Iterable[int]] = None,
                        strict: bool = False, what: str = "model") -> dict[str, Any]:
    """The built-in architecture options of ``model``: ``channels`` for the 1-D CNNs, ``hidden``
    for ``mlp``.

    ``strict=False`` (a teacher: the recipe's ``channels`` applies to ``cnn`` only, as its
    default) drops options the model does not take; ``strict=True`` (options the user gave)
    raises ``FactoryError`` for them.
    """
    kw: dict[str, Any] = {}
    cnn = model in ("cnn", "cnn-deep", "cnn-small") if strict else model == "cnn"
    if channels is not None:
        if cnn:
            kw["channels"] = int(channels)
        elif strict:
            raise FactoryError(f"--channels applies to cnn {what}s, not {model!r}")
    if hidden is not None:
        if model == "mlp":
            kw["hidden"] = [int(h) for h in hidden]
        elif strict:
            raise FactoryError(f"--hidden applies to mlp {what}s, not {model!r}")
    return kw
