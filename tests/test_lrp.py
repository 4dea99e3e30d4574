"""LRP and LayerLRP against independent references.

Oracles: zennit (its rules on the original torch module, hooked per layer, while we run the ONNX
export through our import), Captum's LRP on a torch module it supports (no MaxPool: its rules need
torch's own modules), hand-computed relevances of a 2-layer net, and conservation (Σ relevance =
the target output) on bias-free nets at real magnitudes. Tolerance against zennit and Captum:
1e-5 of the largest |relevance| (float32; measured 0 to ~1e-7 on this machine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr
from onnx_attr.errors import InputError, UnsupportedOpError
from onnx_attr.methods.lrp import AlphaBeta, Composite, Epsilon, Gamma, ZBox

from exporting import to_onnx

zennit = pytest.importorskip("zennit")
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit import types as zt  # noqa: E402

EPS = 1e-6  # zennit's default stabilizer; every rule on both sides uses it
RTOL = 1e-5


def _net(bias: bool = True) -> nn.Sequential:
    """Linear, Conv, ReLU, MaxPool, AvgPool and BatchNorm: every layer kind the brief names."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, bias=bias), nn.ReLU(), nn.BatchNorm2d(6), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(54, 10, bias=bias), nn.ReLU(), nn.Linear(10, 5, bias=bias)).eval()
    with torch.no_grad():
        bn = net[5]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5) if bias else bn.bias.zero_()
        if not bias:
            bn.running_mean.zero_()
    return net


@pytest.fixture(scope="module")
def net_and_model():
    net = _net()
    return net, onnx_attr.load(to_onnx(net, torch.rand(2, 3, 16, 16)))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255


def _zennit(net: nn.Module, composite, x: torch.Tensor, target: int, layer: nn.Module | None = None) -> torch.Tensor:
    """zennit's relevance at the input (or at `layer`'s output), the output relevance = target value."""
    live = x.clone().requires_grad_(True)
    kept = {}
    handle = layer.register_forward_hook(lambda m, i, o: kept.setdefault("h", o)) if layer is not None else None
    try:
        with composite.context(net) as hooked:
            out = hooked(live)
            seed = torch.zeros_like(out)
            seed[:, target] = out[:, target].detach()
            wanted = kept["h"] if layer is not None else live
            (relevance,) = torch.autograd.grad(out, wanted, seed)
    finally:
        if handle is not None:
            handle.remove()
    return relevance


def _same_layers(rule) -> zc.LayerMapComposite:
    """One zennit rule on every Conv and Linear; epsilon on BatchNorm and AvgPool, as ours."""
    return zc.LayerMapComposite([(zt.Activation, zr.Pass()), (zt.AvgPool, zr.Epsilon(EPS)),
                                 (zt.BatchNorm, zr.Epsilon(EPS)), (zt.Convolution, rule), (nn.Linear, rule)])


def _close(ours, theirs) -> None:
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    assert scale > 0
    assert float((ours - theirs).abs().max()) <= RTOL * scale


@pytest.mark.parametrize("ours,theirs", [
    ("epsilon", zr.Epsilon(EPS)), ("gamma", zr.Gamma(0.25, EPS)), (Gamma(1.0, EPS), zr.Gamma(1.0, EPS)),
    ("alpha1beta0", zr.AlphaBeta(1, 0, EPS)), ("alpha2beta1", zr.AlphaBeta(2, 1, EPS)), ("z_plus", zr.ZPlus(EPS)),
    ("flat", zr.Flat(EPS)), (ZBox(-3.0, 300.0, EPS), zr.ZBox(-3.0, 300.0, EPS)),
], ids=["epsilon", "gamma", "gamma1", "alpha1beta0", "alpha2beta1", "z_plus", "flat", "z_B"])
def test_each_rule_equals_zennit(net_and_model, pixels, ours, theirs):
    net, model = net_and_model
    relevance = onnx_attr.LRP(model, ours, epsilon=EPS).attribute(pixels, target=3)
    _close(relevance, _zennit(net, _same_layers(theirs), pixels, 3))


@pytest.mark.parametrize("name,zennit_composite", [
    ("epsilon_gamma_box", lambda: zc.EpsilonGammaBox(low=0.0, high=255.0, epsilon=EPS, stabilizer=EPS,
                                                     layer_map=[(zt.BatchNorm, zr.Epsilon(EPS))])),
    ("epsilon_plus", lambda: zc.EpsilonPlus(epsilon=EPS, stabilizer=EPS, layer_map=[(zt.BatchNorm, zr.Epsilon(EPS))])),
    ("epsilon_plus_flat", lambda: zc.EpsilonPlusFlat(epsilon=EPS, stabilizer=EPS,
                                                     layer_map=[(zt.BatchNorm, zr.Epsilon(EPS))])),
    ("epsilon_alpha2_beta1", lambda: zc.EpsilonAlpha2Beta1(epsilon=EPS, stabilizer=EPS,
                                                           layer_map=[(zt.BatchNorm, zr.Epsilon(EPS))])),
])
def test_named_composites_equal_zennit(net_and_model, pixels, name, zennit_composite):
    net, model = net_and_model
    lrp = onnx_attr.LRP(model, composite=name, epsilon=EPS, bounds=(0.0, 255.0))
    _close(lrp.attribute(pixels, target=1), _zennit(net, zennit_composite(), pixels, 1))


def test_rules_by_node_name_equal_zennit_name_map(net_and_model, pixels):
    """Captum's per-layer `rule`, by ONNX node name: z⁺ on the second Conv, alpha2beta1 on the last Gemm."""
    net, model = net_and_model
    lrp = onnx_attr.LRP(model, "epsilon", epsilon=EPS, rules={"node_conv2d_1": "z_plus", "node_linear_1": AlphaBeta(2, 1, EPS)})
    ours = lrp.attribute(pixels, target=0)
    assert {r["node"]: r["rule"] for r in lrp.last_report["rules"]}["node_conv2d_1"].startswith("AlphaBeta(alpha=1.0")
    theirs = zc.NameLayerMapComposite(
        name_map=[(("3",), zr.ZPlus(EPS)), (("10",), zr.AlphaBeta(2, 1, EPS))],
        layer_map=[(zt.Activation, zr.Pass()), (zt.AvgPool, zr.Epsilon(EPS)), (zt.BatchNorm, zr.Epsilon(EPS)),
                   (zt.Convolution, zr.Epsilon(EPS)), (nn.Linear, zr.Epsilon(EPS))])
    _close(ours, _zennit(net, theirs, pixels, 0))


def test_layer_lrp_equals_zennit_at_the_layer(net_and_model, pixels):
    net, model = net_and_model
    ours, delta = onnx_attr.LayerLRP(model, "relu_1", composite="epsilon_plus", epsilon=EPS).attribute(
        pixels, target=2, return_convergence_delta=True)
    theirs = _zennit(net, zc.EpsilonPlus(epsilon=EPS, stabilizer=EPS, layer_map=[(zt.BatchNorm, zr.Epsilon(EPS))]),
                     pixels, 2, layer=net[4])
    _close(ours, theirs)
    out = net(pixels)[:, 2].double()
    assert torch.allclose(delta, out - theirs.double().sum((1, 2, 3)), rtol=1e-5, atol=1e-6)


def test_layer_input_relevance_is_the_input_relevance_at_the_first_layer(net_and_model, pixels):
    """attribute_to_layer_input at the first Conv's output: the relevance entering that Conv from x."""
    _, model = net_and_model
    at_input = onnx_attr.LayerLRP(model, "conv2d", "z_plus").attribute(pixels, target=4, attribute_to_layer_input=True)
    _close(at_input, onnx_attr.LRP(model, "z_plus").attribute(pixels, target=4))


class _CaptumNet(nn.Module):
    """Modules Captum's LRP has rules for (no MaxPool: that is the point), each used once."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.relu1 = nn.Conv2d(3, 5, 3, bias=False), nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(5, 4, 3, bias=False), nn.ReLU()
        self.fc1, self.relu3, self.fc2 = nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(h.reshape(h.shape[0], -1))))


@pytest.fixture(scope="module")
def captum_net_and_model():
    net = _CaptumNet().eval()
    return net, onnx_attr.load(to_onnx(net, torch.rand(2, 3, 14, 14)))


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha1beta0"])
def test_captum_lrp_where_it_applies(captum_net_and_model, rule):
    """Captum's rules equal ours on non-negative inputs into bias-free Conv layers (Captum's gamma and
    alpha1-beta0 modify the weight only, ours every parameter; and both see ReLU outputs after)."""
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    net, model = captum_net_and_model
    x = torch.rand(3, 3, 14, 14, generator=torch.Generator().manual_seed(3)) * 255
    for conv in (net.conv1, net.conv2):
        conv.rule = {"gamma": GammaRule, "alpha1beta0": Alpha1_Beta0_Rule, "epsilon": EpsilonRule}[rule]()
    theirs, their_delta = CaptumLRP(net).attribute(x, target=1, return_convergence_delta=True)
    ours, delta = onnx_attr.LRP(model, composite=Composite(conv=rule, dense="epsilon")).attribute(
        x, target=1, return_convergence_delta=True)
    _close(ours, theirs.detach())
    assert torch.allclose(delta, their_delta.double(), rtol=1e-4, atol=1e-4 * float(net(x)[:, 1].detach().abs().max()))


class _TwoLayer(nn.Module):
    """h = relu(W1 x + b1), y = w2 · h, with W1 = [[2, 1], [1, -1]], b1 = (0, 3), w2 = (1, 2)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(2, 2), nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([[2.0, 1.0], [1.0, -1.0]]))
            self.first.bias.copy_(torch.tensor([0.0, 3.0]))
            self.second.weight.copy_(torch.tensor([[1.0, 2.0]]))

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


@pytest.fixture(scope="module")
def two_layer():
    return onnx_attr.load(to_onnx(_TwoLayer().eval(), torch.ones(1, 2)))


@pytest.mark.parametrize("rule,expected", [
    # x = (1, 2): h = (4, 2), y = 8; the top layer gives R(h) = (4, 4) (all contributions positive).
    # LRP-0: h1 sends 2/4·4 to each x; h2 (z = 1 - 2 + 3) sends 1/2·4 = 2 to x1, -2/2·4 = -4 to x2 and
    # 3/2·4 = 6 to its bias: (4, -2), Σ = 2 = y - 6.
    ("zero", (4.0, -2.0)),
    # z⁺: h2's positive part is x1·1 + b1 = 4 (x2's -2 is dropped): x1 gets 1/4·4 = 1, x2 nothing: (3, 2)
    ("z_plus", (3.0, 2.0)),
    # alpha 2, beta 1: the top layer has no negative part, so R(h) = 2·(4, 4); h1 sends 2·(2/4)·8 to each
    # x; h2 sends 2·(1/4)·8 = 4 to x1 and -(-2/-2)·8 = -8 to x2: (12, 0)
    ("alpha2beta1", (12.0, 0.0)),
])
def test_hand_computed_two_layer_example(two_layer, rule, expected):
    model = two_layer
    relevance, delta = onnx_attr.LRP(model, rule, epsilon=1e-12).attribute(
        np.array([[1.0, 2.0]], np.float32), return_convergence_delta=True)
    assert isinstance(relevance, np.ndarray)
    np.testing.assert_allclose(relevance, [expected], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(delta.numpy(), [8.0 - sum(expected)], rtol=1e-6, atol=1e-5)


@pytest.fixture(scope="module")
def bias_free():
    net = _net(bias=False)
    with torch.no_grad():
        for layer in (net[0], net[3], net[8], net[10]):
            layer.weight.mul_(4.0)
    return net, onnx_attr.load(to_onnx(net, torch.rand(2, 3, 16, 16)))


@pytest.mark.parametrize("rule", ["epsilon", "z_plus", "gamma", Epsilon(0.0)])
def test_conservation_at_real_magnitudes(bias_free, rule):
    """Bias-free ReLU CNN with MaxPool, 0-255 pixels, logits in the hundreds: Σ relevance = output."""
    net, model = bias_free
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 255
    out = net(x).detach()
    target = out.abs().argmax(1)
    chosen = out[torch.arange(4), target]
    assert float(chosen.abs().min()) > 100, "the net should give logits in the hundreds"
    relevance, delta = onnx_attr.LRP(model, rule).attribute(x, target=target, return_convergence_delta=True)
    assert torch.allclose(relevance.double().sum((1, 2, 3)), chosen.double(), rtol=1e-5)
    assert float((delta.abs() / chosen.double().abs()).max()) <= 1e-5


def test_report_lists_every_rule(net_and_model, pixels):
    _, model = net_and_model
    lrp = onnx_attr.LRP(model, composite="epsilon_gamma_box", bounds=(0, 255))
    lrp.attribute(pixels[:1], target=0)
    rules = {r["node"]: r["rule"] for r in lrp.last_report["rules"]}
    assert rules["node_conv2d"].startswith("ZBox") and rules["node_conv2d_1"].startswith("Gamma")
    assert rules["node_linear"].startswith("Epsilon") and rules["node_max_pool2d"] == "winner-take-all"
    assert rules["node_relu"] == "pass" and rules["node_avg_pool2d"].startswith("Epsilon")


def test_forward_is_bit_exact_and_unchanged_after_lrp(net_and_model, pixels):
    _, model = net_and_model
    before = model(pixels)
    lrp = onnx_attr.LRP(model, "gamma")
    lrp.attribute(pixels, target=0)
    twin = model.with_module(lrp._rewrite(model)[1].module)
    assert torch.equal(twin(pixels), before) and torch.equal(model(pixels), before)


class _WithSoftmaxInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.softmax(self.a(x), dim=1) * x)


def test_ops_without_a_rule_are_named():
    model = onnx_attr.load(to_onnx(_WithSoftmaxInside().eval(), torch.rand(2, 4)))
    with pytest.raises(UnsupportedOpError) as err:
        onnx_attr.LRP(model).attribute(torch.rand(2, 4), target=0)
    assert "LRP has no rule for" in str(err.value) and "Softmax" in str(err.value) and "Mul" in str(err.value)


def test_bad_rules_are_clear_errors(net_and_model):
    _, model = net_and_model
    with pytest.raises(InputError, match="unknown LRP rule 'epsilonn'"):
        onnx_attr.LRP(model, "epsilonn")
    with pytest.raises(InputError, match="unknown LRP composite"):
        onnx_attr.LRP(model, composite="plus")
    with pytest.raises(InputError, match="bounds"):
        onnx_attr.LRP(model, "z_B")
    with pytest.raises(InputError, match="alpha - beta = 1"):
        AlphaBeta(3.0, 1.0)


def test_cli_lrp_equals_the_api(tmp_path, net_and_model, pixels):
    from onnx_attr.app.cli import LRP_COMPOSITES, LRP_RULES, main
    from onnx_attr.deeplift.rules.lrp import COMPOSITES, RULE_NAMES

    assert set(LRP_RULES) == set(RULE_NAMES) and set(LRP_COMPOSITES) == set(COMPOSITES)
    net, model = net_and_model
    path = tmp_path / "net.onnx"
    path.write_bytes(to_onnx(net, torch.rand(2, 3, 16, 16)))
    np.savez(tmp_path / "x.npz", x=pixels.numpy())
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--method", "lrp", "--lrp-composite", "epsilon_gamma_box", "--lrp-bounds", "0,255",
                 "--target", "2", "--no-pictures"]) == 0
    found = np.load(tmp_path / "out" / "attributions.npz")["x"]
    expected = onnx_attr.LRP(model, composite="epsilon_gamma_box", bounds=(0, 255)).attribute(pixels, target=2)
    np.testing.assert_allclose(found, expected.numpy(), rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
    for bad in (["--baseline", "zeros"], ["--lrp-rule", "z_B"], ["--lrp-bounds", "low,high"]):
        assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "bad"), "-q",
                     "--method", "lrp", *bad]) == 2, bad
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "bad"), "-q",
                 "--lrp-rule", "gamma"]) == 2


class _PoolHead(nn.Module):
    """Overlapping, padded max pooling (kernel 3, stride 2, pad 1) -> a bias-free linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.pool, self.head = nn.MaxPool2d(3, 2, padding=1), nn.Linear(2 * 3 * 3, 3, bias=False)

    def forward(self, x):
        return self.head(self.pool(x).flatten(1))


def test_proportional_max_pooling_equals_a_numpy_loop():
    """maxpool="proportional": each window's relevance split by x_i / Σ window, summed over the
    overlapping windows that hold x_i; here against a plain loop over the windows."""
    net = _PoolHead().eval()
    model = onnx_attr.load(to_onnx(net, torch.rand(2, 2, 5, 5)))
    x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(6)) * 255
    ours, delta = onnx_attr.LRP(model, "zero", maxpool="proportional").attribute(x, target=1,
                                                                                 return_convergence_delta=True)
    xs = x.double().numpy()
    pooled = net.pool(x).double().numpy()
    w = net.head.weight.double().detach().numpy()[1].reshape(2, 3, 3)
    f = (pooled * w).sum((1, 2, 3))
    expected = np.zeros_like(xs)
    for n in range(2):
        relevance_pool = pooled[n] * w * f[n] / f[n]  # LRP-0 at the bias-free head: R_j = p_j w_j
        for c in range(2):
            for i in range(3):
                for j in range(3):
                    rows = range(max(0, 2 * i - 1), min(5, 2 * i + 2))
                    cols = range(max(0, 2 * j - 1), min(5, 2 * j + 2))
                    total = sum(xs[n, c, r, k] for r in rows for k in cols)
                    for r in rows:
                        for k in cols:
                            expected[n, c, r, k] += xs[n, c, r, k] / total * relevance_pool[c, i, j]
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert float((delta.abs() / torch.as_tensor(f).abs()).max()) <= 1e-5  # proportional conserves too
    winner = onnx_attr.LRP(model, "zero").attribute(x, target=1)
    assert int((winner != 0).sum()) < int((ours != 0).sum())  # winner-take-all: one input per window
    with pytest.raises(InputError, match="max pooling mode"):
        onnx_attr.LRP(model, maxpool="average")


@pytest.mark.parametrize("ours,theirs,bias", [("epsilon", zr.Epsilon(EPS), True), ("gamma", zr.Gamma(0.25, EPS), False),
                                              ("alpha2beta1", zr.AlphaBeta(2, 1, EPS), False)])
def test_matmul_with_a_constant_weight_equals_zennit(ours, theirs, bias):
    """A Linear on [N, T, F] exports as MatMul (+ Add): the weight is a constant operand, not a module
    parameter. The epsilon rule composes through the bias Add exactly; the others are checked bias-free."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(6, 5, bias=bias), nn.ReLU(), nn.Linear(5, 3, bias=bias)).eval()
    model = onnx_attr.load(to_onnx(net, torch.rand(2, 4, 6)))
    assert {n.meta.get("onnx_op") for n in model.module.graph.nodes} >= {"MatMul"}
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(8)) * 50
    relevance = onnx_attr.LRP(model, ours, epsilon=EPS).attribute(x, target=(2, 1))
    live = x.clone().requires_grad_(True)
    with _same_layers(theirs).context(net) as hooked:
        out = hooked(live)
        seed = torch.zeros_like(out)
        seed[:, 2, 1] = out[:, 2, 1].detach()
        (expected,) = torch.autograd.grad(out, live, seed)
    _close(relevance, expected)


def test_fixed_batch_export_runs_in_chunks(net_and_model, pixels):
    """An export with batch 2 baked in gets 3 examples in chunks of 2 (the last padded)."""
    net, model = net_and_model
    fixed = onnx_attr.load(to_onnx(net, torch.rand(2, 3, 16, 16), dynamic_batch=False))
    x = torch.cat([pixels, pixels[:1] * 0.5])
    found, delta = onnx_attr.LRP(fixed, "z_plus").attribute(x, target=[0, 1, 2], return_convergence_delta=True)
    expected, expected_delta = onnx_attr.LRP(model, "z_plus").attribute(x, target=[0, 1, 2],
                                                                         return_convergence_delta=True)
    _close(found, expected)
    assert found.shape == x.shape and torch.allclose(delta, expected_delta, rtol=1e-5, atol=1e-4)
