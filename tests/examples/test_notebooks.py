"""The example gallery: every ``examples/*.ipynb`` is stored without outputs and runs top to bottom.

Each notebook is executed exactly once in the suite (here), through nbclient with the ``python3``
kernel, in its quick setting (``BAYESDISTILL_NOTEBOOK_QUICK=1``), with the repository root as the
working directory, one dataset cache shared by all notebooks (``BAYESDISTILL_CACHE``, filled once
before the timed runs) and the kernel's inline matplotlib backend, so that figures become image
outputs. Every notebook must run without an error and show at least one figure; the notebooks
named in ``CHECKS`` are also checked for what they print. A new notebook in ``examples/`` is picked
up by the glob and gets the generic checks.

With ``BAYESDISTILL_EXECUTED_NOTEBOOKS=<folder>`` set, each executed notebook (outputs included) is
written to ``<folder>/<stem>.ipynb``, for the documentation site to render.

nbclient, nbformat and ipykernel are test dependencies (the ``test`` extra): without them these
tests fail, they do not skip.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

import bayesdistill as bd

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; the whole notebook is meant to take under a minute
TEACHER_SITES = ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias", "8.weight", "8.bias"]


def _require(module: str):
    """Import a test dependency or fail with the fix (declared in the ``test`` extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is needed to run the example notebooks: pip install -e '.[test]'")


def _python3_kernel() -> str:
    """The name of a usable Python kernel, or fail with instructions (never installs anything)."""
    _require("ipykernel")
    _require("jupyter_client")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail("no Jupyter kernel spec named 'python3'; install one with "
                    f"`{sys.executable} -m ipykernel install --sys-prefix --name python3`")
    if spec.language.lower() != "python":
        pytest.fail(f"the kernel spec 'python3' is for {spec.language!r}, not Python: {spec.argv}")
    return "python3"


def test_the_gallery_is_not_empty():
    assert len(NOTEBOOKS) >= 9, [p.name for p in NOTEBOOKS]


# ----------------------------------------------------------------------------- stored form
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nbformat = _require("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), f"clear the outputs of {path.name}"
    assert nb.cells[0].cell_type == "markdown", "a notebook opens with a markdown introduction"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "one cell tagged 'parameters' holds the size switch"
    assert re.search(r"^(QUICK|FULL) = False\b", params[0].source, re.M), params[0].source
    assert sum("summary" in c.metadata.get("tags", []) for c in code) == 1, "one cell tagged 'summary'"
    source = "".join(c.source for c in code)
    assert "BAYESDISTILL_NOTEBOOK_QUICK" in source, "the quick setting must follow BAYESDISTILL_NOTEBOOK_QUICK"
    assert "bayesdistill.cli" not in source
    extra = {
        "teacher_mnist1d": ["EPOCHS = 100", "QUICK = False"],
        "resnet_distillation": ["FULL = False", "CIFAR_ROOT = None"],
    }.get(path.stem, [])
    assert all(s in params[0].source for s in extra), params[0].source
    if path.stem in ("privileged_information", "datafree_distillation", "bayesian_distillation",
                     "function_space_distillation", "plain_pyro"):
        assert params[0].source.strip() == "FULL = False"  # the full setting: one variable away


# ----------------------------------------------------------------------------- running them
@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Quick mode, the inline backend, one shared dataset cache (MNIST-1D generated once, here)."""
    cache = tmp_path_factory.mktemp("notebook-cache")
    bd.datasets.load("mnist1d", cache_dir=cache)
    env = dict(os.environ)
    env.update({
        "BAYESDISTILL_NOTEBOOK_QUICK": "1",
        "BAYESDISTILL_CACHE": str(cache),
        # the kernel's inline backend (not Agg): figures become image outputs, which are counted
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # single-threaded like the rest of the suite: on a loaded machine extra threads only wait
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    })
    return env


class Run:
    """An executed notebook and what its checks read from it."""

    def __init__(self, nb, wall: float, started: float):
        self.nb, self.wall, self.started = nb, wall, started
        self.code = [c for c in nb.cells if c.cell_type == "code"]
        self.text = "".join(_stdout(c) for c in self.code)
        self.summary = _stdout(next(c for c in self.code if "summary" in c.metadata.get("tags", [])))
        self.images = sum(1 for c in self.code for o in c.outputs if "image/png" in o.get("data", {}))

    def cell_stdout(self, contains: str) -> str:
        """What the (first) code cell whose source contains ``contains`` printed."""
        return _stdout(next(c for c in self.code if contains in c.source))

    def written(self, relative: str) -> Path:
        """A file the notebook wrote relative to its working directory (the repository root) during this run."""
        path = ROOT / relative
        assert path.exists() and path.stat().st_mtime >= self.started - 1, f"{relative} was not written"
        return path


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _metrics(text: str) -> dict[str, dict[str, float]]:
    """``test <name> accuracy a  NLL n  ECE e`` lines -> {name: {"accuracy": a, "nll": n, "ece": e}}."""
    rows = re.findall(r"^test (.+?)\s+accuracy (\S+)\s+NLL (\S+)\s+ECE (\S+)", text, re.M)
    return {name.strip(): {"accuracy": float(a), "nll": float(n), "ece": float(e)} for name, a, n, e in rows}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, notebook_env: dict[str, str]) -> None:
    nbformat = _require("nbformat")
    nbclient = _require("nbclient")
    kernel = _python3_kernel()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(ROOT)}})  # the kernel's working directory
    started = time.time()
    client.execute(env=notebook_env)  # raises CellExecutionError, with the traceback, on any error
    run = Run(nb, time.time() - started, started)

    errors = [o for c in run.code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert run.images >= 1, f"{path.name} shows no figure"
    folder = os.environ.get("BAYESDISTILL_EXECUTED_NOTEBOOKS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(folder) / f"{path.stem}.ipynb")
    print(f"{path.name}: {run.wall:.1f} s wall")
    check = CHECKS.get(path.stem)
    if check is not None:
        check(run)


# ----------------------------------------------------------------------------- what each one shows
def _check_teacher_mnist1d(run: Run) -> None:
    values = dict(line.split(None, 2)[1:3] for line in run.summary.splitlines() if line.startswith("test "))
    assert set(values) >= {"accuracy", "NLL", "ECE"}, run.summary
    assert 0.0 <= float(values["accuracy"]) <= 1.0
    assert math.isfinite(float(values["NLL"].split()[0]))
    assert "3 epochs on 10% of the training data" in run.text  # quick mode was honoured
    assert "reproduces the mean-weight predictions: True" in run.text
    q = bd.MeanFieldPosterior.load(run.written("runs/notebook-teacher/posterior.pt"))
    assert list(q) == TEACHER_SITES


def _check_resnet_distillation(run: Run) -> None:
    assert run.images >= 3  # the images, the alignment plot, the pruning curve
    rows = {line.split("accuracy")[0].strip(): float(line.split("accuracy")[1].split()[0])
            for line in run.summary.splitlines() if "accuracy" in line}
    assert set(rows) == {"teacher", "aligned teacher (no training)", "student: aligned prior + KD",
                         "student from scratch"}, run.summary
    assert all(0.0 <= a <= 1.0 for a in rows.values())
    assert rows["teacher"] > 0.5 and rows["aligned teacher (no training)"] > 0.4, run.summary  # 4 classes: chance 0.25
    plan_text = run.cell_stdout("print(plan.summary())")
    assert "block" in plan_text and "layer1" in plan_text
    assert "teacher {'blocks': (2, 2), 'widths': (12, 24)}" in run.text  # the small setting


def _check_growth(run: Run) -> None:
    accuracies = [float(a) for a in re.findall(r"accuracy (\d\.\d+)", run.summary)]
    assert len(accuracies) == 3 and all(0 <= a <= 1 for a in accuracies)
    diffs = dict(re.findall(r"^(\w+)\s+function preserving: \w+\s+max \|old logits - small logits\| = (\S+)$",
                            run.text, re.M))
    assert set(diffs) == {"net2net", "embed", "zero", "uniform"}
    assert all(float(diffs[m]) < 1e-3 for m in ("net2net", "embed", "zero")) and float(diffs["uniform"]) > 1e-2
    zero = re.search(r"^zero\s+at the means: \|grad in\| (\S+)\s+\|grad out\| (\S+)", run.text, re.M)
    assert float(zero.group(1)) == 0 and float(zero.group(2)) == 0  # the pitfall, in the notebook too
    assert "the reloaded plan gives the same grown posterior: True" in run.text
    assert run.images >= 3  # logits scatter, learning curves, weight noise
    run.written("runs/notebook-growth/plan.pt")


def _check_adversarial_prior(run: Run) -> None:
    accuracies = [float(a) for a in re.findall(r"accuracy (\d\.\d+)", run.summary)]
    assert len(accuracies) == 5 and all(0 <= a <= 1 for a in accuracies)
    assert "bd.align refuses the wide student" in run.text
    assert "mismatched pair: AdversarialPrior: pair '1' -> '3'" in run.text
    assert "final lambdas" in run.text
    assert run.images >= 3  # learning curves, critics and lambdas, kernels


def _cpu_seconds(run: Run) -> float:
    assert run.summary.startswith("summary"), run.summary
    return float(run.summary.rsplit("cpu seconds of this kernel:", 1)[1].split()[0])


def _check_privileged_information(run: Run) -> None:
    assert run.images >= 3, f"{run.images} figures"
    assert _cpu_seconds(run) < 60, "the notebooks must run in under a minute"
    for line in run.summary.splitlines()[1:3]:
        acc = {k: float(v) for k, v in zip(line.split()[1::2], line.split()[2::2])}
        assert set(acc) == {"teacher", "student", "distilled"}
        assert acc["distilled"] > acc["student"]  # experiments 1 and 3: the teacher helps


def _check_datafree_distillation(run: Run) -> None:
    assert run.images >= 3, f"{run.images} figures"
    assert _cpu_seconds(run) < 60, "the notebooks must run in under a minute"
    acc = {line.split(":")[0]: float(line.split(":")[1]) for line in run.summary.splitlines()[1:]
           if ":" in line and not line.startswith("cpu")}
    assert acc["KD, real inputs"] > acc["random noise"]


def _check_bayesian_distillation(run: Run) -> None:
    assert "quick setting" in run.text
    metrics = _metrics(run.summary)
    assert set(metrics) == {"teacher", "aligned teacher (no training)", "distilled", "plain"}, run.summary
    for m in metrics.values():
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 1 and math.isfinite(m["nll"]) and m["nll"] > 0
    # cnn-deep -> cnn-small: 3 x 16 of 4 x 32 conv channels are kept (one layer folded away)
    assert "units removed: 80 of 128 hidden units" in run.summary
    assert "AlignmentPlan (criterion=snr, removal=refit, compensation=True)" in run.text
    assert "folded into the next layer as a whole" in run.text
    curves = re.findall(r"^(snr|random|data)\s+compensation=(True|False)\s+accuracy ((?:\S+ )+) at fractions", run.text, re.M)
    assert len(curves) == 4 and all(len(c[2].split()) == 4 for c in curves), curves
    assert "prior means = aligned teacher means: True" in run.text
    # the aligned start carries the teacher: on 400 labels the plain student is far behind (NLL ~1.8 vs ~0.8)
    assert metrics["distilled"]["nll"] < metrics["plain"]["nll"]
    assert metrics["distilled"]["accuracy"] > metrics["plain"]["accuracy"]
    assert run.images >= 7  # teacher ELBO, plan, pruning curves, prior, NLL/KL, learning curves, calibration


def _check_function_space_distillation(run: Run) -> None:
    assert "quick setting" in run.text
    metrics = _metrics(run.summary)
    assert set(metrics) == {"teacher", "plain", "KD", "VID", "VID+KD"}, run.summary
    for m in metrics.values():
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 1 and math.isfinite(m["nll"]) and m["nll"] > 0
    bounds = re.findall(r"^mi_bound (pair\d) first (\S+) last (\S+)$", run.summary, re.M)
    assert [b[0] for b in bounds] == ["pair0", "pair1"], run.summary
    for _, first, last in bounds:  # the amortized q(t | s) learns: the bound rises over training
        assert math.isfinite(float(first)) and float(last) > float(first)
    auc = dict(re.findall(r"(\S+) (\d\.\d+)", run.summary.split("separation AUC", 1)[1]))
    assert set(auc) == {"teacher", "plain", "VID+KD"} and all(0 <= float(a) <= 1 for a in auc.values())
    assert "pair 0: teacher '6' (32, 20)  <-  student '2' (256,)" in run.text
    assert run.images >= 5  # bounds, variances, ELBO, learning curves, cosine distances


def _check_plain_pyro(run: Run) -> None:
    assert "quick setting" in run.text
    s = run.summary
    mean, se = map(float, re.search(r"over \d+ draws: mean (\S+) nats, standard error (\S+)", s).groups())
    assert se > 0 and abs(mean) < 5 * se, s  # the Monte Carlo KL agrees with the exact one in expectation
    assert float(re.search(r"per draw: (\S+)", s).group(1)) < 1e-5, s  # TraceMeanField_ELBO == MeanFieldELBO
    assert float(re.search(r"by hand vs Trace_ELBO: (\S+) nats", s).group(1)) < 1e-2, s
    assert float(re.search(r"Predictive accuracy (\S+)", s).group(1)) > 0.5, s  # 10 classes: chance 0.1
    assert "reloaded posterior identical: True" in s
    assert "{'1.weight': (64, 1, 32, 64), 'obs': (64, 360), '_RETURN': (64, 360, 10)}" in run.text
    assert "condition on the posterior means == bnn(x): True" in run.text
    assert "with expose=['obs']: ['obs']" in run.text
    assert "... and Predictive's samples for the same seed: True" in run.text
    assert run.images >= 3


CHECKS: dict[str, Callable[[Run], None]] = {
    "teacher_mnist1d": _check_teacher_mnist1d,
    "resnet_distillation": _check_resnet_distillation,
    "growth": _check_growth,
    "adversarial_prior": _check_adversarial_prior,
    "privileged_information": _check_privileged_information,
    "datafree_distillation": _check_datafree_distillation,
    "bayesian_distillation": _check_bayesian_distillation,
    "function_space_distillation": _check_function_space_distillation,
    "plain_pyro": _check_plain_pyro,
}

