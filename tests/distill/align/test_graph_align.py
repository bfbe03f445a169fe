"""``bd.align`` on residual networks and Transformers: the aligned student computes what the plan
claims, checked against teachers edited independently (plain copies with weights zeroed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import DataError, ShapeMismatchError
from bayesdistill.distill import aligned_network, check_alignable
from bayesdistill.distill.align import AlignmentPlan, RemoveBlock, RestrictGroup
from bayesdistill.distill.align.driver import align as align_fn
from bayesdistill.distill.align.graph_driver import GraphSettings, align_graph
from bayesdistill.distill.align.criteria import CRITERIA, BLOCK_CRITERIA
from _align_helpers import other_posterior
from _graph_helpers import dropped, plain_copy, tiny_resnet, tiny_transformer, zero_

X_IMG = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(3))
X_TOK = torch.randint(0, 20, (24, 6), generator=torch.Generator().manual_seed(3))


def _records(plan):
    return {L["teacher"]: L for L in plan.layers}


def _student_out(teacher, student_net, plan, x):
    s = aligned_network(teacher, student_net, plan).eval()
    with torch.no_grad():
        return s(x)


# ----------------------------------------------------------------------------- ResNets
def _stream_norms(net):
    """The BatchNorms that write each stage's stream, by the name of its group (the stem for stage 1)."""
    out = {}
    for i, stage in enumerate(net.stage_names):
        blocks = getattr(net, stage)
        bns = [f"{stage}.{j}.bn2" for j in range(len(blocks))]
        if i == 0:
            out["conv1"] = ["bn1"] + bns
        else:
            out[f"{stage}.0.conv2"] = bns + [f"{stage}.0.shortcut.1"]
    return out


def _masked_resnet(teacher_net, q, plan):
    """The teacher with the removed channels' BatchNorm entries and the removed blocks' last BatchNorm zeroed."""
    net = plain_copy(teacher_net, q)
    rec = _records(plan)
    bns = _stream_norms(net)
    for name, L in rec.items():
        if L["kind"] == "block":
            bn = net.get_submodule(f"{name}.bn2")
            zero_(bn.weight.data, range(bn.num_features))
            zero_(bn.bias.data, range(bn.num_features))
            continue
        for path in bns.get(name, [name.replace("conv1", "bn1")] if name.endswith("conv1") else []):
            bn = net.get_submodule(path)
            zero_(bn.weight.data, dropped(L))
            zero_(bn.bias.data, dropped(L))
    return net


@pytest.mark.parametrize("criterion", ["snr", "random", "data"])
def test_resnet_to_fewer_blocks_and_channels_computes_the_masked_teacher(criterion):
    teacher_net = tiny_resnet()
    teacher = bd.BNN(teacher_net)
    student_net = tiny_resnet(blocks=(1, 1), widths=(6, 8))  # ResNet "18 -> 10": one block per stage, narrower
    plan = bd.align(teacher, student_net, probe=X_IMG, criterion=criterion, compensation=False, removal="identity")
    rec = _records(plan)
    blocks = sorted(n for n, L in rec.items() if L["kind"] == "block")
    assert len(blocks) == 2 and blocks[1] == "layer2.1"  # layer2.0 has a projection: not removable
    assert rec["conv1"]["student_units"] == 6 and len(rec["conv1"]["kept"]) == 6
    assert rec["layer2.0.conv2"]["teacher_units"] == 12 and len(rec["layer2.0.conv2"]["kept"]) == 8
    got = _student_out(teacher, student_net, plan, X_IMG)
    with torch.no_grad():
        expected = _masked_resnet(teacher_net, teacher.posterior(), plan)(X_IMG)
        full = teacher.eval()(X_IMG)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    error = (expected - full).square().sum() / (full - full.mean(0)).square().sum()
    assert plan.output_error == pytest.approx(float(error), rel=1e-4)


def test_resnet18_to_resnet10_layout_computes_the_masked_teacher():
    """Four stages of two blocks -> one block per stage (ResNet-18 -> ResNet-10), narrower, at test widths."""
    teacher_net = tiny_resnet(blocks=(2, 2, 2, 2), widths=(8, 8, 12, 12))
    teacher = bd.BNN(teacher_net)
    student_net = tiny_resnet(blocks=(1, 1, 1, 1), widths=(4, 6, 8, 12))
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    plan = bd.align(teacher, student_net, probe=x, compensation=False, removal="identity", step=0.5)
    blocks = sorted(L["teacher"] for L in plan.layers if L["kind"] == "block")
    # stage 1's blocks both have identity skips; in stages 2-4 the first block has a projection shortcut
    assert blocks[0] in ("layer1.0", "layer1.1") and blocks[1:] == ["layer2.1", "layer3.1", "layer4.1"]
    with torch.no_grad():
        expected = _masked_resnet(teacher_net, teacher.posterior(), plan)(x)
    torch.testing.assert_close(_student_out(teacher, student_net, plan, x), expected, atol=1e-5, rtol=1e-5)


def test_removing_a_zeroed_residual_block_leaves_the_function_unchanged():
    teacher_net = tiny_resnet()
    with torch.no_grad():
        teacher_net.layer1[1].bn2.weight.zero_()
        teacher_net.layer1[1].bn2.bias.zero_()
    teacher = bd.BNN(teacher_net).eval()
    student_net = tiny_resnet(blocks=(1, 2))
    for kw in ({"remove": ["layer1.1"]}, {"probe": X_IMG, "criterion": "data", "compensation": False}):
        plan = bd.align(teacher, student_net, example=X_IMG[:2], **kw)
        assert [e for e in plan.edits if isinstance(e, RemoveBlock)] == [RemoveBlock("layer1.1")]
        assert plan.param_map["layer2.1.conv1.weight"] == "layer2.1.conv1.weight"
        with torch.no_grad():
            torch.testing.assert_close(_student_out(teacher, student_net, plan, X_IMG), teacher(X_IMG), atol=1e-6, rtol=0)


def test_a_removed_block_renumbers_the_blocks_after_it():
    teacher = bd.BNN(tiny_resnet(blocks=(3, 1), widths=(8, 8)))
    plan = bd.align(teacher, tiny_resnet(blocks=(2, 1), widths=(8, 8)), example=X_IMG[:2], remove=["layer1.1"])
    assert plan.param_map["layer1.2.conv1.weight"] == "layer1.1.conv1.weight"
    assert plan.param_map["layer1.0.bn1.running_mean"] == "layer1.0.bn1.running_mean"
    assert "layer1.1.conv1.weight" not in plan.param_map
    a = plan.aligned
    assert torch.equal(a.locs["layer1.1.conv2.weight"], teacher.posterior().locs["layer1.2.conv2.weight"])
    assert torch.equal(a.point_estimates["net.layer1.1.bn2.running_var"],
                       teacher.posterior().point_estimates["net.layer1.2.bn2.running_var"])


def test_the_plan_replays_on_another_posterior_and_through_save_and_load(tmp_path):
    teacher = bd.BNN(tiny_resnet())
    student_net = tiny_resnet(blocks=(1, 1), widths=(6, 8))
    plan = bd.align(teacher, student_net, example=X_IMG[:2])  # no probe: snr, no re-fit, replayable
    assert all(e.replayable for e in plan.edits) and plan.output_error is None
    q2 = other_posterior(teacher.posterior())
    a2 = plan.apply(q2)
    rec = _records(plan)
    removed1 = next(n for n, L in rec.items() if L["kind"] == "block" and n.startswith("layer1"))
    kept1 = [n for n in ("layer1.0", "layer1.1") if n != removed1][0]
    out, inp = rec[f"{kept1}.conv1"]["kept"], rec["conv1"]["kept"]
    expected = q2.locs[f"{kept1}.conv1.weight"][out][:, inp]
    assert torch.equal(a2.locs["layer1.0.conv1.weight"], expected)
    assert torch.equal(a2.scales["fc.weight"], q2.scales["fc.weight"][:, rec["layer2.0.conv2"]["kept"]])
    loaded = AlignmentPlan.load(plan.save(tmp_path / "plan.pt"))
    assert loaded.geometry == plan.geometry and loaded.edits == plan.edits
    b2 = loaded.apply(q2)
    for k in a2.locs:
        assert torch.equal(a2.locs[k], b2.locs[k]) and torch.equal(a2.scales[k], b2.scales[k])
    assert set(a2.point_estimates) == set(b2.point_estimates)
    assert "layer1.1" in plan.summary() or "layer1.0" in plan.summary()


def test_compensation_refits_the_readers_and_refuses_other_posteriors():
    teacher = bd.BNN(tiny_resnet())
    student_net = tiny_resnet(blocks=(1, 1), widths=(6, 8))
    plain = bd.align(teacher, student_net, probe=X_IMG, compensation=False, removal="identity")
    comp = bd.align(teacher, student_net, probe=X_IMG)
    assert comp.compensation and comp.removal == "refit"
    assert any(e.kind == "refit-layer" for e in comp.edits)
    assert comp.output_error < plain.output_error
    for L in comp.layers:
        for r in L["reconstruction"]:
            assert r["after"] <= r["before"] + 1e-9
    with pytest.raises(ValueError, match="re-fitted means"):
        comp.apply(other_posterior(teacher.posterior()))


# ----------------------------------------------------------------------------- Transformers
def _masked_transformer(teacher_net, q, plan):
    """Removed heads: their value rows zeroed; removed feed-forward units: their input rows; removed layers:
    both branches' last layers."""
    net = plain_copy(teacher_net, q)
    for name, L in _records(plan).items():
        if L["kind"] == "block":
            layer = net.get_submodule(name)
            for lin in (layer.attn.out, layer.ffn[3]):
                zero_(lin.weight.data, range(lin.out_features))
                zero_(lin.bias.data, range(lin.out_features))
        elif L["kind"] == "heads":
            attn = net.get_submodule(name)
            rows = [h * attn.head_dim + j for h in dropped(L) for j in range(attn.head_dim)]
            zero_(attn.v.weight.data, rows)
            zero_(attn.v.bias.data, rows)
        elif name.endswith("ffn.0"):
            lin = net.get_submodule(name)
            zero_(lin.weight.data, dropped(L))
            zero_(lin.bias.data, dropped(L))
    return net


@pytest.mark.parametrize("criterion", ["snr", "data"])
def test_transformer_to_fewer_layers_heads_and_units_computes_the_masked_teacher(criterion):
    teacher_net = tiny_transformer()
    teacher = bd.BNN(teacher_net)
    student_net = tiny_transformer(layers=3, heads=2, ffn=7)
    plan = bd.align(teacher, student_net, probe=X_TOK, criterion=criterion, compensation=False, removal="identity")
    rec = _records(plan)
    assert sum(L["kind"] == "block" for L in rec.values()) == 3
    assert all(len(L["kept"]) == 2 for L in rec.values() if L["kind"] == "heads")
    assert all(len(L["kept"]) == 7 for n, L in rec.items() if n.endswith("ffn.0"))
    expected = _masked_transformer(teacher_net, teacher.posterior(), plan)(X_TOK)
    torch.testing.assert_close(_student_out(teacher, student_net, plan, X_TOK), expected, atol=1e-5, rtol=1e-5)


def test_removing_zeroed_transformer_layers_leaves_the_function_unchanged():
    teacher_net = tiny_transformer(layers=4)
    with torch.no_grad():
        for i in (1, 2):
            for lin in (teacher_net.layers[i].attn.out, teacher_net.layers[i].ffn[3]):
                lin.weight.zero_()
                lin.bias.zero_()
    teacher = bd.BNN(teacher_net).eval()
    student_net = tiny_transformer(layers=2)
    plan = bd.align(teacher, student_net, probe=X_TOK, block_criterion="data", compensation=False)
    assert sorted(e.path for e in plan.edits if isinstance(e, RemoveBlock)) == ["layers.1", "layers.2"]
    with torch.no_grad():
        torch.testing.assert_close(_student_out(teacher, student_net, plan, X_TOK), teacher(X_TOK), atol=1e-6, rtol=0)


def test_least_squares_compensation_is_exact_for_duplicated_units():
    """Feed-forward units 6..11 copy units 0..5: dropping them and re-fitting the output layer loses nothing."""
    teacher_net = tiny_transformer(layers=1)
    ffn = teacher_net.layers[0].ffn
    with torch.no_grad():
        ffn[0].weight[6:] = ffn[0].weight[:6]
        ffn[0].bias[6:] = ffn[0].bias[:6]
    teacher = bd.BNN(teacher_net).eval()
    student_net = tiny_transformer(layers=1, ffn=6)
    keep_first = lambda ctx: -torch.arange(ctx.units, dtype=torch.float64)  # noqa: E731
    kw = dict(probe=X_TOK, criterion=keep_first)
    plain = bd.align(teacher, student_net, compensation=False, **kw)
    comp = bd.align(teacher, student_net, compensation=True, **kw)
    assert _records(comp)["layers.0.ffn.0"]["kept"] == list(range(6))
    assert plain.output_error > 1e-2 and comp.output_error < 1e-6
    with torch.no_grad():
        torch.testing.assert_close(_student_out(teacher, student_net, comp, X_TOK), teacher(X_TOK), atol=1e-4, rtol=1e-4)


class _TorchEncoder(nn.Module):
    """Embedding -> torch's nn.TransformerEncoder (pre-norm) -> mean over positions -> Linear."""

    def __init__(self, layers: int, ffn: int, norm_first: bool = True):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.emb = nn.Embedding(20, 8)
            layer = nn.TransformerEncoderLayer(8, 2, ffn, dropout=0.0, batch_first=True, norm_first=norm_first)
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.enc(self.emb(x)).mean(1))


def test_torch_transformer_encoder_layers_and_feed_forward_units():
    model = _TorchEncoder

    teacher = bd.BNN(model(4, 16))
    plan = bd.align(teacher, model(2, 10), probe=X_TOK, compensation=False, removal="identity")
    assert sum(L["kind"] == "block" for L in plan.layers) == 2
    net = plain_copy(model(4, 16), teacher.posterior())
    for name, L in _records(plan).items():
        layer = net.get_submodule(name if L["kind"] == "block" else name.rsplit(".", 1)[0])
        if L["kind"] == "block":
            for lin in (layer.self_attn.out_proj, layer.linear2):
                zero_(lin.weight.data, range(lin.out_features))
                zero_(lin.bias.data, range(lin.out_features))
        elif name.endswith("linear1"):
            zero_(layer.linear1.weight.data, dropped(L))
            zero_(layer.linear1.bias.data, dropped(L))
    with torch.no_grad():
        expected = net(X_TOK)
        got = aligned_network(teacher, model(2, 10), plan).eval()(X_TOK)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- reachability
def test_unreachable_students_are_named_before_any_probe_pass():
    teacher = bd.BNN(tiny_resnet())
    calls = []
    teacher.net.register_forward_hook(lambda *a: calls.append(1))
    cases = [
        (tiny_resnet(widths=(10, 12)), r"student channels 'conv1' has 10 units but the teacher's 'conv1' has 8"),
        (tiny_resnet(blocks=(3, 2)), r"student container 'layer1' has 3 children but the teacher's only 2"),
        (tiny_resnet(blocks=(2, 1)), None),  # fine: layer2.1 is removable
        (tiny_resnet(blocks=(2, 0)), r"'layer2' has 2 fewer blocks.*only 1 .*'layer2.0': its output reaches"),
    ]
    for student, match in cases:
        calls.clear()
        if match is None:
            check_alignable(teacher, student, example=X_IMG[:2])
            continue
        with pytest.raises(ShapeMismatchError, match=match):
            bd.align(teacher, student, probe=X_IMG, criterion="data")
        with pytest.raises(ShapeMismatchError, match=match):
            check_alignable(teacher, student, example=X_IMG[:2])
        assert len(calls) <= 1  # the probe check only: no pass over the probe data
    other = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 5))
    with pytest.raises(ShapeMismatchError, match="has no counterpart in the teacher"):
        check_alignable(teacher, other, example=X_IMG[:2])


def test_transformer_limits_are_named():
    teacher = bd.BNN(tiny_transformer())
    narrow_model = bd.models.transformer(4, 6, vocab_size=20, d_model=6, num_heads=4, head_dim=2, ffn_dim=12, num_layers=6)
    with pytest.raises(ShapeMismatchError, match=r"'embed' has 6 units.*cannot be narrowed: LayerNorm"):
        check_alignable(teacher, narrow_model, example=X_TOK[:2])
    with pytest.raises(ShapeMismatchError, match=r"differ: \('SelfAttention', 2\) vs \('SelfAttention', 1\)"):
        check_alignable(teacher, tiny_transformer(head_dim=1), example=X_TOK[:2])

    with pytest.raises(ShapeMismatchError, match="post-norm"):
        bd.align(bd.BNN(_TorchEncoder(3, 16, norm_first=False)), _TorchEncoder(2, 16, norm_first=False), example=X_TOK[:2])


def test_settings_of_the_graph_path():
    teacher = bd.BNN(tiny_resnet())
    student = tiny_resnet(blocks=(1, 1))
    with pytest.raises(DataError, match="criterion='data'.*needs probe data"):
        bd.align(teacher, student, example=X_IMG[:2], criterion="data")
    with pytest.raises(DataError, match="block_criterion='data'"):
        bd.align(teacher, student, example=X_IMG[:2], block_criterion="data")
    with pytest.raises(ValueError, match="removal must be 'auto', 'identity' or 'refit'"):
        bd.align(teacher, student, example=X_IMG[:2], removal="permutation")
    with pytest.raises(KeyError, match="no such teacher block"):
        bd.align(teacher, student, example=X_IMG[:2], remove=["layer1.7", "layer2.1"])
    with pytest.raises(ShapeMismatchError, match="'layer2.0' cannot be removed"):
        bd.align(teacher, student, example=X_IMG[:2], remove=["layer1.1", "layer2.0"])
    # without an example the chain parser says what is not a chain
    with pytest.raises(bd.UnsupportedLayerError, match="ResNet"):
        bd.align(teacher, student)


def test_a_registered_block_criterion_is_used_by_name():
    calls = []

    @bd.distill.register_block_criterion("last-first-test")
    def last_first(ctx):
        calls.append(ctx.path)
        return -int(ctx.path.rsplit(".", 1)[1])

    try:
        teacher = bd.BNN(tiny_resnet(blocks=(3, 1), widths=(8, 8)))
        plan = bd.align(teacher, tiny_resnet(blocks=(2, 1), widths=(8, 8)), example=X_IMG[:2],
                        block_criterion="last-first-test")
        assert [e.path for e in plan.edits if isinstance(e, RemoveBlock)] == ["layer1.2"]
        assert sorted(calls) == ["layer1.0", "layer1.1", "layer1.2"]
    finally:
        BLOCK_CRITERIA.pop("last-first-test")


# ----------------------------------------------------------------------------- a chain as a graph
@pytest.mark.parametrize("criterion", ["snr", "data"])
def test_a_chain_aligned_as_a_graph_gives_the_chain_result(criterion):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 6, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 5, 8), nn.ReLU(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 3, 3, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(3 * 5, 5), nn.ReLU(), nn.Linear(5, 3))
    teacher = bd.BNN(net, init_scale=0.1)
    x = torch.randn(40, 1, 5)
    chain = align_fn(teacher, student, probe=x, criterion=criterion, compensation=False, removal="permutation")
    settings = GraphSettings(CRITERIA[criterion], criterion, BLOCK_CRITERIA["snr"], "snr", False, False, 0.25, 0,
                             None, False)
    graph = align_graph(teacher, student, x[:2], x, settings)
    assert list(graph.aligned.locs) == list(chain.aligned.locs)
    for k in chain.aligned.locs:
        torch.testing.assert_close(graph.aligned.locs[k], chain.aligned.locs[k], rtol=0, atol=0)
        torch.testing.assert_close(graph.aligned.scales[k], chain.aligned.scales[k], rtol=0, atol=0)
    assert [len(L["kept"]) for L in graph.layers] == [4, 3, 5, 3]
    assert isinstance(graph.edits[0], RestrictGroup)
    assert graph.output_error == pytest.approx(chain.output_error, rel=1e-4)


def test_the_alignment_plot_draws_a_graph_plan():
    teacher = bd.BNN(tiny_resnet())
    plan = bd.align(teacher, tiny_resnet(blocks=(1, 1), widths=(6, 8)), probe=X_IMG)
    fig = bd.plots.alignment(plan)
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_torchvision_resnet_when_torchvision_imports():
    try:
        from torchvision.models.resnet import BasicBlock, ResNet
    except Exception as err:  # not installed, or unimportable next to this torch build
        pytest.skip(f"torchvision cannot be imported here ({type(err).__name__})")
    torch.manual_seed(0)
    teacher = bd.BNN(ResNet(BasicBlock, [2, 2, 2, 2], num_classes=5))
    student = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)
    x = torch.randn(4, 3, 32, 32)
    plan = bd.align(teacher, student, example=x[:2])
    assert sum(L["kind"] == "block" for L in plan.layers) == 4
    assert _student_out(teacher, student, plan, x).shape == (4, 5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_alignment_on_cuda_equals_cpu():
    teacher = bd.BNN(tiny_resnet())
    student_net = tiny_resnet(blocks=(1, 1), widths=(6, 8))
    cpu = bd.align(teacher, student_net, probe=X_IMG, criterion="data")
    gpu = bd.align(teacher.to("cuda"), student_net, probe=X_IMG.cuda(), criterion="data")
    assert [e for e in gpu.edits if e.replayable] == [e for e in cpu.edits if e.replayable]
    for k in cpu.aligned.locs:
        torch.testing.assert_close(gpu.aligned.locs[k].cpu(), cpu.aligned.locs[k], rtol=1e-3, atol=1e-4)


def test_mobilenet_with_depthwise_convolutions_to_a_half_width_shallower_one():
    """Depthwise kernels follow their channels; the student equals the teacher evaluated with the plan's
    edits (removed units zeroed at their readers, removed blocks as the identity)."""
    from bayesdistill.distill.align import GraphEditor
    from bayesdistill.distill.align.graph_editor import masked
    from _graph_helpers import randomize_norms

    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher_net = randomize_norms(bd.models.mobilenetv2(4, setting=((1, 8, 1, 1), (6, 12, 3, 2), (6, 16, 2, 2)),
                                                            last_channels=32))
    student_net = bd.models.mobilenetv2(4, width=0.5, setting=((1, 8, 1, 1), (6, 12, 1, 2), (6, 16, 1, 2)),
                                        last_channels=24)
    teacher = bd.BNN(teacher_net)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plan = bd.align(teacher, student_net, probe=x, compensation=False, removal="identity")
    assert sorted(L["teacher"] for L in plan.layers if L["kind"] == "block") == ["stages.1.1", "stages.1.2", "stages.2.1"]
    editor = GraphEditor(plan.geometry, teacher.posterior())
    for edit in plan.edits:
        edit.replay(editor)
    teacher.eval()
    with torch.no_grad(), masked(teacher.net, editor):
        expected = teacher.forward_with(x, editor.locs)
    torch.testing.assert_close(_student_out(teacher, student_net, plan, x), expected, atol=1e-5, rtol=1e-5)
    # the depthwise kernels of a narrowed expansion are sliced with it
    kept = _records(plan)["stages.2.0.conv.0"]["kept"]
    torch.testing.assert_close(plan.aligned.locs["stages.2.0.conv.3.weight"],
                               teacher.posterior().locs["stages.2.0.conv.3.weight"][kept])
