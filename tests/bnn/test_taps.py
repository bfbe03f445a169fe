"""bayesdistill.bnn.taps: FeatureTaps (module outputs by path) and last_hidden_layer."""

from __future__ import annotations

import pytest
import torch

import bayesdistill as bd
from _helpers import tiny_conv1d, tiny_mlp
from bayesdistill.bnn.taps import FeatureTaps, last_hidden_layer


def conv_data(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, generator=g)


# ----------------------------------------------------------------------------- FeatureTaps
def test_feature_taps_capture_by_path_and_remove_hooks():
    net = tiny_conv1d(length=12, channels=4, seed=0)
    x = conv_data(4)
    with FeatureTaps(net, ["0", "1", "3"]) as taps:
        out = net(x)
    torch.testing.assert_close(taps.features["0"], net[0](x))
    torch.testing.assert_close(taps.features["1"], torch.relu(net[0](x)))
    torch.testing.assert_close(taps.features["3"], out)
    assert all(not m._forward_hooks for m in net.modules())


def test_feature_taps_wrong_path_names_it_and_lists_paths():
    net = tiny_mlp()
    with pytest.raises(KeyError) as err:
        FeatureTaps(net, ["0", "fc9"], "student")
    msg = str(err.value)
    assert "'fc9'" in msg and "student" in msg and "0, 1, 2" in msg


def test_feature_taps_still_importable_from_distill():
    from bayesdistill.distill import FeatureTaps as from_distill
    from bayesdistill.distill.terms.base import FeatureTaps as from_terms

    assert from_distill is from_terms is FeatureTaps is bd.bnn.FeatureTaps


# ----------------------------------------------------------------------------- last_hidden_layer
def test_last_hidden_layer_finds_the_feature_modules():
    for name, expected in (("cnn", "6"), ("cnn-deep", "8"), ("cnn-small", "6"), ("mlp", "4")):
        net = bd.models.build(name, (40,), 10)
        assert last_hidden_layer(net) == expected, name
        assert last_hidden_layer(bd.BNN(net).net) == expected, name  # weights as sites, not parameters


def test_last_hidden_layer_is_none_without_an_activation_before_the_readout():
    assert last_hidden_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))) is None
    assert last_hidden_layer(torch.nn.Sequential(torch.nn.ReLU())) is None  # no read-out at all
    # an activation after the read-out is not a hidden layer
    assert last_hidden_layer(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Softplus())) is None
    assert bd.bnn.last_hidden_layer is last_hidden_layer
