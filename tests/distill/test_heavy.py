"""The heavy-student transfer (teacher -> auxiliary -> student) and its DecayWeights callback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from _helpers import tiny_mlp, toy_classification
from bayesdistill.distill import KD, DecayWeights, heavy_student
from bayesdistill.infer import Callback


def _student() -> bd.BNN:
    return bd.BNN(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)), dataset_size=40)


def test_heavy_student_runs_both_stages_with_decaying_intermediate_weights():
    x, y = toy_classification(40)
    teacher = bd.BNN(tiny_mlp(hidden=12, seed=0), dataset_size=40)
    bd.fit(teacher, (x, y), epochs=3, batch_size=20, progress=False)
    aux = bd.BNN(tiny_mlp(hidden=12, seed=1), dataset_size=40)
    student = _student()
    aux_before = aux.loc.detach().clone()
    res = heavy_student(
        teacher, aux, student, (x, y), teacher_pairs={"1": "1"}, pairs={"0": "0", "2": "4"},
        epochs=(2, 3), intermediate_weight=4.0, decay=0.5, batch_size=20, progress=False,
    )
    assert len(res.auxiliary.history) == 2 and len(res.student.history) == 3
    assert "distill/pkt/loss" in res.auxiliary.history[0]
    # stage 2: the intermediate pairs and the final pair are two PKT terms
    assert {"distill/pkt_intermediate/pair0/loss", "distill/pkt/pair0/loss"} <= set(res.student.history[0])
    assert not torch.equal(aux.loc.detach(), aux_before)  # stage 1 trained the auxiliary student
    weights = [r["intermediate_weight"] for r in res.student.history]
    assert weights == pytest.approx([2.0, 1.0, 0.5])  # x decay after every epoch
    with pytest.raises(ValueError, match="decay"):
        heavy_student(teacher, aux, student, (x, y), teacher_pairs={"1": "1"}, pairs={"2": "4"}, decay=0.0)
    with pytest.raises(TypeError, match=r"teacher_pairs=\{t: a\}"):
        heavy_student(teacher, aux, student, (x, y), teacher_pairs=("1", "1"), pairs={"2": "4"})
    with pytest.raises(ValueError, match="pairs must name at least one pair"):
        heavy_student(teacher, aux, student, (x, y), teacher_pairs={"1": "1"}, pairs={})


def test_heavy_student_resume_continues_the_decay_and_matches_an_uninterrupted_run(tmp_path):
    """Stage checkpoints go to D/auxiliary and D/student; an interrupted stage 2 resumed with
    resume=True ends bit-identical to an uninterrupted run (weights decayed from the epochs done)."""
    x, y = toy_classification(40)
    teacher = bd.BNN(tiny_mlp(hidden=12, seed=0), dataset_size=40)
    bd.fit(teacher, (x, y), epochs=2, batch_size=20, progress=False, seed=0)

    def nets():
        torch.manual_seed(11)  # the same initial student every time
        aux = bd.BNN(tiny_mlp(hidden=12, seed=1), dataset_size=40)
        return aux, _student()

    kw = dict(teacher_pairs={"1": "1"}, pairs={"0": "0", "2": "4"}, intermediate_weight=4.0, decay=0.5,
              batch_size=20, progress=False, seed=3)
    aux, student = nets()
    full = heavy_student(teacher, aux, student, (x, y), epochs=(2, 4), **kw)

    aux2, student2 = nets()
    first = heavy_student(teacher, aux2, student2, (x, y), epochs=(2, 2), checkpoint_dir=tmp_path, **kw)
    assert (tmp_path / "auxiliary" / "checkpoint.pt").exists() and (tmp_path / "student" / "checkpoint.pt").exists()
    assert [r["intermediate_weight"] for r in first.student.history] == pytest.approx([2.0, 1.0])
    aux3, student3 = nets()  # fresh objects, as after a crash: everything comes from the checkpoints
    rest = heavy_student(teacher, aux3, student3, (x, y), epochs=(2, 4), checkpoint_dir=tmp_path, resume=True,
                         extend=True, **kw)  # stage 2 was planned for 2 epochs

    assert [r["intermediate_weight"] for r in rest.student.history] == pytest.approx([2.0, 1.0, 0.5, 0.25])
    assert len(rest.auxiliary.history) == 2  # the finished stage 1 was restored, not retrained
    assert torch.equal(aux3.loc, aux.loc) and torch.equal(aux3.rho, aux.rho)
    assert torch.equal(student3.loc, student.loc) and torch.equal(student3.rho, student.rho)
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h]  # noqa: E731
    assert strip(rest.student.history) == strip(full.student.history)
    # a different decay is a different run: resuming with it is refused
    aux4, student4 = nets()
    with pytest.raises(bd.errors.ResumeMismatchError, match="intermediate_weight_decay"):
        heavy_student(teacher, aux4, student4, (x, y), epochs=(2, 4), checkpoint_dir=tmp_path, resume=True,
                      extend=True, **{**kw, "decay": 0.7})


def test_decay_weights_is_a_callback_on_any_terms():
    x, y = toy_classification(32)
    teacher = tiny_mlp(hidden=8, seed=1)
    a, b = KD(teacher, weight=0.8), KD(teacher, weight=0.4, name="kd_b")
    decay = DecayWeights([a, b], 0.5)
    assert isinstance(decay, Callback) and decay.settings() == {"intermediate_weight_decay": 0.5}
    result = bd.fit(bd.BNN(tiny_mlp(seed=2), dataset_size=32), (x, y), epochs=3, batch_size=16, progress=False,
                    distill=[a, b], callbacks=[decay])
    assert [r["intermediate_weight"] for r in result.history] == pytest.approx([0.4, 0.2, 0.1])
    assert b.weight == pytest.approx(0.05)
    assert DecayWeights([], 0.7, column="w").terms == []
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="factor"):
            DecayWeights([a], bad)
    with pytest.raises(TypeError, match="Term"):
        DecayWeights([nn.Linear(2, 2)], 0.5)


def test_heavy_student_defaults_pair_the_last_hidden_layers_and_normalize_pkt():
    """Without pairs: teacher's last hidden layer -> the auxiliary's, then the auxiliary's -> the
    student's (one final pair, no intermediate term); the PKT terms use PKT's default
    normalization unless ``normalize="none"``."""
    x, y = toy_classification(40)
    teacher = bd.BNN(tiny_mlp(hidden=12, seed=0), dataset_size=40)
    aux = bd.BNN(tiny_mlp(hidden=12, seed=1), dataset_size=40)
    student = _student()
    seen = []

    class Record(Callback):  # the terms of each stage's objective
        def on_fit_start(self, engine):
            seen.append([(t.name, dict(t.pairs), t.normalize) for t in engine.objective.terms])

    res = heavy_student(teacher, aux, student, (x, y), epochs=1, batch_size=20, progress=False, callbacks=[Record()])
    assert seen == [[("pkt", {"1": "1"}, "uniform")], [("pkt", {"1": "3"}, "uniform")]]
    assert "distill/pkt_intermediate/loss" not in res.student.history[0]
    seen.clear()
    heavy_student(teacher, aux, student, (x, y), epochs=1, batch_size=20, progress=False, callbacks=[Record()],
                  normalize="none")
    assert seen == [[("pkt", {"1": "1"}, "none")], [("pkt", {"1": "3"}, "none")]]
