"""Anonymous dims ('?', an empty dim_param, -1) are unknowns of their own, never one shared
symbol; of the named ones only the batch's must agree across inputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run
from onnx_attr.errors import InputError


def _pooled(shape, second=None):
    """x (and y) -> GlobalAveragePool -> sum, with the given declared input shape(s)."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"])]
    inputs = [("x", FLOAT, shape)]
    if second is not None:
        nodes += [helper.make_node("GlobalAveragePool", ["y"], ["q"]), helper.make_node("Add", ["p", "q"], ["s"])]
        inputs.append(("y", FLOAT, second))
    out = "s" if second is not None else "p"
    nodes.append(helper.make_node("Flatten", [out], ["z"]))
    return make_model(nodes, inputs, [("z", FLOAT, [1, 3])])


def test_question_mark_axes_take_different_sizes():
    proto = _pooled([1, 3, "?", "?"])
    x = (np.random.default_rng(0).random((1, 3, 48, 192)) * 255).astype(np.float32)
    got = onnx_attr.load(proto).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, ort_run(proto, {"x": x})[0], rtol=1e-5)


@pytest.mark.parametrize("anonymous", ["empty", "minus-one"])
def test_empty_and_negative_dims_are_anonymous(anonymous):
    proto = _pooled([1, 3, "h", "w"])
    for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        if anonymous == "empty":
            d.dim_param = ""
        else:
            d.dim_value = -1
    spec = onnx_attr.importing.specs.value_spec(proto.graph.input[0])
    assert spec.shape == (1, 3, None, None)
    x = np.ones((1, 3, 5, 7), np.float32)
    assert onnx_attr.load(proto).run({"x": x})[0].shape == (1, 3)


def test_the_batch_symbol_is_shared_and_other_names_are_hints_as_in_onnxruntime():
    """Exports repeat one dynamic_axes dict over unlike inputs (LORE: cells [batch, height, width]
    beside their boxes [batch, height, width] of another width). onnxruntime runs them; so do we.
    The batch's name must still agree: rows are examples."""
    proto = _pooled(["n", 3, "h", "w"], second=["n", 3, "h", "?"])
    x, y = np.ones((1, 3, 8, 4), np.float32), np.full((1, 3, 9, 4), 2.0, np.float32)
    got = onnx_attr.load(proto).run({"x": x, "y": y})[0].numpy()
    np.testing.assert_allclose(got, ort_run(proto, {"x": x, "y": y})[0], rtol=1e-6)
    with pytest.raises(InputError, match="'n'"):
        onnx_attr.load(proto).run({"x": x, "y": np.ones((2, 3, 8, 4), np.float32)})


