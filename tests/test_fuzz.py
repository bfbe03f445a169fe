"""Property-based bad-input tests (hypothesis): every public entry point answers generated bad
input with an error of this package (or ValueError / TypeError / KeyError / FileNotFoundError)
that carries a message, within a time limit, and changes no file.

CI runs a small profile; ``HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_fuzz.py``
runs many more examples.
"""

from __future__ import annotations

import math
import os
import pickle
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayesdistill as bd
from _helpers import tiny_mlp, toy_classification

settings.register_profile("ci", max_examples=25, deadline=10_000, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=400, deadline=20_000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: what a clean refusal may raise: the package's errors subclass ValueError/TypeError/...
CLEAN = (bd.errors.BayesDistillError, ValueError, TypeError, KeyError, FileNotFoundError)

BAD_NUMBERS = st.sampled_from([0, -1, -0.5, float("nan"), float("inf"), float("-inf"), "0.01", None, [], True,
                               1e400, -1e-300, 2.5])
NAMES = st.text(string.ascii_letters + "._-*", max_size=12)


def _refuses(fn, *args, **kwargs) -> BaseException | None:
    """Call; a raised exception must be a clean one with a message. Returns it (or None)."""
    try:
        fn(*args, **kwargs)
    except CLEAN as err:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        assert text.strip(), f"{type(err).__name__} without a message"
        assert "Traceback" not in text
        return err
    return None


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- numbers
@given(name=st.sampled_from(["lr", "batch_size", "epochs", "num_particles", "clip_grad_norm", "kl_weight",
                             "weight_decay", "eval_samples", "seed"]), value=BAD_NUMBERS)
def test_fit_numeric_arguments(name, value):
    x, y = toy_classification(16)
    kw = {"epochs": 1, name: value}
    if name == "eval_samples":
        kw["eval_data"] = (x, y)
    bnn = bd.BNN(tiny_mlp(), dataset_size=16)
    before = bnn.loc.detach().clone()
    err = _refuses(bd.fit, bnn, (x, y), progress=False, **kw)
    if err is not None:
        assert torch.equal(before, bnn.loc)  # refused before any step
    else:  # accepted: then it was a legitimate value and training ended finite
        assert torch.isfinite(bnn.loc).all()


@given(name=st.sampled_from(["num_samples", "batch_size", "n_bins", "seed"]), value=BAD_NUMBERS)
def test_evaluate_numeric_arguments(name, value):
    bnn = bd.BNN(tiny_mlp(), dataset_size=16)
    result = {}
    err = _refuses(lambda: result.update(bd.evaluate(bnn, toy_classification(16), **{name: value})))
    if err is None:
        assert all(math.isfinite(v) for v in result.values())


@given(init_scale=BAD_NUMBERS, dataset_size=BAD_NUMBERS)
def test_bnn_arguments(init_scale, dataset_size):
    _refuses(bd.BNN, tiny_mlp(), init_scale=init_scale, dataset_size=dataset_size)


@given(loc=BAD_NUMBERS, scale=BAD_NUMBERS, lik=BAD_NUMBERS)
def test_prior_and_likelihood_scales(loc, scale, lik):
    if _refuses(bd.priors.Normal, loc=loc, scale=scale) is None:
        assert math.isfinite(float(scale)) and float(scale) > 0
    if _refuses(bd.likelihoods.Normal, scale=lik) is None:
        assert math.isfinite(float(lik)) and float(lik) > 0


@given(scale=st.one_of(BAD_NUMBERS, NAMES), temperature=BAD_NUMBERS)
def test_teacher_posterior_arguments(scale, temperature):
    q = bd.BNN(tiny_mlp()).posterior()
    _refuses(bd.priors.TeacherPosterior, q, scale=scale, temperature=temperature)


@given(term=st.sampled_from(["KD", "VID", "PKT", "Hint"]), weight=BAD_NUMBERS, temperature=BAD_NUMBERS)
def test_term_arguments(term, weight, temperature):
    teacher = tiny_mlp(seed=1)
    cls = getattr(bd.distill, term)
    if term == "KD":
        _refuses(cls, teacher, temperature=temperature, weight=weight)
    else:
        _refuses(cls, teacher, {"1": "1"}, weight=weight)


# ----------------------------------------------------------------------------- data
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=3)
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool])
FILL = st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -1e30])


@pytest.mark.filterwarnings("ignore:the BNN's dataset_size")
@given(x_shape=SHAPES, y_shape=SHAPES, x_dtype=DTYPES, y_dtype=DTYPES, fill=FILL)
def test_fit_and_evaluate_on_malformed_data(x_shape, y_shape, x_dtype, y_dtype, fill):
    x = torch.full(x_shape, fill).to(x_dtype) if x_dtype.is_floating_point else torch.zeros(x_shape, dtype=x_dtype)
    y = torch.zeros(y_shape, dtype=y_dtype)
    bnn = bd.BNN(tiny_mlp(), dataset_size=8)
    for call in (lambda: bd.fit(bnn, (x, y), epochs=1, progress=False), lambda: bd.evaluate(bnn, (x, y)),
                 lambda: bd.predict(bnn, x)):
        _refuses(call)


@given(width=st.integers(1, 9), n=st.integers(1, 20), transfer_width=st.integers(1, 9), nan=st.booleans())
def test_distillation_with_misfit_transfer_data(width, n, transfer_width, nan):
    x, y = toy_classification(16)
    xt = torch.randn(n, transfer_width)
    if nan:
        xt[0, 0] = float("nan")
    student = bd.BNN(tiny_mlp(), dataset_size=16)
    err = _refuses(bd.fit, student, (x, y), epochs=1, progress=False, distill=[bd.distill.KD(tiny_mlp(seed=3))],
                   transfer=xt)
    if transfer_width != 4 or nan:
        assert isinstance(err, bd.DataError)


@given(paths=st.lists(NAMES, min_size=1, max_size=3))
def test_term_paths_that_name_no_module(paths):
    pairs = {p: p for p in paths}
    x, y = toy_classification(8)
    student = bd.BNN(tiny_mlp(), dataset_size=8)
    _refuses(bd.fit, student, (x, y), epochs=1, progress=False, distill=[bd.distill.VID(tiny_mlp(seed=3), pairs)])


# ----------------------------------------------------------------------------- alignment
@given(criterion=st.one_of(NAMES, st.just("snr")), step=BAD_NUMBERS, removal=st.one_of(NAMES, st.just("auto")),
       probe_width=st.integers(1, 6), hidden=st.integers(1, 12))
def test_align_arguments(criterion, step, removal, probe_width, hidden):
    teacher = bd.BNN(tiny_mlp(hidden=6))
    student = tiny_mlp(hidden=hidden)
    _refuses(bd.align, teacher, student, criterion=criterion, step=step, removal=removal,
             probe=torch.randn(8, probe_width))


# ----------------------------------------------------------------------------- files
FILE_CONTENT = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(["truncated-posterior", "truncated-plan", "pickle-code", "tensor", "dict", "empty"]),
)


def _write(path: Path, content, tmp: Path) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated-posterior":
        bd.BNN(tiny_mlp()).posterior().save(tmp / "ok.pt")
        data = (tmp / "ok.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "truncated-plan":
        bd.align(bd.BNN(tiny_mlp(hidden=6)), tiny_mlp(hidden=4)).save(tmp / "plan.pt")
        data = (tmp / "plan.pt").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif content == "pickle-code":
        class Boom:
            def __reduce__(self):
                return (exec, (f"open({str(tmp / 'pwned')!r}, 'w').write('x')",))

        path.write_bytes(pickle.dumps(Boom()))
    elif content == "tensor":
        torch.save(torch.ones(3), path)
    elif content == "dict":
        torch.save({"format": "something else", "version": 1}, path)
    else:
        path.write_bytes(b"")


@given(content=FILE_CONTENT)
def test_loading_damaged_or_foreign_files(tmp_path_factory, content):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "file.pt"
    _write(path, content, tmp)
    before = _tree(tmp)
    for load in (bd.MeanFieldPosterior.load, bd.AlignmentPlan.load, bd.infer.load_checkpoint):
        err = _refuses(load, path)
        assert isinstance(err, bd.errors.FileFormatError), (load, err)
    assert not (tmp / "pwned").exists()  # no code from the file ran
    assert _tree(tmp) == before  # loading changes no file


@given(content=FILE_CONTENT)
def test_resuming_from_a_damaged_checkpoint(tmp_path_factory, content):
    tmp = tmp_path_factory.mktemp("ckpt")
    _write(tmp / "checkpoint.pt", content, tmp)
    before = _tree(tmp)
    err = _refuses(bd.fit, bd.BNN(tiny_mlp()), toy_classification(16), epochs=1, progress=False,
                   checkpoint_dir=tmp, resume=True)
    assert isinstance(err, bd.errors.FileFormatError)
    assert _tree(tmp) == before and not (tmp / "pwned").exists()
