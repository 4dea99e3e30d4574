"""Normalization passes are exact: onnxruntime gives the same outputs before and after."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_attr
from onnx_attr.importing.normalize import drop_initializer_inputs, fold_constants, infer_shapes, normalize, upgrade_opset

from conftest import FLOAT, INT64, make_model, ort_run


def _alias_model():
    """Constant weights, an Identity alias of a weight, and a ConstantOfShape built from a Constant."""
    nodes = [
        helper.make_node("Constant", [], ["w"], name="const_w",
                         value=onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3))),
        helper.make_node("Identity", ["w"], ["w_alias"], name="alias"),
        helper.make_node("Constant", [], ["shape"], name="const_shape", value_ints=[3]),
        helper.make_node("ConstantOfShape", ["shape"], ["b"], name="fill",
                         value=onnx.numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("MatMul", ["x", "w_alias"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["y"], name="add"),
    ]
    return make_model(nodes, [("x", FLOAT, ["batch", 4])], [("y", FLOAT, ["batch", 3])])


def test_fold_turns_constants_aliases_and_fills_into_initializers():
    model = _alias_model()
    notes = []
    folded = fold_constants(model, notes)
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add"]
    assert {t.name for t in folded.graph.initializer} == {"w", "b"}
    assert folded.graph.node[0].input[1] == "w"  # the alias was rewired to its source
    assert "Constant" in notes[0] and "ConstantOfShape" in notes[0]
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(folded, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=0, atol=0)


def test_passes_do_not_mutate_their_input():
    model = _alias_model()
    before = model.SerializeToString()
    normalize(model, importable=lambda m: False)
    assert model.SerializeToString() == before


def test_ir3_initializer_inputs_are_dropped_and_ir_raised():
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    model = make_model([node], [("x", FLOAT, [2]), ("w", FLOAT, [2])], [("y", FLOAT, [2])],
                       {"w": np.array([1.0, 2.0], np.float32)}, opset=9, ir_version=3)
    out = drop_initializer_inputs(model, notes := [])
    assert [i.name for i in out.graph.input] == ["x"]
    assert out.ir_version >= 4 and notes
    x = np.array([3.0, 4.0], np.float32)
    np.testing.assert_array_equal(ort_run(out, {"x": x})[0], [4.0, 6.0])
    assert [s.name for s in onnx_attr.load(model).inputs] == ["x"]


def test_symbolic_batch_dim_stays_symbolic():
    out = infer_shapes(fold_constants(_alias_model(), []), [])
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert dims["h"] == ["batch", 3]
    imported = onnx_attr.load(_alias_model())
    assert imported.inputs[0].shape == ("batch", 4) and imported.outputs[0].shape == ("batch", 3)


def test_opset_upgrade_runs_only_when_needed_and_is_exact():
    # Max-6 has no converter; the upgrade to a supported version must give the same answer. Opset 6
    # is first rewritten as opset 7 by our own pass (legacy.py), which is what onnxruntime could run.
    node = helper.make_node("Max", ["x", "floor"], ["y"], name="max")
    floor = np.array([[0.1, -0.2, 0.3], [-0.5, 0.0, 2.0]], np.float32)
    model = make_model([node], [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])], {"floor": floor}, opset=6)
    result = normalize(model, importable=onnx_attr.importing.convert.is_importable)
    assert any("legacy forms as opset 7" in n for n in result.notes)
    assert any("upgraded ai.onnx opset 7" in n for n in result.notes)
    assert result.canonical.opset_import[0].version == 7  # the reference for verify is not upgraded
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    ours = onnx_attr.load(model).run(x)[0].numpy()
    np.testing.assert_array_equal(ours, np.maximum(x, floor))  # onnxruntime has no Max-6 kernel: numpy is the oracle
    same = normalize(model, importable=lambda m: True)
    assert same.converted is same.canonical


def test_failed_upgrade_keeps_the_model_and_says_why():
    node = helper.make_node("Add", ["x", "x"], ["y"], name="add")
    model = make_model([node], [("x", INT64, [2])], [("y", INT64, [2])], opset=7)
    model.graph.node[0].op_type = "NoSuchOp"  # the converter cannot adapt an unknown op
    notes = []
    assert upgrade_opset(model, 17, notes) is model
    assert "could not upgrade" in notes[0]


def test_alias_chains_fold_together_subgraph_uses_included():
    """Identity of an Identity (in either order in the file), read by an If's branch and feeding a
    graph output: every alias of a round is rewired in one pass (one pass an alias was quadratic on
    an unrolled decoder), each to the end of its chain; onnxruntime gives the same answer."""
    then_branch = helper.make_graph([helper.make_node("Add", ["a2", "x"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", FLOAT, ["batch", 3])])
    else_branch = helper.make_graph([helper.make_node("Sub", ["a1", "x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", FLOAT, ["batch", 3])])
    nodes = [
        helper.make_node("Identity", ["a1"], ["a2"], name="second"),  # reads an alias defined after it
        helper.make_node("Mul", ["x", "x"], ["sq"], name="sq"),
        helper.make_node("Identity", ["sq"], ["a1"], name="first"),
        helper.make_node("Identity", ["a2"], ["a3"], name="third"),
        helper.make_node("ReduceSum", ["a3"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="cond"),
        helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Identity", ["a3"], ["z"], name="out_alias"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["batch", 3])], [("y", FLOAT, ["batch", 3]), ("z", FLOAT, ["batch", 3])],
                       {"zero": np.array(0.0, np.float32)}, opset=13)
    folded = fold_constants(model, [])
    used = {name for n in folded.graph.node for name in n.input}
    used |= {name for n in folded.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
             for m in a.g.node for name in m.input}
    assert not used & {"a1", "a2", "a3"}  # every alias rewired to "sq"
    assert [o.name for o in folded.graph.output] == ["y", "z"]
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    for ours, theirs in zip(ort_run(folded, {"x": x}), ort_run(model, {"x": x})):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_a_split_with_one_output_hands_on_a_tensor(opset):
    """Split into one part (tf.unstack of a length-1 axis: DTLN's stage 2) is the whole tensor: its
    converters return a sequence, and the consumer got a tuple ("squeeze() received ... tuple")."""
    extra = {"num_outputs": 1} if opset >= 18 else {}
    nodes = [helper.make_node("Split", ["x"], ["part"], axis=0, **extra),
             helper.make_node("Squeeze", ["part"] + (["axes"] if opset >= 13 else []), ["s"],
                              **({} if opset >= 13 else {"axes": [0]})),
             helper.make_node("Relu", ["s"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, [1, 4])], [("y", FLOAT, [4])],
                       {"axes": np.array([0], np.int64)} if opset >= 13 else {}, opset=opset)
    x = np.array([[-2.0, -1.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(onnx_attr.load(model).run(x)[0].numpy(), ort_run(model, {"x": x})[0])
