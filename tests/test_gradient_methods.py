"""Saliency, InputXGradient and IntegratedGradients against Captum on the same imported module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient as CaptumIxG
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from torch import nn

import onnx_attr

from exporting import to_onnx


@pytest.fixture(scope="module")
def imported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    return onnx_attr.load(to_onnx(model, torch.randn(2, 3, 8, 8)))


X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
B = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.2
TARGET = [0, 3, 4]


def test_saliency_and_input_x_gradient_equal_captum(imported):
    module = imported.module
    for abs_ in (True, False):
        ours = onnx_attr.Saliency(imported).attribute(X, target=TARGET, abs=abs_)
        torch.testing.assert_close(ours, CaptumSaliency(module).attribute(X, target=TARGET, abs=abs_), atol=1e-6,
                                   rtol=1e-5)
    ours = onnx_attr.InputXGradient(imported).attribute(X, target=TARGET)
    torch.testing.assert_close(ours, CaptumIxG(module).attribute(X, target=TARGET), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_middle", "riemann_right"])
def test_integrated_gradients_equal_captum(imported, method):
    ours, delta = onnx_attr.IntegratedGradients(imported).attribute(
        X, B, target=TARGET, n_steps=20, method=method, internal_batch_size=13, return_convergence_delta=True)
    theirs, their_delta = CaptumIG(imported.module).attribute(
        X, B.expand_as(X), target=TARGET, n_steps=20, method=method, return_convergence_delta=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta, their_delta.double(), atol=1e-5, rtol=1e-3)


def test_integrated_gradients_delta_falls_with_steps_and_gauss_legendre_needs_fewer():
    """On a smooth model (Gauss-Legendre's advantage needs a smooth integrand; MaxPool is not)."""
    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2), nn.Flatten(),
                           nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    ig = onnx_attr.IntegratedGradients(onnx_attr.load(to_onnx(smooth, torch.randn(2, 3, 8, 8))))
    delta = {(m, n): float(ig.attribute(X, B, target=TARGET, n_steps=n, method=m,
                                        return_convergence_delta=True)[1].abs().max())
             for m in ("riemann_trapezoid", "gausslegendre") for n in (5, 10, 20, 50)}
    assert delta[("riemann_trapezoid", 50)] < delta[("riemann_trapezoid", 5)] / 4
    fewest = min(n for n in (5, 10, 20, 50) if delta[("gausslegendre", n)] <= delta[("riemann_trapezoid", 50)])
    assert fewest <= 10, delta  # measured: 5 Gauss-Legendre steps (3e-8) beat 50 trapezoid steps (6e-7)


def test_token_ids_are_attributed_at_their_embedding_lookup():
    """As DeepLift does: Saliency, InputXGradient and IG on ids attribute the lookup's output and
    sum over the embedding axis; an integer input read only as a mask is still refused clearly."""
    import numpy as np
    from onnx import helper

    from conftest import FLOAT, INT64, make_model

    table = np.arange(10, dtype=np.float32).reshape(5, 2) / 10
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Tanh", ["e"], ["out"], name="t")]
    model = onnx_attr.load(make_model(nodes, [("ids", INT64, ["n", 3])], [("out", FLOAT, ["n", 3, 2])],
                                      {"table": table}))
    ids = np.array([[1, 2, 4]])
    e, e0 = table[ids[0]], table[0]
    grad = 1 - np.tanh(e) ** 2  # d out[0, 1, 1] / d e: only token 1, column 1
    saliency = onnx_attr.Saliency(model).attribute(ids, target=(1, 1))
    np.testing.assert_allclose(saliency, [[0.0, grad[1, 1], 0.0]], rtol=1e-6)
    ixg = onnx_attr.InputXGradient(model).attribute(ids, target=(1, 1))
    np.testing.assert_allclose(ixg, [[0.0, grad[1, 1] * e[1, 1], 0.0]], rtol=1e-6)
    ig, delta = onnx_attr.IntegratedGradients(model).attribute(ids, target=(1, 1), return_convergence_delta=True)
    np.testing.assert_allclose(ig, [[0.0, np.tanh(e[1, 1]) - np.tanh(e0[1]), 0.0]], rtol=1e-5)
    assert float(delta.abs().max()) < 1e-6
    masked = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]), helper.make_node("Cast", ["is_pad"], ["f"], to=1),
              helper.make_node("Tanh", ["f"], ["out"])]
    plain = onnx_attr.load(make_model(masked, [("ids", INT64, ["n", 3])], [("out", FLOAT, ["n", 3])],
                                      {"pad": np.array(0, np.int64)}))
    with pytest.raises(onnx_attr.InputError, match="cannot be attributed"):
        onnx_attr.IntegratedGradients(plain).attribute(ids, target=1)
    # read as numbers, with nothing else to attribute: measurements, attributed at their cast
    cast = [helper.make_node("Cast", ["ids"], ["f"], to=1, name="c"), helper.make_node("Tanh", ["f"], ["out"])]
    numbers = onnx_attr.load(make_model(cast, [("ids", INT64, ["n", 3])], [("out", FLOAT, ["n", 3])]))
    ig = onnx_attr.IntegratedGradients(numbers).attribute(ids, target=1)
    np.testing.assert_allclose(ig, [[0.0, np.tanh(2.0), 0.0]], rtol=1e-4)


def test_trapezoid_rule_is_the_textbook_one():
    """Captum's riemann_trapezoid weighs its n points 1/n with halved ends (summing to (n-1)/n);
    ours is the trapezoid rule over n points (step 1/(n-1)), exact for linear integrands."""
    from onnx_attr.methods.gradient import integration_rule

    for method in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        points, weights = integration_rule(method, 7)
        assert abs(weights.sum() - 1) < 1e-12 and points.min() >= 0 and points.max() <= 1
        assert abs((weights * points).sum() - 0.5) < 1e-12 or method in ("riemann_left", "riemann_right")
    points, weights = integration_rule("gausslegendre", 5)
    assert abs((weights * points ** 8).sum() - 1 / 9) < 1e-12  # exact for polynomials of degree 2n-1


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_equals_captum_under_the_same_seed(imported, nt_type):
    from captum.attr import NoiseTunnel as CaptumNoiseTunnel

    torch.manual_seed(7)
    ours = onnx_attr.NoiseTunnel(onnx_attr.Saliency(imported)).attribute(X, nt_type=nt_type, nt_samples=4,
                                                                         stdevs=0.3, target=TARGET)
    torch.manual_seed(7)
    theirs = CaptumNoiseTunnel(CaptumSaliency(imported.module)).attribute(X, nt_type=nt_type, nt_samples=4,
                                                                           stdevs=0.3, target=TARGET)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_noise_tunnel_around_integrated_gradients_and_deeplift(imported):
    from captum.attr import NoiseTunnel as CaptumNoiseTunnel

    torch.manual_seed(3)
    ours = onnx_attr.NoiseTunnel(onnx_attr.IntegratedGradients(imported)).attribute(
        X, nt_samples=3, stdevs=0.1, target=TARGET, baselines=B, n_steps=8)
    torch.manual_seed(3)
    theirs = CaptumNoiseTunnel(CaptumIG(imported.module)).attribute(
        X, nt_samples=3, stdevs=0.1, target=TARGET, baselines=B.expand_as(X), n_steps=8)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    smooth = onnx_attr.NoiseTunnel(onnx_attr.DeepLift(imported)).attribute(X, nt_samples=3, stdevs=0.0,
                                                                            target=TARGET)
    torch.testing.assert_close(smooth, onnx_attr.DeepLift(imported).attribute(X, target=TARGET))  # no noise


def test_gradient_shap_equals_captum_under_the_same_seeds(imported):
    import numpy as np
    from captum.attr import GradientShap as CaptumGradientShap

    distribution = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(9)) * 0.3
    np.random.seed(4)
    torch.manual_seed(4)
    ours, delta = onnx_attr.GradientShap(imported).attribute(X, distribution, n_samples=4, stdevs=0.05,
                                                             target=TARGET, return_convergence_delta=True)
    np.random.seed(4)
    torch.manual_seed(4)
    theirs, their_delta = CaptumGradientShap(imported.module).attribute(
        X, distribution, n_samples=4, stdevs=0.05, target=TARGET, return_convergence_delta=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta, their_delta.double(), atol=1e-5, rtol=1e-3)


def test_gradient_shap_on_token_ids_with_an_attention_mask():
    """GradientShap draws n_samples rows per example for the ids; the attention mask beside them must be
    repeated alike before the embedding lookups are recorded (every HF text export failed at a Gather
    with a batch of two, hunt 26). The mask multiplies each position's embedding, so a masked position's
    token has no influence: its attribution is exactly 0 in every row (a mask repeated out of step with
    the rows would give it the other row's weight)."""
    from onnx import TensorProto, helper

    from conftest import FLOAT, make_model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["kept"]),
             helper.make_node("Tanh", ["kept"], ["t"]),
             helper.make_node("ReduceSum", ["t", "time"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    model = onnx_attr.load(make_model(
        nodes, [("ids", TensorProto.INT64, ["N", "T"]), ("mask", TensorProto.INT64, ["N", "T"])],
        [("logits", FLOAT, ["N", 3])],
        {"table": rng.normal(0, 1, (20, 4)).astype(np.float32), "w": rng.normal(0, 1, (4, 3)).astype(np.float32),
         "last": np.array([-1], dtype=np.int64), "time": np.array([1], dtype=np.int64)}))
    ids = torch.from_numpy(rng.integers(1, 20, (2, 6)))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    baselines = torch.from_numpy(rng.integers(1, 20, (3, 6)))
    got = onnx_attr.GradientShap(model).attribute(ids, baselines=baselines, additional_forward_args=(mask,),
                                                  target=0, n_samples=4)
    assert got.shape == (2, 6) and bool((got[mask == 1] != 0).all())
    assert bool((got[mask == 0] == 0).all())
