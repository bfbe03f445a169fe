"""The command line as a whole: argument errors, the entry points."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bayesdistill as bd
from bayesdistill import cli
from bayesdistill.cli import main


def test_bad_arguments_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["fit", "--epochs", "-1", "--out", str(tmp_path)],
                 ["fit", "--lr", "0", "--out", str(tmp_path)],
                 ["fit", "--train-fraction", "1.5", "--out", str(tmp_path)],
                 ["fit", "--threads", "0", "--out", str(tmp_path)],
                 ["fit", "--model-kwargs", "[1, 2]", "--out", str(tmp_path)],
                 ["fit", "--dataset", "digits"],  # --out missing
                 ["nonsense"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err
    assert main([]) == 2  # no command: help on stderr


def test_every_command_has_threads_imports_and_config() -> None:
    parse = cli.build_parser().parse_args
    for argv in (["fit", "--out", "x"], ["evaluate", "--posterior", "p"], ["demo"],
                 ["distill", "--teacher", "t", "--student", "s", "--out", "x"]):
        args = parse([*argv, "--threads", "3", "--allow-imports", "a,b.c", "--config", "c.toml"])
        assert args.threads == 3 and args.allow_imports == ("a", "b.c") and args.config == Path("c.toml")
        assert parse([*argv, "--allow-imports"]).allow_imports is True


# ----------------------------------------------------------------------------- entry points
def test_python_m_version() -> None:
    # the repository first, then whatever the environment already had (dependencies may come
    # from PYTHONPATH rather than site-packages)
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    proc = subprocess.run([sys.executable, "-m", "bayesdistill", "--version"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bayesdistill {bd.__version__}"


def test_console_script_version() -> None:
    exe = shutil.which("bayesdistill")
    if exe is None:
        pytest.skip("the bayesdistill console script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bayesdistill {bd.__version__}"


def test_cli_module_holds_parsing_only() -> None:
    """No pipeline, report or figure code in cli.py: it imports no training, plotting, tensors or
    data, only argument parsing and the experiments it hands the arguments to."""
    import ast

    source = Path(cli.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    banned = ("torch", "matplotlib", "pyro", ".infer", ".diagnostics", ".bnn", ".datasets", ".models", "._io")
    assert not [m for m in imported if m.startswith(banned)], imported
    for call in (r"\bfit\(", r"\bevaluate\(", r"savefig", r"write_text", r"\bopen\("):
        assert not re.search(call, source), call
    assert len(source.splitlines()) < 700  # nine commands' parsers (was < 500 for four)
