"""If, Loop and Scan: bodies that read outer tensors, constant conditions inlined, runtime ones run
from Python. onnxruntime is the oracle; DeepLift must be exact through an inlined If and must
refuse a runtime one by name."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run
from onnx_attr.errors import UnsupportedOpError

BOOL = TensorProto.BOOL
RNG = np.random.default_rng(5)


def branch(name, nodes, outputs, initializers=(), shape=(2, 3)):
    from onnx import numpy_helper
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, FLOAT, shape) for o in outputs],
                             initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k)
                                          for k, v in dict(initializers).items()])


def if_model(cond=None):
    """y = If(cond) then relu(x) * w + sigmoid(x) else tanh(x) * 3; `cond` constant or an input."""
    then = branch("then", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "w"], ["rw"]),
                           helper.make_node("Add", ["rw", "s"], ["out"])], ["out"], {"w": [2.0, -1.0, 0.5]})
    other = branch("else", [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["t", "three"], ["out"])],
                   ["out"], {"three": 3.0})
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    inputs = [("x", FLOAT, [2, 3])]
    inits = {}
    if cond is None:
        inputs.append(("cond", BOOL, []))
    else:
        inits["cond"] = np.array(cond)
    return make_model(nodes, inputs, [("y", FLOAT, [2, 3])], initializers=inits)


@pytest.mark.parametrize("cond", [True, False])
def test_constant_if_is_inlined_and_deeplift_is_exact(cond):
    proto = if_model(cond)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    (expected,) = ort_run(proto, {"x": x})
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert "If" not in {n.meta.get("onnx_op") for n in model.module.graph.nodes}
    assert any("inlined 1 If" in note for note in model.notes)
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    attr, delta = onnx_attr.DeepLift(model).attribute(x, target=1, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-5
    assert attr.shape == x.shape


@pytest.mark.parametrize("cond", [True, False])
def test_runtime_if_runs_the_taken_branch(cond):
    proto = if_model()
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "cond": np.array(cond)}
    (expected,) = ort_run(proto, feeds)
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(model.run(feeds)[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    # the condition is a held input: DeepLift runs on the branch taken, complete against onnxruntime
    base = np.zeros_like(feeds["x"])
    (low,) = ort_run(proto, {**feeds, "x": base})
    attributions, delta = onnx_attr.DeepLift(model).attribute(
        feeds["x"], target=0, additional_forward_args=(feeds["cond"],), return_convergence_delta=True)
    np.testing.assert_allclose(attributions.sum(1), expected[:, 0] - low[:, 0], rtol=1e-5, atol=1e-6)


def loop_model(trip_count=True):
    """Sum x * i over i < 4 (or while the sum's first element stays below 6), outer `x` read in
    the body; the running sum is also a scan output."""
    body_nodes = [helper.make_node("Cast", ["i"], ["fi"], to=FLOAT), helper.make_node("Mul", ["x", "fi"], ["step"]),
                  helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
                  helper.make_node("Identity", ["acc_out"], ["running"])]
    if trip_count:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:
        body_nodes += [helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
                       helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         helper.make_tensor_value_info("acc_in", FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info("acc_out", FLOAT, [3]),
         helper.make_tensor_value_info("running", FLOAT, [3])])
    inputs = ["M", "", "acc0"] if trip_count else ["", "go", "acc0"]
    inits = {"M": np.array(4, np.int64)} if trip_count else {"go": np.array(True), "limit": np.array(6.0, np.float32)}
    return make_model([helper.make_node("Loop", inputs, ["acc", "trace"], body=body)],
                      [("x", FLOAT, [3]), ("acc0", FLOAT, [3])], [("acc", FLOAT, [3]), ("trace", FLOAT, ["n", 3])],
                      initializers=inits)


@pytest.mark.parametrize("trip_count", [True, False], ids=["for", "while"])
def test_loop_matches_onnxruntime(trip_count):
    proto = loop_model(trip_count)
    feeds = {"x": np.array([0.5, 1.0, -0.25], np.float32), "acc0": np.array([0.1, 0.2, 0.3], np.float32)}
    expected = ort_run(proto, feeds)
    got = onnx_attr.load(proto, strip_final_activation=False).run(feeds)
    assert len(got) == 2 and got[1].shape == expected[1].shape
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-6)


def test_scan_reversed_along_axis_one_matches_onnxruntime():
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]), helper.make_node("Mul", ["s_out", "w"], ["y_t"])],
        "body", [helper.make_tensor_value_info("s_in", FLOAT, [2]), helper.make_tensor_value_info("x_t", FLOAT, [2])],
        [helper.make_tensor_value_info("s_out", FLOAT, [2]), helper.make_tensor_value_info("y_t", FLOAT, [2])])
    node = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1],
                            scan_output_directions=[1])
    proto = make_model([node], [("s0", FLOAT, [2]), ("xs", FLOAT, [2, 5])], [("s", FLOAT, [2]), ("ys", FLOAT, [2, 5])],
                       initializers={"w": np.array([1.5, -2.0], np.float32)})
    feeds = {"s0": RNG.standard_normal(2).astype(np.float32), "xs": RNG.standard_normal((2, 5)).astype(np.float32)}
    expected = ort_run(proto, feeds)
    for g, e in zip(onnx_attr.load(proto, strip_final_activation=False).run(feeds), expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-6)


def test_unsupported_op_inside_a_body_is_named_with_its_path():
    body = branch("then", [helper.make_node("StringNormalizer", ["x"], ["out"])], ["out"], shape=[2])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body, name="choose")
    proto = make_model([node], [("x", FLOAT, [2]), ("cond", BOOL, [])], [("y", FLOAT, [2])])
    with pytest.raises(UnsupportedOpError, match=r"(?s)StringNormalizer.*choose/then_branch/"):
        onnx_attr.load(proto)


def test_unsqueeze_with_several_negative_axes_matches_onnxruntime():
    proto = make_model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], [("x", FLOAT, [2, 3])],
                       [("y", FLOAT, [2, 1, 3, 1])], initializers={"axes": np.array([-1, -3], np.int64)})
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    (expected,) = ort_run(proto, {"x": x})
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0]
    assert got.shape == expected.shape == (2, 1, 3, 1)


def test_constant_ifs_are_inlined_in_rounds_with_one_fold_each(monkeypatch):
    """SLANet's Loop, unrolled for its trip count, leaves ~313 Ifs whose conditions are constants:
    inlined one at a time, each with a fold of the whole graph, DeepLift's first call took 220 s.
    Every If constant so far goes in one round, then one fold (which may make more constant).
    Oracle: onnxruntime on the original graph, whose Ifs it runs."""
    import onnx_attr.importing.normalize as normalize
    from onnx import TensorProto, helper, numpy_helper

    from conftest import ort_run

    nodes, current = [], "x"
    for i in range(40):
        then = helper.make_graph([helper.make_node("Add", [current, "one"], [f"t{i}"])], f"then{i}", [],
                                 [helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, [1, 4])])
        other = helper.make_graph([helper.make_node("Sub", [current, "one"], [f"e{i}"])], f"else{i}", [],
                                  [helper.make_tensor_value_info(f"e{i}", TensorProto.FLOAT, [1, 4])])
        nodes.append(helper.make_node("If", ["yes" if i % 3 else "no"], [f"if{i}"], then_branch=then,
                                      else_branch=other))
        current = f"if{i}"
    nodes.append(helper.make_node("Relu", [current], ["y"]))
    graph = helper.make_graph(nodes, "ifs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.ones((1, 4), np.float32), "one"),
                               numpy_helper.from_array(np.array(True), "yes"),
                               numpy_helper.from_array(np.array(False), "no")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folds = []
    fold = normalize.fold_constants
    monkeypatch.setattr(normalize, "fold_constants", lambda *a, **k: folds.append(1) or fold(*a, **k))
    notes: list[str] = []
    inlined = normalize.inline_constant_ifs(proto, notes)
    assert not any(n.op_type == "If" for n in inlined.graph.node) and len(folds) == 1
    assert notes == ["inlined 40 If node(s) whose condition is a constant"]
    x = np.linspace(-30, 30, 4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(ort_run(inlined, {"x": x})[0], ort_run(proto, {"x": x})[0])


def test_element_types_forward_agree_with_onnx_shape_inference():
    """The element types a comparison reads, propagated op by op (importing/ancestry.element_types:
    no whole-graph shape inference, seconds on an unrolled decoder), are those ONNX's own shape
    inference finds, through casts, quantizers, comparisons, Where, TopK and an If's outputs."""
    import onnx

    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["f"], [name])], name, [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("QuantizeLinear", ["f", "scale", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
             helper.make_node("Greater", ["dq", "f"], ["gt"]),
             helper.make_node("Where", ["gt", "f", "dq"], ["w"]),
             helper.make_node("TopK", ["w", "k"], ["values", "indices"]),
             helper.make_node("Shape", ["values"], ["shape"]),
             helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("If", ["gt0"], ["chosen"], then_branch=branch("t", "Tanh"), else_branch=branch("e", "Sigmoid")),
             helper.make_node("Mul", ["chosen", "w"], ["product"]),
             helper.make_node("Less", ["product", "w"], ["lt"])]
    graph = helper.make_graph(
        nodes, "types", [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 3]),
                         helper.make_tensor_value_info("gt0", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in ("lt", "indices", "shape", "top")],
        [onnx.numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
         onnx.numpy_helper.from_array(np.array(3, np.int8), "zp"), onnx.numpy_helper.from_array(np.array([2], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    from onnx_attr.importing.ancestry import element_types

    ours = element_types(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    theirs = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.output)}
    names = [o for n in nodes for o in n.output]
    assert {n: ours.get(n) for n in names} == {n: theirs[n] for n in names}
    assert ours["q"] == TensorProto.INT8 and ours["chosen"] == TensorProto.FLOAT
