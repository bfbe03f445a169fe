"""The run-configuration file: TOML values become the command's options; flags override them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bayesdistill.cli import build_parser
from bayesdistill.experiments.config import ConfigError, config_arguments, config_values, read_config


def _fit_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["fit"]


def _parse(config: dict, argv: list[str]) -> argparse.Namespace:
    p = _fit_parser()
    return p.parse_args(config_arguments(config, p, "fit", argv) + argv)


def test_values_of_every_kind_become_options() -> None:
    args = _parse({"dataset": "digits", "model": "mlp", "hidden": [16, 8], "epochs": 4, "lr": 0.01,
                   "lr-schedule": "none", "monitor": True, "checkpoint": False, "local_reparam": "linear",
                   "model_kwargs": {"hidden": [3]}, "seed": -2, "out": "runs/x"}, [])
    assert (args.dataset, args.model, args.hidden, args.epochs, args.lr) == ("digits", "mlp", (16, 8), 4, 0.01)
    assert args.lr_schedule == "none" and args.monitor is True and args.checkpoint is False
    assert args.local_reparam == "linear" and args.model_kwargs == {"hidden": [3]} and args.seed == -2
    assert args.out == Path("runs/x")
    assert _parse({"monitor": False, "local_reparam": True, "out": "x"}, []).local_reparam == "all"


def test_flags_override_the_file() -> None:
    args = _parse({"epochs": 4, "lr": 0.01, "out": "a", "resume": True}, ["--epochs", "2", "--out=b", "--overwrite"])
    assert args.epochs == 2 and args.lr == 0.01 and args.out == Path("b")
    assert args.overwrite is True and args.resume is False  # the command line chose within --resume/--overwrite


def test_command_tables_and_unknown_keys() -> None:
    config = {"epochs": 4, "fit": {"epochs": 5, "seed": 1}, "distill": {"student": "cnn-small"}}
    assert config_values(config, "fit") == {"epochs": 5, "seed": 1}
    assert config_values(config, "distill") == {"epochs": 4, "student": "cnn-small"}
    with pytest.raises(ConfigError, match="unknown keys for 'bayesdistill fit': bogus, epoch; known: .*epochs"):
        config_arguments({"epoch": 1, "bogus": 2}, _fit_parser(), "fit")
    with pytest.raises(ConfigError, match="allow_imports cannot be set in a file; pass --allow-imports"):
        config_arguments({"allow-imports": True}, _fit_parser(), "fit")
    with pytest.raises(ConfigError, match="monitor must be true or false"):
        config_arguments({"monitor": "yes"}, _fit_parser(), "fit")
    with pytest.raises(ConfigError, match="expected a value"):
        config_arguments({"epochs": True}, _fit_parser(), "fit")
    with pytest.raises(ConfigError, match=r"\[fit\] must be a table"):
        config_values({"fit": 3}, "fit")


def test_reading_files(tmp_path: Path) -> None:
    good = tmp_path / "run.toml"
    good.write_text('dataset = "digits"\n[fit]\nepochs = 2\n')
    assert read_config(good) == {"dataset": "digits", "fit": {"epochs": 2}}
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 2\n")
    with pytest.raises(ConfigError, match="not a valid TOML file"):
        read_config(bad)
    with pytest.raises(FileNotFoundError, match="no run-configuration file"):
        read_config(tmp_path / "missing.toml")
