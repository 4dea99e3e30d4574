"""The softmax's multipliers written out a slab at a time (rules/softmax_pair.py), against the
log-sum-exp decomposition differentiated by autograd (composite.paired_logsumexp + exp_shifted:
the primitives' own backwards, a different code path), at the magnitudes models produce, with
masks, floors, ties and elements at their reference; and completeness, Σ m·Δz = Σ g·Δp, on its own."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
import onnx_attr.deeplift.rules.softmax_pair as softmax_pair
from onnx_attr.deeplift.rules.composite import exp_shifted, masked_lowest, paired_logsumexp
from onnx_attr.deeplift.rules.softmax_pair import paired_softmax


def decomposed(z, z0, axis, valid=None):
    z0 = z0.expand_as(z)
    lse, lse0 = paired_logsumexp(z, z0, (axis,), valid)
    if valid is None:
        return exp_shifted(z, z0, lse, lse0)
    return exp_shifted(masked_lowest(z, valid), masked_lowest(z0, valid), lse, lse0)


def multipliers(fn, z, z0, g, axis, valid=None):
    live = z.clone().requires_grad_(True)
    p, p0 = fn(live, z0, axis, valid)
    (m,) = torch.autograd.grad(p, live, g)
    return p.detach(), p0.detach(), m


def case(seed: int, scale: float, shape=(2, 3, 7, 40), axis=-1, far=0.0, at_reference=False, masked=False,
         dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen, dtype=dtype) * scale
    z0 = torch.randn((1, *shape[1:]), generator=gen, dtype=dtype) * scale / 3 + far
    if at_reference:  # every fifth element exactly at its reference, and ties at the row maxima
        z.view(-1)[::5] = z0.expand_as(z).reshape(-1)[::5]
        z.select(axis, 1).copy_(z.amax(axis))
    valid = None
    if masked:  # a constant mask over the keys, at least one key kept per row
        valid = torch.rand(shape, generator=gen) > 0.4
        valid.select(axis, 0).fill_(True)
    g = torch.randn(shape, generator=gen, dtype=dtype)
    return z, z0, g, valid


@pytest.mark.parametrize("slab", [64, 1 << 16, "accelerator"])
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("scale,far", [(1.0, 0.0), (30.0, 0.0), (300.0, 500.0), (3000.0, -2000.0)])
@pytest.mark.parametrize("kind", ["plain", "at_reference", "masked"])
def test_slabs_give_the_decompositions_multipliers(monkeypatch, slab, axis, scale, far, kind):
    """`accelerator`: the one-slab formulation an accelerator runs (`paired.ALWAYS_SYNC_FREE`), on CPU."""
    if slab == "accelerator":
        from onnx_attr.deeplift.rules import paired

        monkeypatch.setattr(paired, "ALWAYS_SYNC_FREE", True)
        slab = 64  # ignored there: one slab
    monkeypatch.setattr(softmax_pair, "SLAB", slab)
    z, z0, g, valid = case(int(scale) + slab % 7, scale, axis=axis, far=far, at_reference=kind == "at_reference",
                           masked=kind == "masked")
    p, p0, m = multipliers(paired_softmax, z, z0, g, axis, valid)
    q, q0, n = multipliers(decomposed, z, z0, g, axis, valid)
    torch.testing.assert_close(p, q, rtol=0, atol=1e-14)
    torch.testing.assert_close(p0, q0.expand_as(p0), rtol=0, atol=1e-14)
    torch.testing.assert_close(m, n, rtol=1e-12, atol=1e-12 * float(n.abs().max()))
    # completeness of the chain alone, at every magnitude: Σ m·Δz = Σ g·Δp
    change = float((g * (p - p0)).sum())
    assert abs(float((m * (z - z0.expand_as(z))).sum()) - change) <= 1e-12 * max(1.0, float((g.abs() * (p - p0).abs()).sum()))


def test_floors_where_both_sides_underflow(monkeypatch):
    """Scores a mask pushed to -1e9 on both sides (exp floored at log(tiny), `exp_shifted`), and
    rows where only one side underflows (not floored: its change flows through the secant)."""
    monkeypatch.setattr(softmax_pair, "SLAB", 32)
    z, z0, g, _ = case(3, 5.0, shape=(4, 9, 16))
    z[..., 3:6] = -1e9
    z0 = z0.clone()
    z0[..., 3:5] = -1e9  # index 5: only z's side is far below
    p, p0, m = multipliers(paired_softmax, z, z0, g, -1)
    q, q0, n = multipliers(decomposed, z, z0, g, -1)
    torch.testing.assert_close(m, n, rtol=1e-12, atol=1e-15)
    assert abs(float((m * (z - z0)).sum()) - float((g * (p - p0)).sum())) < 1e-12


@pytest.mark.parametrize("dtype, step", [(torch.float64, 3e-15), (torch.float32, 2e-6)])
def test_elements_near_but_not_at_their_reference(monkeypatch, dtype, step):
    """Every third score a few ulps from its reference: the secant is rounding there, each takes its
    gradient at the reference (`secant_on_cpu`'s close elements), read from the exponentials after the
    multiplier is written (a review found the multiplier written over them: 3e12 off in float64)."""
    monkeypatch.setattr(softmax_pair, "SLAB", 64)
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn((1, 6, 40), generator=gen, dtype=dtype) * 5
    z = z0.repeat(3, 1, 1)
    z[..., ::3] += step * torch.randn(z[..., ::3].shape, generator=gen, dtype=dtype)
    z[1] += torch.randn(z[1].shape, generator=gen, dtype=dtype)
    g = torch.randn(z.shape, generator=gen, dtype=dtype)
    p, p0, m = multipliers(paired_softmax, z, z0, g, -1)
    n = multipliers(decomposed, z, z0, g, -1)[2]
    torch.testing.assert_close(m, n, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)


def test_a_padding_mask_on_the_input_alone():
    """A Hugging Face export's additive padding mask (float32's lowest) on the input's scores, not the
    baseline's, widened to float64 as the Softmax rule does: the exponent's tolerance then covers every
    element, and every multiplier comes through the close elements' path."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn((2, 4, 16, 16), generator=gen, dtype=torch.float64) * 3
    reference = torch.randn((1, 4, 16, 16), generator=gen, dtype=torch.float64)
    mask = torch.zeros((2, 1, 1, 16), dtype=torch.float64)
    mask[1, ..., 12:] = torch.finfo(torch.float32).min
    g = torch.randn(scores.shape, generator=gen, dtype=torch.float64)
    p, p0, m = multipliers(paired_softmax, scores + mask, reference, g, -1)
    n = multipliers(decomposed, scores + mask, reference, g, -1)[2]
    torch.testing.assert_close(m, n, rtol=0, atol=1e-12)


def test_float32_scores_widened_like_the_rule():
    """The Softmax rule differentiates in float64 from float32 scores: the slab path in float32
    (a caller without the widening) still matches the decomposition in float32."""
    z, z0, g, _ = case(5, 20.0, dtype=torch.float32)
    m = multipliers(paired_softmax, z, z0, g, -1)[2]
    n = multipliers(decomposed, z, z0, g, -1)[2]
    torch.testing.assert_close(m, n, rtol=1e-5, atol=1e-6 * float(n.abs().max()))


def _attention_scores_model(heads: int, length: int, dim: int) -> onnx.ModelProto:
    """x [N, length, dim] -> softmax(x Wq (x Wk)ᵀ / √dim) (x Wv), one head per group of dims: an
    encoder layer's attention, in plain ONNX ops."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, (dim, dim), (rng.standard_normal((dim, dim)) * 0.5).ravel())
             for n in ("wq", "wk", "wv")]
    inits.append(helper.make_tensor("shape", TensorProto.INT64, (4,), [0, length, heads, dim // heads]))
    nodes = [helper.make_node("MatMul", ["x", w], [n]) for w, n in (("wq", "q0"), ("wk", "k0"), ("wv", "v0"))]
    for t in ("q", "k", "v"):
        nodes.append(helper.make_node("Reshape", [f"{t}0", "shape"], [f"{t}1"]))
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [f"{t}1"], [f"{t}2"], perm=perm))
    nodes += [helper.make_node("MatMul", ["q2", "k2"], ["s"]),
              helper.make_node("Softmax", ["s"], ["a"], axis=-1),
              helper.make_node("MatMul", ["a", "v2"], ["y"])]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", length, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", heads, length, dim // heads])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_deeplift_complete_against_onnxruntime(tmp_path, monkeypatch):
    """An attention over 96 positions, scores in the tens, the slab path over many slabs: DeepLift's
    sum equals onnxruntime's f(x) - f(baseline) for the explained value."""
    import onnxruntime as ort

    monkeypatch.setattr(softmax_pair, "SLAB", 512)
    path = tmp_path / "attention.onnx"
    onnx.save(_attention_scores_model(4, 96, 16), path)
    model = onnx_attr.load(str(path))
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 96, 16)) * 3).astype(np.float32)
    base = (rng.standard_normal((1, 96, 16)) * 3 + 4).astype(np.float32)
    target = (2, 5, 3)  # head 2, position 5, dim 3
    attributions = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(base),
                                                      target=target)
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    run = lambda a: session.run(None, {"x": a})[0].astype(np.float64)  # noqa: E731
    change = run(x)[:, 2, 5, 3] - run(np.repeat(base, 2, 0))[:, 2, 5, 3]
    found = attributions.double().sum((1, 2)).numpy()
    assert np.abs(change).max() > 1.0
    np.testing.assert_allclose(found, change, rtol=0, atol=2e-5 * np.abs(change).max())
