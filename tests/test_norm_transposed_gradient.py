"""torch 2.14's CPU backward of batch_norm (and of instance_norm, built on it) reads the gradient
coming back to its output as if laid out like its input. After a Transpose (PP-OCRv5's SVTR neck:
Conv, BatchNormalization, Reshape, Transpose, LayerNorm, shipped in ppocr-vectron) the gradient is
permuted, and the input gradient came out wrong: Saliency on the wrong element, IG and DeepLift
84% off completeness on a linear graph, while the forward (and so verify) was right. Oracles: the
gradient by hand (BatchNormalization is x·γ/√(σ²+ε) + const), central finite differences in float64
(InstanceNormalization), and the completeness identity against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr

C, L = 4, 3
RNG = np.random.default_rng(0)
GAMMA, BETA = RNG.normal(size=C).astype(np.float32), RNG.normal(size=C).astype(np.float32)
MEAN, VAR = RNG.normal(size=C).astype(np.float32), (RNG.random(C) + 0.3).astype(np.float32)


def _transposed_after(norm: str, nonlinear: bool = False):
    """x [1, C, 1, L] -> norm -> (Tanh) -> Reshape [1, C, L] -> Transpose [1, L, C] -> Flatten."""
    weights = [numpy_helper.from_array(GAMMA, "scale"), numpy_helper.from_array(BETA, "bias"),
               numpy_helper.from_array(np.array([1, C, L], np.int64), "shape")]
    if norm == "BatchNormalization":
        weights += [numpy_helper.from_array(MEAN, "mean"), numpy_helper.from_array(VAR, "var")]
        nodes = [helper.make_node(norm, ["x", "scale", "bias", "mean", "var"], ["n"], epsilon=1e-5)]
    else:
        nodes = [helper.make_node(norm, ["x", "scale", "bias"], ["n"], epsilon=1e-5)]
    nodes += [helper.make_node("Tanh" if nonlinear else "Identity", ["n"], ["a"]),
              helper.make_node("Reshape", ["a", "shape"], ["r"]),
              helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]), helper.make_node("Flatten", ["t"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "norm_transposed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 1, L])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C * L])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    return proto


def test_batch_norm_before_a_transpose_has_the_right_gradient():
    model = onnx_attr.load(_transposed_after("BatchNormalization"))
    x = (RNG.normal(size=(1, C, 1, L)) * 50).astype(np.float32)  # far from the zero baseline
    k = 1  # y[0, 1] is element (l=0, c=1): d y / d x[0, 1, 0, 0] = γ1 / √(σ²1 + ε), nothing else
    expected = np.zeros_like(x)
    expected[0, 1, 0, 0] = GAMMA[1] / np.sqrt(VAR[1] + 1e-5)
    np.testing.assert_allclose(np.asarray(onnx_attr.Saliency(model).attribute(x, target=k, abs=False)), expected,
                               rtol=1e-6, atol=1e-7)
    session = ort.InferenceSession(_transposed_after("BatchNormalization").SerializeToString())
    change = session.run(None, {"x": x})[0][0, k] - session.run(None, {"x": 0 * x})[0][0, k]
    for method in (onnx_attr.IntegratedGradients(model), onnx_attr.DeepLift(model)):
        attributions = np.asarray(method.attribute(x, target=k), dtype=np.float64)
        assert attributions.sum() == pytest.approx(change, rel=1e-5)
        assert np.count_nonzero(attributions) == 1 and attributions[0, 1, 0, 0] != 0


@pytest.mark.parametrize("norm", ["BatchNormalization", "InstanceNormalization"])
def test_a_normalization_before_a_transpose_matches_finite_differences(norm):
    model = onnx_attr.load(_transposed_after(norm, nonlinear=True))
    x = RNG.normal(size=(1, C, 1, L)).astype(np.float32)
    k = 5
    gradient = np.asarray(onnx_attr.Saliency(model).attribute(x, target=k, abs=False), dtype=np.float64)
    module = model.module.double()
    step, numeric = 1e-6, np.zeros_like(gradient)
    with torch.no_grad():
        for i in np.ndindex(x.shape):
            up, down = x.astype(np.float64), x.astype(np.float64)
            up[i] += step
            down[i] -= step
            numeric[i] = (module(torch.from_numpy(up))[0, k] - module(torch.from_numpy(down))[0, k]).item() / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_a_constant_batch_norm_keeps_no_input_and_has_torchs_gradient(rank):
    """BatchNormalization with constant statistics keeps no copy of its input for the backward (torch's
    does, for gradients of the statistics and the weight that constants never need): the gradient is
    torch's own, at a magnitude a raw-pixel net sees, and nothing of the size of the input is saved."""
    from onnx_attr.importing.converters.normalization import AnyRankBatchNorm

    scale, bias, mean, var = (torch.from_numpy(a) for a in (GAMMA * 30, BETA, MEAN * 100, VAR * 50))
    norm = AnyRankBatchNorm(C, eps=1e-5)
    norm.weight, norm.bias = torch.nn.Parameter(scale, requires_grad=False), torch.nn.Parameter(bias, requires_grad=False)
    norm.running_mean, norm.running_var = mean, var
    shape = (2, C, *[7] * (rank - 2))
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(rank)) * 255).requires_grad_(True)
    seed = torch.randn(shape, generator=torch.Generator().manual_seed(10 + rank))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = norm(x)
    assert not saved or max(saved) < x.numel()  # the per-channel scale at most
    (grad,) = torch.autograd.grad(out, x, seed)
    x2 = x.detach().clone().requires_grad_(True)
    plain = torch.nn.functional.batch_norm(x2, mean, var, scale, bias, False, 0.0, 1e-5)
    (expected,) = torch.autograd.grad(plain, x2, seed)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)  # the forward is torch's, bit for bit
    torch.testing.assert_close(grad, expected)
