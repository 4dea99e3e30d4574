"""DeepLIFT's RevealCancel rule: hand-computed values (the docs' worked example), a port of the
reference implementation's algorithm (kundajelab/deeplift) in numpy, exact and at its own
pseudocount, completeness on whole models, and the forward left unchanged."""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr
from onnx import TensorProto, helper, numpy_helper
from onnx_attr.deeplift.rules.reveal_cancel import split_multipliers

from conftest import FLOAT, make_model
from exporting import to_onnx


class _Cancel(nn.Module):
    """relu(x1 - x2): the paper's example of contributions that cancel inside a ReLU."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1, bias=False)
        self.linear.weight.data = torch.tensor([[1.0, -1.0]])

    def forward(self, x):
        return torch.relu(self.linear(x))


def test_hand_computed_values():
    model = onnx_attr.load(to_onnx(_Cancel(), torch.randn(2, 2)))
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, target=0, return_convergence_delta=True)
    # x = (3, 1): Δx⁺ = 3, Δx⁻ = -1; Δy⁺ = ½(relu 3 - 0) + ½(relu 2 - relu -1) = 2.5,
    # Δy⁻ = ½(relu -1 - 0) + ½(relu 2 - relu 3) = -0.5. x = (1, 3): the output is 0 but the
    # rule reveals +0.5 and -0.5 where Rescale gives 0 and 0.
    torch.testing.assert_close(attributions, torch.tensor([[2.5, -0.5], [0.5, -0.5]]))
    assert delta.abs().max() == 0
    assert method.last_report["rule"] == "revealcancel"
    assert len(method.last_report["reveal_cancel_nodes"]) == 1 and method.last_report["rescale_nodes"] == []
    rescale = onnx_attr.DeepLift(model).attribute(x, target=0)
    torch.testing.assert_close(rescale, torch.tensor([[3.0, -1.0], [0.0, 0.0]]))


# --- The reference implementation's algorithm (kundajelab/deeplift, deeplift/layers/), re-created ---
#
# Over flat vectors of one example: a Dense or Conv layer is its matrix M (rows: output units), an
# average pooling its matrix of positive weights, an activation its function. The forward pass keeps,
# per layer, the activation, the reference activation and the positive and negative contributions;
# the backward pass carries positive and negative multipliers. Either float64 arrays or object arrays
# of Fractions (exact: the pseudocount h can then be made as small as we like).


def _pos(a):
    return np.where(a > 0, a, 0)


def _neg(a):
    return np.where(a < 0, a, 0)


def _near_zero(t, h):
    """The reference's pseudocount: |t| < h/2 becomes t + h (t >= 0) or t - h (t < 0)."""
    small = np.abs(t) < h / 2
    return t + np.where(small & (t >= 0), h, 0) - np.where(small & (t < 0), h, 0)


def _reference_reveal_cancel(layers, x, x0, target, h=1e-7):
    """Contributions of x - x0 to output unit `target` under RevealCancel, as the reference computes
    them; `layers` is a list of ("linear", M, b), ("pool", P) and ("act", f)."""
    acts, refs = [x], [x0]
    plus, minus = [_pos(x - x0)], [_neg(x - x0)]  # an input's contributions: its own sign
    kept = []
    for kind, *spec in layers:
        a, r = acts[-1], refs[-1]
        if kind == "linear":  # contributions split by the sign of each term M_ji * (a_i - r_i)
            m, b = spec
            d = a - r
            plus.append(_pos(m) @ _pos(d) + _neg(m) @ _neg(d))
            minus.append(_neg(m) @ _pos(d) + _pos(m) @ _neg(d))
            acts.append(m @ a + b)
            refs.append(m @ r + b)
            kept.append(d)
        elif kind == "pool":  # positive weights: carries both kinds of contributions
            (m,) = spec
            plus.append(m @ plus[-1])
            minus.append(m @ minus[-1])
            acts.append(m @ a)
            refs.append(m @ r)
            kept.append(None)
        else:
            (f,) = spec
            dp, dn = _near_zero(plus[-1], h), _near_zero(minus[-1], h)
            up = ((f(r + dp) - f(r)) + (f(r + dn + dp) - f(r + dn))) / 2
            down = ((f(r + dn) - f(r)) + (f(r + dp + dn) - f(r + dp))) / 2
            plus.append(up)
            minus.append(down)
            acts.append(f(a))
            refs.append(f(r))
            kept.append((up / dp, down / dn))
    grad_plus = acts[-1] * 0  # zeros of the arithmetic's own type (a Python int 0 would turn 0/2 into a float)
    grad_plus[target] += 1
    grad_minus = grad_plus.copy()
    for (kind, *spec), saved in zip(reversed(layers), reversed(kept)):
        if kind == "linear":  # both multipliers of an input: by the sign of its own change
            m, d = spec[0], saved
            routed = (np.where(d > 0, _pos(m).T @ grad_plus + _neg(m).T @ grad_minus, 0)
                      + np.where(d < 0, _neg(m).T @ grad_plus + _pos(m).T @ grad_minus, 0)
                      + np.where(d == 0, m.T @ ((grad_plus + grad_minus) / 2), 0))
            grad_plus, grad_minus = routed, routed
        elif kind == "pool":
            grad_plus, grad_minus = spec[0].T @ grad_plus, spec[0].T @ grad_minus
        else:
            grad_plus, grad_minus = saved[0] * grad_plus, saved[1] * grad_minus
    return grad_plus * plus[0] + grad_minus * minus[0]


def _relu(z):
    return np.where(z > 0, z, z * 0)


def _exact(a: np.ndarray) -> np.ndarray:
    return np.array([Fraction(float(v)) for v in np.ravel(a)], dtype=object).reshape(np.shape(a))


def _both_references(layers, x, x0, targets):
    """The reference algorithm at its own pseudocount (float64) and with an infinitesimal one (exact)."""
    at_own = np.stack([_reference_reveal_cancel(layers, a, x0, t) for a, t in zip(x, targets)])
    exact_layers = [(kind, *[_exact(v) for v in spec]) if kind != "act" else (kind, *spec)
                    for kind, *spec in layers]
    limit = np.stack([_reference_reveal_cancel(exact_layers, _exact(a), _exact(x0), t, h=Fraction(1, 10**30))
                      for a, t in zip(x, targets)])
    assert all(isinstance(v, Fraction) for v in limit.ravel())  # no float crept into the exact arithmetic
    return at_own, limit.astype(np.float64)


def _conv_matrix(conv: nn.Conv2d, shape):
    """A stride-1 Conv2d with zero padding as a matrix over flattened (C, H, W) inputs, and its bias."""
    w = conv.weight.detach().numpy()
    (pad, _), (channels, height, width) = conv.padding, shape
    out_channels, _, k, _ = w.shape
    out_h, out_w = height + 2 * pad - k + 1, width + 2 * pad - k + 1
    m = np.zeros((out_channels * out_h * out_w, channels * height * width))
    for o, i, j, c, di, dj in np.ndindex(out_channels, out_h, out_w, channels, k, k):
        r, s = i + di - pad, j + dj - pad
        if 0 <= r < height and 0 <= s < width:
            m[(o * out_h + i) * out_w + j, (c * height + r) * width + s] = w[o, c, di, dj]
    bias = np.repeat(conv.bias.detach().numpy(), out_h * out_w)
    return ("linear", m, bias), (out_channels, out_h, out_w)


def _pool_matrix(k: int, shape):
    """A k x k average pooling with stride k as a matrix over flattened (C, H, W) inputs."""
    channels, height, width = shape
    out_h, out_w = height // k, width // k
    m = np.zeros((channels * out_h * out_w, channels * height * width))
    for c, i, j, di, dj in np.ndindex(channels, out_h, out_w, k, k):
        m[(c * out_h + i) * out_w + j, (c * height + i * k + di) * width + j * k + dj] = 1 / k ** 2
    return ("pool", m), (channels, out_h, out_w)


DOUBLE = TensorProto.DOUBLE
_FUNCTIONS = {nn.ReLU: _relu, nn.Tanh: np.tanh, nn.Sigmoid: lambda z: 1 / (1 + np.exp(-z))}
_ONNX_OPS = {nn.ReLU: "Relu", nn.Tanh: "Tanh", nn.Sigmoid: "Sigmoid", nn.Flatten: "Flatten"}


def _reference_layers(net: nn.Sequential, shape):
    """The layers of a Sequential of Linear/Conv2d/AvgPool2d/activations/Flatten, for the port."""
    layers = []
    for module in net:
        if isinstance(module, nn.Linear):
            layers.append(("linear", module.weight.detach().numpy(), module.bias.detach().numpy()))
        elif isinstance(module, nn.Conv2d):
            layer, shape = _conv_matrix(module, shape)
            layers.append(layer)
        elif isinstance(module, nn.AvgPool2d):
            layer, shape = _pool_matrix(module.kernel_size, shape)
            layers.append(layer)
        elif type(module) in _FUNCTIONS:
            layers.append(("act", _FUNCTIONS[type(module)]))
    return layers


def _onnx_of(net: nn.Sequential, shape, outputs: int):
    """The same Sequential as an ONNX graph written node by node (Gemm, Conv, AveragePool, ...): fast
    to build, and independent of torch's exporter."""
    nodes, inits, name = [], {}, "x"
    elem = DOUBLE if next(net.parameters()).dtype == torch.float64 else FLOAT
    for i, module in enumerate(net):
        out, params = f"t{i}", [f"w{i}", f"b{i}"]
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            inits.update(zip(params, (module.weight.detach().numpy(), module.bias.detach().numpy())))
            nodes.append(helper.make_node("Gemm", [name, *params], [out], transB=1) if isinstance(module, nn.Linear)
                         else helper.make_node("Conv", [name, *params], [out], pads=[module.padding[0]] * 4))
        elif isinstance(module, nn.AvgPool2d):
            k = module.kernel_size
            nodes.append(helper.make_node("AveragePool", [name], [out], kernel_shape=[k, k], strides=[k, k]))
        else:
            nodes.append(helper.make_node(_ONNX_OPS[type(module)], [name], [out]))
        name = out
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    return make_model(nodes, [("x", elem, ["n", *shape])], [("y", elem, ["n", outputs])], inits)


def _worked_net() -> nn.Sequential:
    """The worked example of docs/architecture.md: a = relu(x1 - x2 - 1), b = relu(x1), g = relu(a + b - 1)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
        net[0].bias.copy_(torch.tensor([-1.0, 0.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([-1.0]))
    return net


@pytest.mark.usefixtures("hole_filling")
def test_worked_example_of_the_docs():
    net = _worked_net()
    model = onnx_attr.load(_onnx_of(net, [2], 1))
    x = torch.tensor([[2.0, 2.0]])
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, target=0, return_convergence_delta=True)
    # a is off at x and at x0 (Δa = 0) though x1 pushes it up by 2 and x2 down by 2: m⁺_a = m⁻_a = ¼.
    # g's input gains 2 from b and nothing from a (Δx⁻_g = 0): m⁺_g = (g - g0)/2 = ½, and the
    # pseudocount secant m⁻_g = ½[relu'(-1) + relu'(1)] = ½. a gets ½(m⁺_g + m⁻_g) = ½ and passes
    # ½·¼·2 = +¼ to x1 and -¼ to x2; b passes ½·1·2 = 1 to x1.
    torch.testing.assert_close(attributions, torch.tensor([[1.25, -0.25]]), rtol=0, atol=1e-6)
    assert delta.abs().max() <= 1e-6
    assert len(method.last_report["reveal_cancel_nodes"]) == 2
    at_own, limit = _both_references(_reference_layers(net, (2,)), x.double().numpy(), np.zeros(2), [0])
    np.testing.assert_allclose(limit, [[1.25, -0.25]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(at_own, [[1.25, -0.25]], rtol=0, atol=1e-6)
    # Rescale sees a as one unchanged unit, which passes nothing
    torch.testing.assert_close(onnx_attr.DeepLift(model).attribute(x, target=0), torch.tensor([[1.0, 0.0]]))


def _realistic(shape, seed):
    """Pixels in 0..255 and a reference as far from them as a random other image."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 255,
            torch.rand(1, *shape[1:], generator=g, dtype=torch.float64) * 255)


def _relu_net(kind: str) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Two hidden Dense+ReLU layers; or Conv -> AvgPool -> ReLU (the pooling between the weighted op and
    the nonlinearity), Conv -> ReLU -> AvgPool, Dense -> ReLU -> Dense."""
    if kind == "dense":
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), (6,)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(2), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                        nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    return net, (2, 4, 4)


@functools.lru_cache(maxsize=None)
def _relu_case(kind: str, seed: int):
    """A random net of `_relu_net` with logits in the hundreds, its import, inputs at pixel magnitudes,
    targets, and both reference results (built once for both hole-filling formulations)."""
    torch.manual_seed(seed)
    net, shape = _relu_net(kind)
    net = net.double().eval()
    with torch.no_grad():
        net[-1].weight.mul_(40 if kind == "dense" else 1000)
    outputs, n = net[-1].out_features, 5 if kind == "dense" else 3
    model = onnx_attr.load(_onnx_of(net, shape, outputs))
    x, x0 = _realistic((n, *shape), seed)
    targets = [i % outputs for i in range(n)]
    references = _both_references(_reference_layers(net, shape), x.flatten(1).numpy(), x0.flatten().numpy(), targets)
    return net, model, x, x0, targets, references


@pytest.mark.parametrize("kind,seed", [("dense", 0), ("dense", 1), ("dense", 2), ("dense", 3), ("conv", 0),
                                       ("conv", 1)])
@pytest.mark.usefixtures("hole_filling")
def test_relu_nets_equal_the_reference_algorithm(kind, seed):
    net, model, x, x0, targets, (at_own, limit) = _relu_case(kind, seed)
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    ours, delta = method.attribute(x, x0, target=targets, return_convergence_delta=True)
    fused = {"dense": 2, "conv": 3}[kind]  # every ReLU: the conv net's first one through its AvgPool
    assert len(method.last_report["reveal_cancel_nodes"]) == fused and method.last_report["rescale_nodes"] == []
    ours, scale = ours.flatten(1).numpy(), np.abs(limit).max()
    # the reference algorithm with its pseudocount taken to 0 (exact arithmetic), to float64 rounding
    np.testing.assert_allclose(ours, limit, rtol=0, atol=1e-13 * scale)
    # at its own pseudocount 1e-7 it differs by O(1e-7 / Δx) where a unit crosses its kink
    np.testing.assert_allclose(ours, at_own, rtol=0, atol=1e-6 * scale)
    with torch.no_grad():
        change = (net(x) - net(x0)).abs().max()
    assert change > 100 and delta.abs().max() <= 1e-12 * change


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.usefixtures("hole_filling")
def test_completeness_in_float32_at_realistic_magnitudes(kind):
    """Pixels 0..255, a far reference, logits in the hundreds: Σ attributions = f(x) - f(x0) to float32
    rounding, pseudocount secants (a step float32 resolves next to large activations) included."""
    torch.manual_seed(5)
    net, shape = _relu_net(kind)
    net = net.eval()
    with torch.no_grad():
        net[-1].weight.mul_(40 if kind == "dense" else 1000)
    model = onnx_attr.load(_onnx_of(net, shape, net[-1].out_features))
    x, x0 = (t.float() for t in _realistic((8, *shape), 7))
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, x0, target=0, return_convergence_delta=True)
    assert torch.isfinite(attributions).all()
    with torch.no_grad():
        change = (net(x) - net(x0))[:, 0]
    assert change.abs().max() > 100
    assert delta.abs().max() <= 1e-5 * change.abs().max(), (delta, change)


def _pooled_conv_model(tail: list, shape_after: list, inits: dict):
    """x[n, 2, 4, 4] -> Conv -> `tail` (ending in tensor "p") -> Relu -> Flatten -> Gemm, by hand."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]), *tail,
             helper.make_node("Relu", ["p"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)]
    features = int(np.prod(shape_after))
    inits = {"cw": rng.normal(size=(3, 2, 3, 3)) * 0.3, "cb": rng.normal(size=3),
             "gw": rng.normal(size=(2, features)) * 30, "gb": rng.normal(size=2), **inits}
    return make_model(nodes, [("x", DOUBLE, ["n", 2, 4, 4])], [("y", DOUBLE, ["n", 2])], inits)


@pytest.mark.usefixtures("hole_filling")
def test_global_average_pool_carries_the_terms_like_the_reference():
    model = onnx_attr.load(_pooled_conv_model([helper.make_node("GlobalAveragePool", ["c"], ["p"])], [3], {}))
    inits = {t.name: numpy_helper.to_array(t) for t in model.onnx_model.graph.initializer}
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(inits["cw"]))
        conv.bias.copy_(torch.from_numpy(inits["cb"]))
    conv_layer, shape = _conv_matrix(conv, (2, 4, 4))
    pool_layer, _ = _pool_matrix(4, shape)
    layers = [conv_layer, pool_layer, ("act", _relu), ("linear", inits["gw"], inits["gb"])]
    x, x0 = _realistic((4, 2, 4, 4), 8)
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    ours, delta = method.attribute(x, x0, target=[0, 1, 0, 1], return_convergence_delta=True)
    assert len(method.last_report["reveal_cancel_nodes"]) == 1
    _, limit = _both_references(layers, x.flatten(1).numpy(), x0.flatten().numpy(), [0, 1, 0, 1])
    np.testing.assert_allclose(ours.flatten(1).numpy(), limit, rtol=0, atol=1e-13 * np.abs(limit).max())
    assert delta.abs().max() <= 1e-12 * np.abs(limit).sum(1).max()


@pytest.mark.usefixtures("hole_filling")
def test_pad_slice_and_reductions_join_the_fused_chain():
    tail = [helper.make_node("Pad", ["c", "pads"], ["padded"], mode="reflect"),
            helper.make_node("Slice", ["padded", "starts", "ends", "axes"], ["sliced"]),
            helper.make_node("ReduceSum", ["sliced", "sum_axes"], ["summed"], keepdims=1),
            helper.make_node("ReduceMean", ["summed"], ["p"], axes=[2], keepdims=1)]
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "starts": np.array([1], np.int64),
             "ends": np.array([5], np.int64), "axes": np.array([3], np.int64), "sum_axes": np.array([3], np.int64)}
    model = onnx_attr.load(_pooled_conv_model(tail, [3, 1, 1], inits))
    x, x0 = _realistic((4, 2, 4, 4), 9)
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, x0, target=1, return_convergence_delta=True)
    assert len(method.last_report["reveal_cancel_nodes"]) == 1 and method.last_report["rescale_nodes"] == []
    change = (model.run({"x": x})[0] - model.run({"x": x0})[0])[:, 1]
    assert change.abs().max() > 100 and delta.abs().max() <= 1e-12 * change.abs().max()
    rescale = onnx_attr.DeepLift(model).attribute(x, x0, target=1)
    assert not torch.allclose(rescale, attributions)


@pytest.mark.usefixtures("hole_filling")
def test_smooth_nonlinearities_equal_the_reference_algorithm():
    """Tanh and Sigmoid: the reference's own float64 secants (pseudocount 1e-7) against ours."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid())
    net = net.double().eval()
    model = onnx_attr.load(_onnx_of(net, [6], 4), strip_final_activation=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    x0 = -torch.randn(1, 6, generator=g, dtype=torch.float64) * 3
    targets = [0, 3, 1, 2]
    ours, delta = onnx_attr.DeepLift(model, rule="revealcancel").attribute(x, x0, target=targets,
                                                                          return_convergence_delta=True)
    layers = _reference_layers(net, (6,))
    expected = np.stack([_reference_reveal_cancel(layers, a.numpy(), x0[0].numpy(), t) for a, t in zip(x, targets)])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert delta.abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.usefixtures("hole_filling")
def test_pseudocount_secants(dtype):
    """Where Δx⁺ or Δx⁻ is 0: the mean of the secants from x0 and from x0 + Δx∓, over a step that
    float32 still resolves at large magnitudes (the reference's 1e-7 vanishes next to 300)."""
    x0 = torch.tensor([300.0, -40.0, 0.0, -2.0, 0.0], dtype=dtype)
    d_plus = torch.tensor([0.0, 50.0, 0.0, 5.0, 4.0], dtype=dtype)
    d_minus = torch.tensor([-5.0, 0.0, 0.0, 0.0, -3.0], dtype=dtype)
    x = x0 + d_plus + d_minus
    m_plus, m_minus = split_multipliers(torch.relu, x0, torch.relu(x), torch.relu(x0), d_plus, d_minus)
    # 1: on from 295 to 300; 2: Δx⁻ = 0, relu'(-40) and relu'(10); 3: both 0, at the kink the step
    # goes up (the reference's sign for 0); 4: (relu(3) - relu(-2)) / 5, and relu'(-2), relu'(3);
    # 5: Δy⁺ = ½(4 + 1) over 4, Δy⁻ = ½(0 - 3) over -3
    torch.testing.assert_close(m_plus, torch.tensor([1.0, 0.2, 1.0, 0.6, 0.625], dtype=dtype))
    torch.testing.assert_close(m_minus, torch.tensor([1.0, 0.5, 1.0, 0.5, 0.5], dtype=dtype))

class _Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2, 16), nn.Linear(16, 5)
        self.act = nn.PReLU(16)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.nn.functional.elu(self.conv2(h) + h[:, :1, 1:-1, 1:-1])  # a residual add: Rescale there
        h = self.act(self.fc1(h.flatten(1)))
        return self.fc2(h * torch.sigmoid(h))


@functools.lru_cache(maxsize=None)
def _cnn_onnx(dtype: torch.dtype) -> bytes:
    """_Cnn with seeded weights, exported once per dtype (the exporter is the slow part)."""
    torch.manual_seed(0)
    return to_onnx(_Cnn().to(dtype).eval(), torch.zeros(2, 3, 8, 8, dtype=dtype))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.usefixtures("hole_filling")
def test_completeness_on_a_cnn(dtype, tol):
    model = onnx_attr.load(_cnn_onnx(dtype))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 8, generator=g, dtype=dtype)
    x0 = torch.randn(1, 3, 8, 8, generator=g, dtype=dtype) * 0.1
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, x0, target=[0, 1, 2, 3, 4], return_convergence_delta=True)
    change = method.last_report["convergence_delta"]
    assert attributions.shape == x.shape and len(change) == 5
    assert method.last_report["max_relative_delta"] <= tol
    ops = {n for n, _, _ in method.engine.rewrite.rewritten}
    assert set(method.last_report["reveal_cancel_nodes"]) <= ops
    # conv1 -> Relu and fc1 -> PRelu fused; Elu follows a residual Add, Sigmoid a PRelu: Rescale there
    assert len(method.last_report["reveal_cancel_nodes"]) == 2
    assert len(method.last_report["rescale_nodes"]) == 2
    differs = onnx_attr.DeepLift(model).attribute(x, x0, target=[0, 1, 2, 3, 4])
    assert not torch.allclose(differs, attributions)


def test_forward_is_unchanged_bit_for_bit():
    model = onnx_attr.load(_cnn_onnx(torch.float32))
    rewritten = onnx_attr.DeepLift(model, rule="revealcancel").engine.rewrite.module
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rewritten(x), model(x))


def test_unknown_rule_is_a_clear_error():
    model = onnx_attr.load(_onnx_of(_worked_net(), [2], 1))
    with pytest.raises(onnx_attr.InputError, match="unknown DeepLift rule 'revealcancell'"):
        onnx_attr.DeepLift(model, rule="revealcancell")



def _conv_bn_model(sign: float):
    """Conv -> BatchNormalization -> Relu -> MatMul -> bias Add -> Tanh -> ReduceSum, built by hand
    (exporters fold the BatchNormalization into the Conv)."""
    rng = np.random.default_rng(4)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "proj"], ["m"]),
        helper.make_node("Add", ["m", "proj_bias"], ["a"]),
        helper.make_node("Tanh", ["a"], ["h"]),
        helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=0),
    ]
    inits = {"w": f32(rng.normal(size=(3, 2, 3, 3))), "scale": f32(sign * np.array([0.5, 1.0, 2.0])),
             "bias": f32(rng.normal(size=3)), "mean": f32(rng.normal(size=3)), "var": f32(rng.random(3) + 0.5),
             "proj": f32(rng.normal(size=(3, 4))), "proj_bias": f32(rng.normal(size=4)),
             "axes": np.array([1, 2], np.int64)}
    return make_model(nodes, [("x", FLOAT, ["n", 2, 6, 6])], [("y", FLOAT, ["n", 4])], inits)


@pytest.mark.parametrize("sign,fused", [(1.0, 2), (-1.0, 1)], ids=["positive-scale", "negative-scale"])
def test_chains_through_bias_and_positive_scales_only(sign, fused):
    model = onnx_attr.load(_conv_bn_model(sign))
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    method.attribute(x, target=[0, 1, 3])
    assert method.last_report["max_relative_delta"] < 1e-4
    assert len(method.last_report["reveal_cancel_nodes"]) == fused


def test_nonlinearities_left_to_rescale_are_said(tmp_path):
    """khmercut's int8 segmenter (hunt 38): onnxruntime's dynamic quantization puts MatMulInteger before
    each Relu, no weighted op with constant float weights, so every Relu fell back to Rescale and the run
    gave Rescale's attributions bit for bit under the RevealCancel header, saying so only in report.json.
    Now a warning says how many fell back; the float model, every Relu fused, warns nothing."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, ["N", 8])], [("y", FLOAT, ["N", 3])], {"w1": w1, "w2": w2}, opset=17)
    float_path, int8_path = tmp_path / "mlp.onnx", tmp_path / "mlp_int8.onnx"
    import onnx

    onnx.save(model, float_path)
    quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8)
    x = torch.from_numpy(rng.normal(size=(4, 8)).astype(np.float32))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_attr.DeepLift(onnx_attr.load(str(float_path)), rule="revealcancel").attribute(x, target=0)
    assert not [w for w in caught if "RevealCancel applies" in str(w.message)]
    with pytest.warns(UserWarning, match=r"RevealCancel applies to 0 of 1 nonlinearities; the other 1 use Rescale"):
        method = onnx_attr.DeepLift(onnx_attr.load(str(int8_path)), rule="revealcancel")
    method.attribute(x, target=0)
    assert method.last_report["rescale_nodes"] and not method.last_report["reveal_cancel_nodes"]
