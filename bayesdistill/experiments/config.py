"""The run-configuration file: a TOML file naming the data, the models and the settings of a run.

::

    # run.toml                                  bayesdistill fit --config run.toml --epochs 5
    dataset = "mnist1d"
    model = "mypkg.nets:resnet"                 # import paths still need --allow-imports on the command line
    model_kwargs = { depth = 8 }
    epochs = 100
    lr_schedule = "cosine"
    hidden = [256, 256]
    out = "runs/teacher"

    [distill]                                   # keys for one command only (fit, evaluate, distill, demo)
    student = "cnn-small"

The keys are the command's options with ``_`` or ``-`` (``batch_size``, ``lr-schedule``); a table
named after the running command adds or overrides keys for it (tables of other commands are
ignored). Options given on the command line override the file. An unknown key is an error naming
it. The file holds data only (read with the standard library's ``tomllib``): a model or data set
named by import path is imported only with ``--allow-imports`` given on the command line, which a
file cannot set.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from ..errors import BayesDistillError

__all__ = ["ConfigError", "read_config", "config_values", "config_arguments", "COMMANDS", "NOT_IN_FILES"]

#: The commands a file may hold a table for.
COMMANDS = ("fit", "evaluate", "distill", "demo")
#: Options a file cannot set (the permission to import code stays on the command line).
NOT_IN_FILES = ("allow_imports", "config", "debug", "help")


class ConfigError(BayesDistillError, ValueError):
    """A run-configuration file that cannot be read, or that names unknown keys or bad values."""


def read_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no run-configuration file at {str(path)!r}")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not a valid TOML file: {err}") from err


def config_values(config: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The keys for ``command``: the top-level keys, then its table's; ``-`` read as ``_``."""
    values = {k.replace("-", "_"): v for k, v in config.items() if k not in COMMANDS}
    table = config.get(command) or {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{command}] must be a table of options, got {table!r}")
    values.update({k.replace("-", "_"): v for k, v in table.items()})
    return values


def _flag(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return next((s for s in longs if s[2:].replace("-", "_") == action.dest), longs[0] if longs else
                action.option_strings[0])


def _text(key: str, value: Any, source: str) -> str:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {key} = {value!r}: expected a value, not true/false")
    if isinstance(value, Mapping):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _arguments(key: str, value: Any, action: argparse.Action, source: str) -> list[str]:
    flag = _flag(action)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        on = isinstance(action, argparse._StoreTrueAction)
        return [flag] if value == on else []
    if action.nargs == "?" and isinstance(value, bool):  # an option with an optional value (--local-reparam)
        return [flag] if value else []
    return [f"{flag}={_text(key, value, source)}"]


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(a == s or a.startswith(s + "=") for a in argv for s in action.option_strings)


def config_arguments(config: Mapping[str, Any], parser: argparse.ArgumentParser, command: str,
                     argv: Sequence[str] = (), source: str = "the run-configuration file") -> list[str]:
    """The file's values for ``command`` as command-line arguments of ``parser`` (the command's
    parser), to be placed before the user's own ``argv`` (which then override them).

    Raises:
        ConfigError: unknown keys (all named), keys a file may not set, values of the wrong kind.
    """
    values = config_values(config, command)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_FILES}
    forbidden = sorted(k for k in values if k in NOT_IN_FILES)
    if forbidden:
        raise ConfigError(f"{source}: {', '.join(forbidden)} cannot be set in a file; pass "
                          + ", ".join(f"--{k.replace('_', '-')}" for k in forbidden) + " on the command line")
    unknown = sorted(k for k in values if k not in actions)
    if unknown:
        raise ConfigError(f"{source}: unknown keys for 'bayesdistill {command}': {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(actions))}")
    exclusive = {a.dest: g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    out: list[str] = []
    for key, value in values.items():
        group = exclusive.get(key)
        if group is not None and any(_given(a, argv) for a in group._group_actions):
            continue  # the command line chose within this group
        out += _arguments(key, value, actions[key], source)
    return out
