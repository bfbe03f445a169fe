"""The closed-form KL (bnn/kl.py) against torch.distributions, stable for tiny scales."""

from __future__ import annotations

import math

import torch
import torch.distributions as td

from bayesdistill.bnn.kl import PriorConstants, fused_normal_kl


def _ref(q_loc, q_scale, p_loc, p_scale):
    return td.kl_divergence(td.Normal(q_loc.double(), q_scale.double()), td.Normal(p_loc.double(), p_scale.double())).sum()


def test_per_weight_form_equals_torch_distributions_and_stays_finite_for_tiny_scales():
    g = torch.Generator().manual_seed(0)
    q_loc, p_loc = torch.randn(50, generator=g), torch.randn(50, generator=g)
    q_scale = torch.rand(50, generator=g) + 0.01
    p_scale = torch.rand(50, generator=g) + 0.5
    kl = fused_normal_kl([(q_loc, q_scale, p_loc, p_scale)])
    torch.testing.assert_close(kl.double(), _ref(q_loc, q_scale, p_loc, p_scale), rtol=1e-5, atol=1e-4)
    # s_q / s_p = 1e-25: the ratio's square underflows to 0 in float32, its log would be -inf
    tiny = torch.full((3,), 1e-25)
    kl = fused_normal_kl([(torch.zeros(3), tiny, torch.zeros(3), torch.ones(3))])
    expected = 3 * (-math.log(1e-25) - 0.5)  # log(s_p/s_q) + s_q^2/2 - 1/2 per weight
    assert math.isfinite(float(kl)) and abs(float(kl) - expected) / expected < 1e-5


def test_cached_form_equals_the_per_weight_form():
    g = torch.Generator().manual_seed(1)
    flat_loc, flat_scale = torch.randn(30, generator=g), torch.rand(30, generator=g) + 0.3
    q_loc = torch.randn(30, generator=g, requires_grad=True)
    q_scale = (torch.rand(30, generator=g) + 0.1).requires_grad_()
    pairs = [(q_loc[:10], q_scale[:10], flat_loc[:10], flat_scale[:10]),
             (q_loc[10:], q_scale[10:], flat_loc[10:], flat_scale[10:])]
    cached = fused_normal_kl(pairs, PriorConstants())
    plain = fused_normal_kl([(q_loc, q_scale, flat_loc, flat_scale)])
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached.double(), _ref(q_loc, q_scale, flat_loc, flat_scale), rtol=1e-5, atol=1e-4)


def test_cached_form_gradients_equal_autograd_of_the_expression():
    """The hand-written backward of the cached form (unit and general prior scales, zero and
    non-zero prior means) equals autograd of the per-weight expression, in float64."""
    g = torch.Generator().manual_seed(3)
    for unit, zero in ((True, True), (False, True), (False, False), (True, False)):
        base_loc = torch.zeros(40, dtype=torch.float64) if zero else torch.randn(40, generator=g, dtype=torch.float64)
        base_scale = torch.ones(40, dtype=torch.float64) if unit else torch.rand(40, generator=g, dtype=torch.float64) + 0.5
        q_loc = torch.randn(40, generator=g, dtype=torch.float64, requires_grad=True)
        q_scale = (torch.rand(40, generator=g, dtype=torch.float64) + 0.05).requires_grad_()
        pairs = [(q_loc[:25], q_scale[:25], base_loc[:25], base_scale[:25]),
                 (q_loc[25:], q_scale[25:], base_loc[25:], base_scale[25:])]
        cached = fused_normal_kl(pairs, PriorConstants())
        ref = _ref(q_loc, q_scale, base_loc, base_scale)
        torch.testing.assert_close(cached, ref, rtol=1e-12, atol=1e-10)
        for a, b in zip(torch.autograd.grad(cached, [q_loc, q_scale]), torch.autograd.grad(ref, [q_loc, q_scale])):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
