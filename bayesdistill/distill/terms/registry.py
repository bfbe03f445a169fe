"""The registry of distillation terms: one place that knows every term by name.

Each term class registers itself with a decorator, naming its command-line options and a
factory::

    @register_term("kd", options=[TermOption("temperature", float, 4.0, "softmax temperature T",
                                             range="(0, inf)"), ...],
                   build=lambda teacher, pairs, temperature, weight: [KD(teacher, temperature, weight)])
    class KD(DistillTerm): ...

- :data:`TERMS` (name -> :class:`TermSpec`), :func:`available_terms`, :func:`get_term`,
  :func:`unregister_term`;
- for a command line: :func:`add_term_options` adds ``--<term>-<option>`` for every option of
  every registered term (``--kd-temperature``, ``--vid-weight``, ...; argparse ``dest``
  ``<term>_<option>``), :func:`term_options` reads their values back, and
  :func:`terms_from_options` builds the terms of chosen methods from them; :func:`term_defaults`
  are the options' defaults (``{"kd_temperature": 4.0, ...}``).

A new term is one module with one decorated class: the CLI's ``--method`` choices and flags,
:func:`~bayesdistill.fit` (history columns ``distill/<name>/<metric>``) and the plots find it
without any other edit.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ...infer.objective import Term

__all__ = ["TermOption", "TermSpec", "TERMS", "register_term", "unregister_term", "available_terms", "get_term",
           "add_term_options", "term_options", "terms_from_options", "term_defaults"]

_RANGE = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class TermOption:
    """One command-line option of a term: ``--<term>-<name>`` (dashes for underscores).

    Args:
        name: the option, also the keyword of the term's ``build`` factory (e.g. ``temperature``).
        type: ``float``, ``int`` or ``str``.
        default: the value when the option is not given.
        help: one line for ``--help``.
        range: the allowed interval of a number in interval notation, e.g. ``"(0, 1]"``,
            ``"[0, inf)"``; ``None``: any finite number.
        choices: the allowed values of a ``str`` option.
    """

    name: str
    type: type = float
    default: Any = None
    help: str = ""
    range: Optional[str] = None
    choices: Optional[tuple[Any, ...]] = None
    bounds: tuple[float, float, bool, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"a term option's name must be lower-case letters, digits and _, got {self.name!r}")
        if self.type not in (float, int, str):
            raise TypeError(f"term option {self.name!r}: type must be float, int or str, got {self.type!r}")
        lo, hi, lo_open, hi_open = -math.inf, math.inf, True, True
        if self.range is not None:
            m = _RANGE.match(self.range) if isinstance(self.range, str) else None
            try:
                lo, hi = float(m.group(2)), float(m.group(3))  # type: ignore[union-attr]
            except (AttributeError, ValueError):
                raise ValueError(f"term option {self.name!r}: range must be an interval such as '(0, 1]' or "
                                 f"'[0, inf)', got {self.range!r}") from None
            lo_open, hi_open = m.group(1) == "(", m.group(4) == ")"  # type: ignore[union-attr]
        object.__setattr__(self, "bounds", (lo, hi, lo_open, hi_open))
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            self.check(self.default, f"term option {self.name!r}: the default")

    def describe(self) -> str:
        """The allowed values, for help and error texts (``"a number in (0, 1]"``)."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = {float: "a number", int: "an integer", str: "a string"}[self.type]
        return f"{kind} in {self.range}" if self.range is not None else kind

    def check(self, value: Any, what: Optional[str] = None) -> Any:
        """``value`` converted to the option's type; ``ValueError`` naming ``what`` if not allowed."""
        what = what or f"option {self.name!r}"
        try:
            if self.type is str:
                if not isinstance(value, str):
                    raise ValueError
                v: Any = value
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                v = int(value)
            else:
                if isinstance(value, bool):
                    raise ValueError
                v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be {self.describe()}, got {value!r}") from None
        if self.choices is not None and v not in self.choices:
            raise ValueError(f"{what} must be {self.describe()}, got {value!r}")
        if self.type is not str:
            lo, hi, lo_open, hi_open = self.bounds
            ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                raise ValueError(f"{what} must be {self.describe()}, got {value!r}")
        return v


@dataclass(frozen=True)
class TermSpec:
    """A registered term: its class, a one-line description, its options and its factory.

    ``build(teacher, pairs, **options) -> list[Term]``: the term(s) of one method; ``pairs`` is
    ``{teacher_path: student_path}`` or ``None`` (a term needing no pairs ignores them; a pair term
    then uses its default pair). ``pairs`` (the flag): the term reads feature pairs. ``tasks``:
    the tasks it works for (``("classification",)`` for terms on class probabilities), ``None``
    for any.
    """

    name: str
    cls: type
    description: str
    options: tuple[TermOption, ...]
    build: Callable[..., list[Term]]
    pairs: bool = False
    tasks: Optional[tuple[str, ...]] = None

    def option(self, name: str) -> TermOption:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(f"term {self.name!r} has no option {name!r}; its options: {[o.name for o in self.options]}")

    def defaults(self) -> dict[str, Any]:
        """The options' defaults (option name -> value)."""
        return {o.name: o.default for o in self.options}

    def make(self, teacher: Any, pairs: Optional[Mapping[str, str]] = None, **options: Any) -> list[Term]:
        """Check ``options`` (unknown names and values out of range raise), fill in the defaults
        and call :attr:`build`; returns the terms."""
        unknown = [k for k in options if k not in {o.name for o in self.options}]
        if unknown:
            raise TypeError(f"term {self.name!r} has no option(s) {unknown}; its options: {[o.name for o in self.options]}")
        values = {o.name: o.check(options[o.name], f"{self.name} option {o.name!r}")
                  if options.get(o.name) is not None else o.default for o in self.options}
        terms = list(self.build(teacher, pairs, **values))
        bad = [type(t).__name__ for t in terms if not isinstance(t, Term)]
        if bad:
            raise TypeError(f"the build factory of term {self.name!r} returned {bad}, not bd.infer.Term objects")
        return terms


#: The registered terms, name -> spec, in registration order.
TERMS: dict[str, TermSpec] = {}


def _first_line(doc: Optional[str]) -> str:
    return next((line.strip() for line in (doc or "").strip().splitlines() if line.strip()), "")


def register_term(
    name: str,
    *,
    options: Iterable[TermOption] = (),
    build: Optional[Callable[..., list[Term]]] = None,
    description: Optional[str] = None,
    pairs: bool = False,
    tasks: Optional[Sequence[str]] = None,
) -> Callable[[type], type]:
    """Class decorator: register a :class:`~bayesdistill.infer.Term` subclass under ``name``.

    Args:
        name: the method's name (``--method <name>``, flags ``--<name>-<option>``): lower-case
            letters, digits and ``_``; a name already registered is refused.
        options: its command-line options (:class:`TermOption`).
        build: ``build(teacher, pairs, **options) -> list[Term]``; default
            ``[cls(teacher, pairs=pairs, **options)]`` with ``pairs=True``, else
            ``[cls(teacher, **options)]``.
        description: one line for help texts (default: the first line of the class docstring).
        pairs: the term reads feature pairs ``{teacher_path: student_path}``.
        tasks: the tasks the term works for (e.g. ``("classification",)``); ``None``: any.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a term's name must be lower-case letters, digits and _ (a CLI method), got {name!r}")
    opts = tuple(options)
    if len({o.name for o in opts}) < len(opts):
        raise ValueError(f"term {name!r}: option names repeat: {[o.name for o in opts]}")

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Term)):
            raise TypeError(f"register_term({name!r}) decorates a subclass of bd.infer.Term, got {cls!r}")
        if name in TERMS:
            raise ValueError(f"a term named {name!r} is already registered ({TERMS[name].cls.__qualname__}); "
                             "unregister_term() it first or choose another name")
        if build is not None:
            factory = build
        elif pairs:
            def factory(teacher, pairs_, **kw):  # noqa: ANN001
                return [cls(teacher, pairs=pairs_, **kw)]
        else:
            def factory(teacher, pairs_, **kw):  # noqa: ANN001
                return [cls(teacher, **kw)]
        TERMS[name] = TermSpec(name, cls, description or _first_line(cls.__doc__), opts, factory, bool(pairs),
                               tuple(tasks) if tasks is not None else None)
        return cls

    return decorate


def unregister_term(name: str) -> TermSpec:
    """Remove a registered term (e.g. a test's); returns its spec."""
    get_term(name)
    return TERMS.pop(name)


def available_terms() -> tuple[str, ...]:
    """The registered terms' names, in registration order."""
    return tuple(TERMS)


def get_term(name: str) -> TermSpec:
    """The spec of a registered term; ``KeyError`` listing the registered ones."""
    try:
        return TERMS[name]
    except KeyError:
        raise KeyError(f"no distillation term named {name!r}; registered: {', '.join(TERMS) or 'none'}") from None


# --------------------------------------------------------------------------- command lines
def _flag(term: str, option: TermOption) -> str:
    return f"--{term}-{option.name}".replace("_", "-")


def _dest(term: str, option: TermOption) -> str:
    return f"{term}_{option.name}"


def _argparse_type(term: str, option: TermOption) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = option.type(text)
            return option.check(value, _flag(term, option))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {option.describe()}, got {text!r}") from None

    parse.__name__ = option.type.__name__  # argparse names the type in its messages
    return parse


def add_term_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--<term>-<option>`` (argparse ``dest`` ``<term>_<option>``, default the option's) for
    every option of every registered term."""
    for spec in TERMS.values():
        for o in spec.options:
            parser.add_argument(_flag(spec.name, o), dest=_dest(spec.name, o), type=_argparse_type(spec.name, o),
                                default=o.default, metavar=o.type.__name__.upper() if o.choices is None else None,
                                choices=o.choices, help=f"{spec.name}: {o.help} ({o.describe()})".replace("%", "%%"))


def _get(namespace: Any, key: str) -> Any:
    if isinstance(namespace, Mapping):
        return namespace.get(key)
    return getattr(namespace, key, None)


def term_options(namespace: Any, methods: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """The options of ``methods`` (default: every registered term) as ``{"<term>_<option>": value}``,
    read from an argparse namespace or a mapping; missing or ``None`` values are the defaults."""
    names = list(TERMS) if methods is None else [m for m in methods if m in TERMS]
    out: dict[str, Any] = {}
    for name in names:
        spec = TERMS[name]
        for o in spec.options:
            value = _get(namespace, _dest(name, o))
            out[_dest(name, o)] = o.default if value is None else o.check(value, _flag(name, o))
    return out


def term_defaults() -> dict[str, Any]:
    """The defaults of every registered term's options: ``{"<term>_<option>": default}``."""
    return term_options({})


def terms_from_options(methods: Iterable[str], teacher: Any, pairs: Optional[Mapping[str, str]],
                       namespace: Any = None) -> list[Term]:
    """The terms of ``methods`` (registered names, in the order given), built by their specs with
    the options read from ``namespace`` (an argparse namespace or a mapping with keys
    ``<term>_<option>``; missing values are the defaults)."""
    terms: list[Term] = []
    for m in methods:
        spec = get_term(m)
        kw = {o.name: _get(namespace or {}, _dest(m, o)) for o in spec.options}
        terms += spec.make(teacher, pairs, **kw)
    return terms
