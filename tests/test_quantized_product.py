"""Products of two dynamically quantized activations (MatMulInteger of two DynamicQuantizeLinear
outputs, then Cast and the product of the scales), as onnxruntime's dynamic quantizer writes a
DeBERTa's attention (Q·Kᵀ, weights·V). DeepLift had no rule for them and refused every such model;
the CLI's fallback then ran past 300 s on a 2x256-token input (hunt 29).

The graphs are written here node for node as the quantizer writes them. Oracles: onnxruntime's
outputs at the input and at the reference (completeness), the float product's multipliers by hand
(the product rule), and the forward bit for bit against the plain module."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(43)


def attention_model(tokens: int = 6, width: int = 8, classes: int = 3):
    """x [N, T, D] -> q, k (float MatMuls) -> Q(q) @ Q(kᵀ) as integers -> Cast -> × s_q·s_k ->
    Softmax -> @ v (quantized the same way) -> ReduceMean over T -> MatMul -> [N, C]."""
    def quantized_product(a: str, b: str, out: str) -> list:
        return [helper.make_node("DynamicQuantizeLinear", [a], [f"{a}_q", f"{a}_s", f"{a}_z"]),
                helper.make_node("DynamicQuantizeLinear", [b], [f"{b}_q", f"{b}_s", f"{b}_z"]),
                helper.make_node("Mul", [f"{a}_s", f"{b}_s"], [f"{out}_scale"]),
                helper.make_node("MatMulInteger", [f"{a}_q", f"{b}_q", f"{a}_z", f"{b}_z"], [f"{out}_int"]),
                helper.make_node("Cast", [f"{out}_int"], [f"{out}_float"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out])]

    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             *quantized_product("q", "kt", "scores"),
             helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
             *quantized_product("weights", "v", "mixed"),
             helper.make_node("ReduceMean", ["mixed"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "wo"], ["y"])]
    weights = {name: (RNG.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
               for name in ("wq", "wk", "wv")}
    weights["wo"] = RNG.standard_normal((width, classes)).astype(np.float32)
    return make_model(nodes, [("x", FLOAT, ["n", tokens, width])], [("y", FLOAT, ["n", classes])],
                      initializers=weights, opset=13)


def test_the_products_are_fused_and_their_forward_is_the_plain_one():
    from onnx_attr.deeplift.rewrite import rewrite_for_deeplift

    proto = attention_model()
    model = onnx_attr.load(proto)
    rewrite = rewrite_for_deeplift(model.module, model.inputs)
    assert sum(op == "QuantizedProduct" for _, op, _ in rewrite.rewritten) == 2
    x = (RNG.standard_normal((3, 6, 8)) * 5).astype(np.float32)
    import torch

    with torch.no_grad():
        np.testing.assert_array_equal(rewrite.module(torch.from_numpy(x)).numpy(), model.module(torch.from_numpy(x)).numpy())
    np.testing.assert_allclose(model.run({"x": x[:1]})[0], ort_run(proto, {"x": x[:1]})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, far", [(1.0, False), (30.0, False), (30.0, True)])
def test_deeplift_is_complete_through_the_quantized_products(scale, far):
    """At unit magnitudes, at activations in the tens (logits in the hundreds), and against a
    reference far from the input: Σ attributions = f(x) − f(x0) by onnxruntime, per example."""
    proto = attention_model()
    model = onnx_attr.load(proto)
    x = (RNG.standard_normal((3, 6, 8)) * scale).astype(np.float32)
    x0 = (RNG.standard_normal((1, 6, 8)) * scale * 2).astype(np.float32) if far else np.zeros((1, 6, 8), np.float32)
    # one row at a time, as the import quantizes (each example's ranges its own, as the packages feed them)
    y, y0 = np.concatenate([ort_run(proto, {"x": row[None]})[0] for row in x]), ort_run(proto, {"x": x0})[0]
    target = y.argmax(1)
    attr, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=target.tolist(), return_convergence_delta=True)
    change = y[np.arange(3), target].astype(np.float64) - y0[0, target]
    np.testing.assert_allclose(attr.reshape(3, -1).sum(1), change, rtol=1e-4, atol=1e-4 * np.abs(change).max())


def test_the_product_rule_gives_the_float_multipliers_where_nothing_rounds():
    """With the rounding residual taken out, a's multipliers are g·b̄ᵀ and b's āᵀ·g (ā, b̄ the means of
    input and reference): the product rule by hand on one product, checked on the rule's own split."""
    import torch

    from onnx_attr.deeplift.rules.quantized import QuantizedProductRule

    a, b = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    a0, b0 = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 4, 5, dtype=torch.float64)

    class Exact:  # the float product itself: no residual
        module = staticmethod(lambda p, q: p @ q)

    class Info:
        @staticmethod
        def variable_positions():
            return (0, 1)

    g = torch.randn(2, 3, 5, dtype=torch.float64)
    ga, gb = QuantizedProductRule().backward(Info(), Exact(), g, [a, b], a @ b, [a0, b0], a0 @ b0)
    np.testing.assert_allclose(ga, g @ ((b + b0) / 2).transpose(1, 2), rtol=1e-12)
    np.testing.assert_allclose(gb, ((a + a0) / 2).transpose(1, 2) @ g, rtol=1e-12)
    total = (ga * (a - a0)).sum((1, 2)) + (gb * (b - b0)).sum((1, 2))
    np.testing.assert_allclose(total, (g * (a @ b - a0 @ b0)).sum((1, 2)), rtol=1e-12)


def test_a_product_of_activations_is_computed_afresh_on_every_call():
    """The integer product kept B's centred copy by B's storage address and version, as for a
    weight. B computed in the pass is freed after it, and the next call's B can take the same
    address at version 0: the scores were then an earlier call's (hunt 29's DeBERTa, silently, and
    DeepLift's delta 0.03-0.5 from one run to the next). Oracle: onnxruntime on every call."""
    proto = attention_model()
    model = onnx_attr.load(proto)
    for _ in range(6):
        x = (RNG.standard_normal((1, 6, 8)) * 4).astype(np.float32)
        np.testing.assert_allclose(model.run({"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_the_integer_product_never_reuses_a_freed_operands_plan():
    """The same, on the converter alone: a 1 MB B made and freed inside each call's own frame, so that
    the allocator hands the next B the freed one's address, at version 0 again."""
    import torch

    from onnx_attr.importing.converters.matrix import MatMulInteger

    op, gen = MatMulInteger(), torch.Generator().manual_seed(5)
    a = torch.randint(0, 256, (2, 1024), dtype=torch.uint8, generator=gen)
    zero_a, zero_b = torch.tensor(128, dtype=torch.uint8), torch.tensor(100, dtype=torch.uint8)

    def one_call():
        b = torch.randint(0, 256, (1024, 1024), dtype=torch.uint8, generator=gen)
        expected = (a.long() - 128) @ (b.long() - 100)
        np.testing.assert_array_equal(op(a, b, zero_a, zero_b).long(), expected)

    for _ in range(4):  # without the operand held, glibc's mmap gave calls 2-4 call 1's address: 3 failures
        one_call()


def test_a_row_that_did_not_move_keeps_its_rounding_credited():
    """Heads merged into axis 0 ([N·H, T, D]) are quantized over all of them, so a head whose inputs
    equal the reference's can still round differently: its residual goes over every row's Δ, and
    the sum over the whole call stays g·Δy. Checked on the rule alone, with a product that rounds."""
    import torch

    from onnx_attr.deeplift.rules.quantized import QuantizedProductRule

    def rounded(p, q):  # both factors rounded on one range for all rows, as DynamicQuantizeLinear does
        def q8(t):
            scale = (t.max() - t.min()).clamp_min(1e-12) / 255
            return torch.round(t / scale) * scale
        return q8(p) @ q8(q)

    class Rounding:
        module = staticmethod(rounded)

    class Info:
        @staticmethod
        def variable_positions():
            return (0, 1)

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, 2, generator=gen, dtype=torch.float64)
    a0, b0 = a.clone(), b.clone()
    a0[1:], b0[1:] = a0[1:] * 0.3, b0[1:] * 0.3  # row 0 has not moved, but the range did
    g = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    y, y0 = rounded(a, b), rounded(a0, b0)
    assert not torch.equal(y[0], y0[0])  # row 0's value changed with the range
    ga, gb = QuantizedProductRule().backward(Info(), Rounding(), g, [a, b], y, [a0, b0], y0)
    total = (ga * (a - a0)).sum() + (gb * (b - b0)).sum()
    np.testing.assert_allclose(float(total), float((g * (y - y0)).sum()), rtol=1e-10)
