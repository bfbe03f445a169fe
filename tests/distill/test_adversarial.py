"""The adversarial weight prior (distill/adversarial.py): the penalty against a hand computation
with a fixed critic, critics that learn to separate two kernel distributions, the adaptive rule,
the student's optimizer never moving the critics, and an exact resume through the checkpoint.
"""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdistill as bd
from bayesdistill.distill.adversarial import AdversarialPrior, CriticTraining, KernelCritic, conv_pairs, kernel_slices
from bayesdistill.errors import ShapeMismatchError
from bayesdistill.infer import Objective


def small_cnn(channels: int = 3, k: int = 3, classes: int = 2) -> nn.Sequential:
    return nn.Sequential(bd.models.Unsqueeze(), nn.Conv1d(1, channels, k, padding=k // 2), nn.ReLU(),
                         nn.Conv1d(channels, channels, k, padding=k // 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * 8, classes))


def teacher_posterior(loc: float = 0.0, scale: float = 0.1, channels: int = 4, seed: int = 0) -> bd.MeanFieldPosterior:
    torch.manual_seed(seed)
    t = bd.BNN(small_cnn(channels), dataset_size=10)
    q = t.posterior()
    for k in q.locs:
        q.locs[k] = torch.full_like(q.locs[k], loc) + 0.01 * torch.randn_like(q.locs[k])
        q.scales[k] = torch.full_like(q.scales[k], scale)
    return q


def _factor_value(objective: Objective, x, y) -> float:
    """The term's contribution to the model's log-density: sum of its factor site times its scale."""
    tr = poutine.trace(objective.model).get_trace(x, y)
    sites = [s for n, s in tr.nodes.items() if n.startswith("distill.") and s["type"] == "sample"]
    return float(sum((s["fn"].log_prob(s["value"]) * s["scale"]).sum() for s in sites).detach()) if sites else 0.0


@pytest.mark.parametrize("penalty", ["log_sigmoid", "logit"])
@pytest.mark.parametrize("kl_weight", [1.0, 0.5, 0.0])
def test_penalty_matches_a_hand_computation(penalty, kl_weight):
    torch.manual_seed(0)
    q = teacher_posterior()
    student = bd.BNN(small_cnn(3), dataset_size=50)
    with torch.no_grad():
        student.rho.fill_(-40.0)  # scale ~ 4e-18: the drawn kernels are the means
    student.kl_weight = kl_weight
    term = AdversarialPrior(q, {"1": "1", "3": "3"}, weight=1.5, penalty=penalty, init_lambda=0.3)
    term.lambdas = [0.3, 0.7]
    objective = Objective(student, [term])
    x, y = torch.randn(5, 8), torch.randint(0, 2, (5,))
    got = _factor_value(objective, x, y)
    means = student.posterior().locs
    expected = 0.0
    for i, path in enumerate(["1", "3"]):
        logits = term.critics[i](kernel_slices(means[f"{path}.weight"]))
        per_slice = F.softplus(-logits) if penalty == "log_sigmoid" else -logits
        expected += term.lambdas[i] * float(per_slice.sum())
    assert got == pytest.approx(-1.5 * kl_weight * expected, rel=1e-5, abs=1e-9)
    assert float(term.metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    # the penalty counts once per step, whatever the batch size: a batch of 17 adds the same
    x2, y2 = torch.randn(17, 8), torch.randint(0, 2, (17,))
    assert _factor_value(objective, x2, y2) == pytest.approx(got, rel=1e-5, abs=1e-9)


def test_gradient_reaches_the_student_not_the_critics():
    q = teacher_posterior()
    student = bd.BNN(small_cnn(3), dataset_size=50)
    term = AdversarialPrior(q, {"1": "1"}, init_lambda=1.0)
    objective = Objective(student, [term])
    x, y = torch.randn(5, 8), torch.randint(0, 2, (5,))
    elbo = bd.MeanFieldELBO()
    elbo.differentiable_loss(objective.model, objective.guide, x, y).backward()
    assert all(p.grad is None and not p.requires_grad for p in term.critics.parameters())
    assert student.loc.grad is not None


def test_critics_learn_to_separate_two_kernel_distributions():
    torch.manual_seed(0)
    q = teacher_posterior(loc=0.8, scale=0.05)  # teacher kernels around +0.8
    student = bd.BNN(small_cnn(3), dataset_size=50)
    with torch.no_grad():  # student kernels around -0.8
        student.loc.fill_(-0.8)
        student.rho.fill_(-3.0)
    term = AdversarialPrior(q, {"1": "1", "3": "3"}, critic_steps=150)
    term.bind(student)
    trainer = term.callbacks()[0]
    assert isinstance(trainer, CriticTraining)
    before = trainer.probabilities()
    trainer.train_critics(150)
    after = trainer.probabilities()
    for (pr0, pf0), (pr, pf) in zip(before, after):
        assert pr > 0.8 and pf < 0.1, (before, after)  # real label 0.9: p_real tends to 0.9
    trainer.update_lambdas([pf for _, pf in after])
    assert term.lambdas == [2e-3, 2e-3]  # the critic wins: lambda doubles


def test_adaptive_rule_doubles_halves_and_clips():
    term = AdversarialPrior(teacher_posterior(), {"1": "1", "3": "3"}, init_lambda=1.0, bounds=(0.5, 3.0))
    trainer = term.callbacks()[0]
    trainer.update_lambdas([0.1, 0.3])
    assert term.lambdas == [2.0, 1.0]
    trainer.update_lambdas([0.1, 0.5])
    assert term.lambdas == [3.0, 0.5]  # clipped at both ends
    trainer.update_lambdas([0.5, 0.5])
    assert term.lambdas == [1.5, 0.5]
    fixed = AdversarialPrior(teacher_posterior(), {"1": "1"}, schedule="fixed")
    fixed.callbacks()[0].update_lambdas([0.0])
    assert fixed.lambdas == [1e-3]


def test_pairs_kernel_shapes_and_defaults():
    q = teacher_posterior()
    student = bd.BNN(nn.Sequential(bd.models.Unsqueeze(), nn.Conv1d(1, 2, 5, padding=2), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(16, 2)), dataset_size=10)
    with pytest.raises(ShapeMismatchError, match="same kernel shape"):
        Objective(student, [AdversarialPrior(q, {"1": "1"})])
    with pytest.raises(ShapeMismatchError, match="not a convolution"):
        AdversarialPrior(q, {"6": "1"})
    with pytest.raises(ShapeMismatchError, match="no teacher convolution has"):
        conv_pairs(q, student)
    with pytest.raises(KeyError, match="no parameter 'nope.weight'"):
        AdversarialPrior(q, {"nope": "1"})
    deep = bd.BNN(bd.models.build("cnn-deep", (40,), 10))
    small = bd.models.build("cnn-small", (40,), 10)
    assert conv_pairs(deep, small) == {"1": "1", "5": "3", "7": "5"}  # kernel, stride, then depth
    assert list(conv_pairs(deep.posterior(), small).values()) == ["1", "3", "5"]
    wide = bd.models.cnn1d(40, 10, channels=48)  # channel counts are free
    term = AdversarialPrior(deep)
    Objective(bd.BNN(wide), [term])
    assert term.pairs == {"1": "1", "5": "3", "7": "5"} and len(term.critics) == 3
    assert [c.net[0].in_features for c in term.critics] == [5, 3, 3]


def test_registered_and_built_from_options():
    assert "adversarial_prior" in bd.distill.available_terms()
    spec = bd.distill.get_term("adversarial_prior")
    teacher = bd.BNN(small_cnn(4))
    # the feature pairs of vid/pkt/hint (a command line passes them to every term) do not reach it
    (term,) = spec.make(teacher, {"8": "6"}, layers="1:1", init_lambda=0.01, penalty="logit", critic_steps=7)
    assert isinstance(term, AdversarialPrior) and term.lambdas == [0.01] and term.penalty == "logit"
    assert term.pairs == {"1": "1"} and term.critic_steps == 7
    (auto,) = spec.make(teacher, {"8": "6"})
    assert auto.default_pairs and not auto.pairs  # resolved by conv_pairs when the objective is built
    with pytest.raises(ValueError, match="penalty"):
        spec.make(teacher, None, penalty="hinge")
    with pytest.raises(ValueError, match="TEACHER:STUDENT"):
        spec.make(teacher, None, layers="1-1")
    assert bd.distill.adversarial.parse_layer_pairs("1:1, 1:3") == {"1": "1", "1#3": "3"}


def _fit(tmp, epochs, resume=False, stop_after=None):
    torch.manual_seed(0)
    q = teacher_posterior(loc=0.5)
    student = bd.BNN(small_cnn(3), dataset_size=40)
    term = AdversarialPrior(q, {"1": "1", "3": "3"}, critic_steps=5, init_lambda=0.5)
    x, y = torch.randn(40, 8), torch.randint(0, 2, (40,))
    callbacks = []
    if stop_after is not None:
        class Stop(bd.callbacks.Callback):
            order = 500  # after the critics' training, before the checkpoint (which is still written)

            def on_epoch_end(self, engine, record):
                if record["epoch"] == stop_after:
                    raise KeyboardInterrupt
        callbacks.append(Stop())
    try:
        res = bd.fit(student, (x, y), epochs=epochs, batch_size=16, distill=[term], checkpoint_dir=tmp, resume=resume,
                     progress=False, callbacks=callbacks, lr=1e-2)
    except KeyboardInterrupt:
        res = None
    return student, term, res


def test_resume_through_the_checkpoint_is_exact(tmp_path):
    a_student, a_term, a_res = _fit(tmp_path / "a", 3)
    _fit(tmp_path / "b", 3, stop_after=1)  # interrupted after epoch 1 (its checkpoint is written)
    b_student, b_term, b_res = _fit(tmp_path / "b", 3, resume=True)
    assert torch.equal(a_student.loc, b_student.loc) and torch.equal(a_student.rho, b_student.rho)
    for pa, pb in zip(a_term.critics.parameters(), b_term.critics.parameters()):
        assert torch.equal(pa, pb)
    assert a_term.lambdas == b_term.lambdas and b_term.warmed
    oa = a_term.callbacks()[0].optimizer.state_dict()["state"]
    ob = b_term.callbacks()[0].optimizer.state_dict()["state"]
    assert all(torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"]) for k in oa)
    cols = [k for k in a_res.history[-1] if k.startswith("distill/adversarial_prior/")]
    assert {"distill/adversarial_prior/pair0/lambda", "distill/adversarial_prior/pair1/p_fake"} <= set(cols)
    assert [r[c] for r in a_res.history for c in cols] == [r[c] for r in b_res.history for c in cols]


def test_critics_only_move_in_their_own_steps():
    """With no critic steps the student's training leaves the critics exactly as they were."""
    torch.manual_seed(0)
    term = AdversarialPrior(teacher_posterior(), {"1": "1"}, critic_steps=0, init_lambda=10.0)
    before = [p.detach().clone() for p in term.critics.parameters()]
    student = bd.BNN(small_cnn(3), dataset_size=40)
    x, y = torch.randn(40, 8), torch.randint(0, 2, (40,))
    res = bd.fit(student, (x, y), epochs=2, batch_size=16, distill=[term], progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, term.critics.parameters()))
    assert res.history[-1]["distill/adversarial_prior/loss"] > 0


def test_kernel_critic_and_slices():
    w = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    s = kernel_slices(w)
    assert s.shape == (6, 5) and torch.equal(s[4], w[1, 1])
    assert kernel_slices(torch.zeros(4, 2, 3, 3)).shape == (8, 9)
    with pytest.raises(ShapeMismatchError):
        kernel_slices(torch.zeros(4, 5))
    assert KernelCritic(5)(s).shape == (6,)
