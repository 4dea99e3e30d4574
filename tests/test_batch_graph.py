"""The graph walk that proves an export's rows apart (`importing/batch_graph.py`) answers what the
batch probe's runs find, or nothing. Oracle: the probe itself ([x, x', x] run through the plain
model), on graphs built here in the ways exporters write them; and graphs whose rows mix, where
the walk must stay silent. Plus a dynamic quantization, whose rows the probe's x' = x/2 cannot
tell apart from independent ones: IG must not stack its steps there."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model
from onnx_attr.importing import batch
from onnx_attr.importing.batch_graph import traced_output_axes

RNG = np.random.default_rng(5)
I64 = TensorProto.INT64


def _w(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _i(*values):
    return np.array(values, np.int64)


def _walk_and_probe(model, feeds: dict, monkeypatch):
    imported = onnx_attr.load(model, strip_final_activation=False)
    tensors = imported.prepare(feeds)
    axes = batch.batch_axes(imported.inputs, tensors)
    traced = traced_output_axes(imported, tensors, axes)
    monkeypatch.setattr(batch, "traced_output_axes", lambda *a, **k: None)  # the probe's own runs
    probed = batch._probe(imported, tensors, axes)
    return traced, probed


def conv_reshape_head():
    """Conv -> Shape/Gather/Concat -> Reshape [N, -1] -> Gemm -> Softmax (a PyTorch flatten)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "bias"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], axis=1)]
    return make_model(nodes, [("x", FLOAT, ["n", 2, 5, 5])], [("y", FLOAT, ["n", 4])], {
        "w": _w(3, 2, 3, 3), "zero": np.array(0, np.int64), "axes0": _i(0), "minus_one": _i(-1),
        "fc": _w(4, 75, scale=0.2), "bias": _w(4)}, opset=13)


def time_major_lstm():
    """x [T, N, C] and its state h0 [1, N, H] (the shared symbol puts the batch on axis 1) -> LSTM ->
    Y [T, 1, N, H] -> Squeeze -> Transpose [N, T, H], and Y_h [1, N, H]."""
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "", "", "h0"], ["Y", "Y_h"], hidden_size=3),
             helper.make_node("Squeeze", ["Y", "one"], ["Ys"]),
             helper.make_node("Transpose", ["Ys"], ["y"], perm=[1, 0, 2])]
    return make_model(nodes, [("x", FLOAT, [4, "n", 2]), ("h0", FLOAT, [1, "n", 3])],
                      [("y", FLOAT, ["n", 4, 3]), ("Y_h", FLOAT, [1, "n", 3])],
                      {"W": _w(1, 12, 2), "R": _w(1, 12, 3), "one": _i(1)}, opset=13)


def attention_matmuls():
    """Batched self-attention core: Q·Kᵀ over the examples' own rows, Softmax, ·V, paddle's [0, -1, C]."""
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["ctx"]),
             helper.make_node("Reshape", ["ctx", "target"], ["y"]),
             helper.make_node("ReduceMean", ["y"], ["m"], axes=[1], keepdims=0)]
    return make_model(nodes, [("x", FLOAT, ["n", 5, 4])], [("m", FLOAT, ["n"])],
                      {"wq": _w(4, 4), "wk": _w(4, 4), "target": _i(0, -1)}, opset=13)


def tf2onnx_reshape_slice():
    """tf2onnx's ways: Reshape to [-1, 6, 1] (the -1 is the number of examples), a strided_slice
    naming every axis with 1e9 for "to the end", a Conv, a Flatten."""
    nodes = [helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "axes3"], ["u"]),
             helper.make_node("Slice", ["u", "begin", "end", "axes", "steps"], ["s"]),
             helper.make_node("Conv", ["s", "w"], ["c"]),
             helper.make_node("Flatten", ["c"], ["y"], axis=1)]
    return make_model(nodes, [("x", FLOAT, ["n", 6])], [("y", FLOAT, ["n", 2])], {
        "target": _i(-1, 6, 1), "axes3": _i(3), "begin": _i(0, 0, 1), "end": _i(10**9, 10**9, 10**9),
        "axes": _i(0, 2, 1), "steps": _i(1, 1, 1), "w": _w(2, 5, 1, 1)}, opset=13)


@pytest.mark.parametrize("build, feeds, axes", [
    (conv_reshape_head, {"x": _w(2, 2, 5, 5, scale=50)}, (0,)),
    (conv_reshape_head, {"x": _w(1, 2, 5, 5, scale=50)}, (0,)),
    (time_major_lstm, {"x": _w(4, 2, 2, scale=3), "h0": _w(1, 2, 3)}, (0, 1)),
    (attention_matmuls, {"x": _w(3, 5, 4, scale=10)}, (0,)),
    (tf2onnx_reshape_slice, {"x": _w(3, 6, scale=100)}, (0,)),
], ids=["conv-flatten-2", "conv-flatten-1", "lstm-time-major", "attention", "tf2onnx-reshape-slice"])
def test_the_walk_answers_what_the_probe_finds(build, feeds, axes, monkeypatch):
    traced, probed = _walk_and_probe(build(), feeds, monkeypatch)
    assert traced == axes
    assert probed.stackable and probed.doubles and tuple(probed.outputs) == axes


def _one(op_nodes, initializers, shape, out_shape, opset=13):
    return make_model(op_nodes, [("x", FLOAT, shape)], [("y", FLOAT, out_shape)], initializers, opset=opset)


MIXING = {
    "softmax over the batch": lambda: _one([helper.make_node("Softmax", ["x"], ["y"], axis=0)], {}, ["n", 3], ["n", 3]),
    "sum over the batch": lambda: _one([helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=1)],
                                       {"ax": _i(0)}, ["n", 3], [1, 3]),
    "LSTM along axis 0": lambda: _one([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=3)],
                                      {"W": _w(1, 12, 3), "R": _w(1, 12, 3)}, ["n", 1, 3], ["n", 1, 1, 3]),
    "batch baked in a reshape": lambda: _one([helper.make_node("Reshape", ["x", "t"], ["y"])], {"t": _i(1, -1)},
                                             ["n", 3], [1, None]),
    "cumulative sum along the batch": lambda: _one([helper.make_node("CumSum", ["x", "ax"], ["y"])],
                                                   {"ax": np.array(0, np.int64)}, ["n", 3], ["n", 3]),
    "a constant row per batch position": lambda: _one([helper.make_node("Add", ["x", "c"], ["y"])],
                                                      {"c": _w(2, 3)}, [2, 3], [2, 3]),
    "dynamic quantization": lambda: _one([helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                                          helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], {},
                                         ["n", 3], ["n", 3]),
}


@pytest.mark.parametrize("name", list(MIXING))
def test_the_walk_says_nothing_where_rows_mix(name):
    model = onnx_attr.load(MIXING[name](), strip_final_activation=False)
    x = torch.from_numpy(_w(2, *model.inputs[0].shape[1:], scale=5))
    assert traced_output_axes(model, [x], batch.batch_axes(model.inputs, [x])) is None


@pytest.mark.parametrize("batch_dim", ["n", 1])
def test_a_dynamic_quantization_is_not_stacked(batch_dim, monkeypatch):
    """One scale over [x, x/2, x] is x's own, so the probe's runs agree; IG's stacked steps would
    share the largest step's scale. Oracle: IG run one step per pass (each point quantized alone,
    as onnxruntime runs one example). Also where the export declares a batch of 1 (the runs then
    find that more rows run, which must not let the steps share a pass), and there, where the walk
    has no answer (a detector's NMS), no forward runs to ask: the rows could never share a pass."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["y"])]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, [batch_dim, 6])], [("y", FLOAT, [batch_dim, 2])],
                                      {"w": _w(6, 2, scale=0.1)}, opset=13), strip_final_activation=False)
    x = np.abs(_w(1, 6, scale=40))
    tensors = model.prepare({"x": x})
    monkeypatch.setattr(batch, "traced_output_axes", lambda *a, **k: None)
    forwards = []
    model.module.register_forward_hook(lambda *a: forwards.append(1))
    layout = batch.probe(model, tensors, batch.batch_axes(model.inputs, tensors))
    assert not layout.doubles and layout.outputs == (0,)
    assert forwards == [] or batch_dim == "n"
    stacked = onnx_attr.IntegratedGradients(model).attribute(x, target=1, n_steps=8)
    alone = onnx_attr.IntegratedGradients(model).attribute(x, target=1, n_steps=8, internal_batch_size=1)
    np.testing.assert_allclose(np.asarray(stacked), np.asarray(alone), rtol=1e-5, atol=1e-6)


def test_a_dynamically_quantized_export_is_walked_per_pass(tmp_path, monkeypatch):
    """onnxruntime's quantize_dynamic (DynamicQuantizeLinear -> ConvInteger/MatMulInteger -> Cast ->
    Mul) runs each example in a pass of its own, where each quantizer's scale is that example's: the
    walk follows those ops per pass and finds the axes the probe's runs find, without its forwards
    (a three-row run of an 800x800 quantized table detector took 13-30 s). Not otherwise: stacked
    rows would share the scale. Oracle: the probe's own runs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 3, 8, 8])], [("y", FLOAT, ["n", 10])], {
        "w": _w(8, 3, 3, 3, scale=0.1), "fc": _w(128, 10, scale=0.05), "zero": np.array(0, np.int64),
        "axes0": _i(0), "minus_one": _i(-1)}, opset=13)
    onnx.save(proto, tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "quantized.onnx", weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul"])
    quantized = onnx.load(tmp_path / "quantized.onnx")
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= {n.op_type for n in quantized.graph.node}
    model = onnx_attr.load(quantized, strip_final_activation=False)
    x = np.abs(_w(1, 3, 8, 8, scale=100))
    tensors = model.prepare({"x": x})
    axes = batch.batch_axes(model.inputs, tensors)
    assert traced_output_axes(model, tensors, axes) is None  # rows stacked in one pass share the scales
    assert traced_output_axes(model, tensors, axes, per_pass=True) == (0,)
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    layout = batch.probe(model, tensors, axes)
    assert forwards == [] and layout.stackable and layout.outputs == (0,) and not layout.doubles
    _, probed = _walk_and_probe(quantized, {"x": x}, monkeypatch)
    assert probed.stackable and tuple(probed.outputs) == (0,) and not probed.doubles


def test_the_walk_writes_nothing_where_it_runs(tmp_path, monkeypatch):
    """onnxruntime's `infer_shapes` saves the graph (and its weights as .data files) into the working
    directory when it cannot finish; the walk runs its loop without that."""
    from onnx_attr.importing.batch_graph import _inferred_shapes

    monkeypatch.chdir(tmp_path)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mystery", ["r"], ["y"], domain="vendor.ops")]
    model = make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, None)], {}, opset=13,
                       domains=[("vendor.ops", 1)])
    x = torch.zeros(2, 3)
    spec = type("Spec", (), {"name": "x"})()
    try:
        shapes = _inferred_shapes(model, [x], [spec])
        assert shapes["r"] == [2, 3]
    except Exception:
        pass  # no answer is an answer; the point is the folder
    assert list(tmp_path.iterdir()) == []


def test_a_dynamic_quantization_keeps_the_probed_output_axes():
    """Rows that share a quantization scale still have their axes found ([x, x/2, x] keeps x's scale):
    an output transposed to [C, N] has its examples on axis 1, as onnxruntime lays them out."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["h"]),
             helper.make_node("Transpose", ["h"], ["y"], perm=[1, 0])]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 6])], [("y", FLOAT, [2, "n"])],
                                      {"w": _w(6, 2)}, opset=13), strip_final_activation=False)
    tensors = model.prepare({"x": np.abs(_w(1, 6, scale=40))})
    layout = batch.probe(model, tensors, batch.batch_axes(model.inputs, tensors))
    assert layout.stackable and layout.outputs == (1,) and not layout.doubles


def _batch_size_value(x="x", axis=0):
    """Shape(x)[axis] as a 1-D value: the number of examples, the way exporters keep it dynamic."""
    return [helper.make_node("Shape", [x], ["_s"]), helper.make_node("Gather", ["_s", "_at"], ["_b"], axis=0),
            helper.make_node("Unsqueeze", ["_b", "_z1"], ["_n"])], {"_at": np.array(axis, np.int64), "_z1": _i(0)}


def _graph(nodes, inputs, inits, opset=13, outputs=("y",)):
    """Outputs typed by ONNX's own inference (an exporter declares them)."""
    model = make_model(nodes, [(n, FLOAT, s) for n, s in inputs], [(o, FLOAT, None) for o in outputs], inits,
                       opset=opset)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    for declared, found in zip(model.graph.output, inferred.graph.output):
        declared.type.CopyFrom(found.type)
        declared.type.tensor_type.shape.SetInParent()
    return model


def expand_constant_of_higher_rank():
    """A [1, 1, 4] constant expanded to [n, 4]: the output is [1, n, 4], the batch on axis 1."""
    size, inits = _batch_size_value()
    nodes = size + [helper.make_node("Concat", ["_n", "four"], ["t"], axis=0),
                    helper.make_node("Expand", ["c", "t"], ["e"]), helper.make_node("Mul", ["e", "x"], ["y"])]
    return _graph(nodes, [("x", ["n", 4])], {**inits, "c": _w(1, 1, 4), "four": _i(4)})


def expand_copies_examples_across():
    """x [n, 1, 4] expanded to [1, n, 4]: y[i, j] = x[i], every example copied along a second axis."""
    size, inits = _batch_size_value()
    nodes = size + [helper.make_node("Concat", ["one", "_n", "four"], ["t"], axis=0),
                    helper.make_node("Expand", ["x", "t"], ["y"])]
    return _graph(nodes, [("x", ["n", 1, 4])], {**inits, "one": _i(1), "four": _i(4)})


def add_folded_constant():
    """A 1-D x plus a constant folded from a Concat (a shape value the walk carries): per position."""
    nodes = [helper.make_node("Concat", ["c1", "c2"], ["cc"], axis=0),
             helper.make_node("Cast", ["cc"], ["cf"], to=FLOAT), helper.make_node("Add", ["x", "cf"], ["y"])]
    return _graph(nodes, [("x", ["n"])], {"c1": _i(1, 2), "c2": _i(3)})


def castlike_to_higher_rank_type():
    """CastLike's second input only names a type: the output has x's shape, no broadcast."""
    return _graph([helper.make_node("CastLike", ["x", "t"], ["y"])], [("x", ["n", 4])], {"t": _w(2, 1, 1)},
                  opset=15)


def lstm_with_constant_lengths():
    """sequence_lens as a constant [3]: the export's batch size baked in."""
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "", "lens", "h0"], ["y"], hidden_size=3)]
    return _graph(nodes, [("x", [4, "n", 2]), ("h0", [1, "n", 3])],
                  {"W": _w(1, 12, 2), "R": _w(1, 12, 3), "lens": np.array([4, 4, 4], np.int32)})


def batch_norm_training():
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1)]
    return _graph(nodes, [("x", ["n", 2, 3])], {"s": _w(2), "b": _w(2), "m": _w(2), "v": np.ones(2, np.float32)},
                  opset=15)


def resize_to(sizes, **attributes):
    """Resize to a target built from Shape(x): `sizes` lists "n" (the number of examples) and ints."""
    size, inits = _batch_size_value()
    parts = ["_n" if d == "n" else f"d{i}" for i, d in enumerate(sizes)]
    nodes = size + [helper.make_node("Concat", parts, ["t"], axis=0),
                    helper.make_node("Resize", ["x", "", "", "t"], ["y"], mode="nearest", **attributes)]
    inits.update({f"d{i}": _i(d) for i, d in enumerate(sizes) if d != "n"})
    return _graph(nodes, [("x", ["n", 2, 4, 4])], inits, opset=18)


def resize_crop_on_batch():
    """tf_crop_and_resize with a region of interest over half the batch's axis (scale 1 there)."""
    nodes = [helper.make_node("Resize", ["x", "roi", "sc"], ["y"], mode="linear",
                              coordinate_transformation_mode="tf_crop_and_resize")]
    return _graph(nodes, [("x", ["n", 2, 4, 4])], {"roi": np.array([0, 0, 0, 0, 0.5, 1, 1, 1], np.float32),
                                                    "sc": np.array([1, 1, 2, 2], np.float32)})


def resize_scales_on_axes(scales):
    """Opset 18 `axes` [1, 2]: the scales count from there; the batch on axis 1 beside a state [2, n, 4]."""
    nodes = [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", axes=[1, 2])]
    return _graph(nodes, [("h", [2, "n", 4]), ("x", [2, "n", 4])], {"sc": np.array(scales, np.float32)}, opset=18)


def resize_spatial_axes_by_arithmetic():
    """Sizes H * 2, W * 2 computed from one example's shape, on `axes` [-2, -1]."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=2), helper.make_node("Mul", ["s", "two"], ["t"]),
             helper.make_node("Resize", ["x", "", "", "t"], ["y"], mode="nearest", axes=[-2, -1])]
    return _graph(nodes, [("x", ["n", 2, 4, 4])], {"two": _i(2)}, opset=18)


def flatten(axis, shape):
    return _graph([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], [("h", [2, "n", 3]), ("x", shape)], {})


X4 = {"x": _w(3, 2, 4, 4, scale=10)}
H = {"h": _w(2, 3, 3)}
FOUND = {  # graph, feeds, the walk's answer (None: it must decline)
    "expand-higher-rank-constant": (expand_constant_of_higher_rank, {"x": _w(3, 4, scale=10)}, (1,)),
    "expand-copies-across": (expand_copies_examples_across, {"x": _w(3, 1, 4, scale=10)}, None),
    "add-folded-constant": (add_folded_constant, {"x": _w(3, scale=10)}, None),
    "add-folded-constant-1": (add_folded_constant, {"x": _w(1, scale=10)}, None),
    "castlike": (castlike_to_higher_rank_type, {"x": _w(3, 4, scale=10)}, (0,)),
    "lstm-constant-lengths": (lstm_with_constant_lengths, {"x": _w(4, 3, 2), "h0": _w(1, 3, 3)}, None),
    "batchnorm-training": (batch_norm_training, {"x": _w(3, 2, 3, scale=5)}, None),
    "resize-sizes-n-twice": (lambda: resize_to(["n", 2, "n", "n"]), X4, None),
    "resize-keep-aspect": (lambda: resize_to(["n", 2, 2, 2], keep_aspect_ratio_policy="not_larger"), X4, None),
    "resize-stretch": (lambda: resize_to(["n", 2, 8, 8]), X4, (0,)),
    "resize-crop-roi": (resize_crop_on_batch, X4, None),
    "resize-axes-scale-batch": (lambda: resize_scales_on_axes([2, 1]), {"h": _w(2, 3, 4), "x": _w(2, 3, 4)}, None),
    "resize-axes-scale-other": (lambda: resize_scales_on_axes([1, 2]), {"h": _w(2, 3, 4), "x": _w(2, 3, 4)}, (1,)),
    "resize-axes-arithmetic": (resize_spatial_axes_by_arithmetic, X4, (0,)),
    "flatten-axis-0": (lambda: flatten(0, ["n", 4]), {**H, "x": _w(3, 4)}, (1,)),
    "flatten-axis-1-batch-1": (lambda: flatten(1, [2, "n", 4]), {**H, "x": _w(2, 3, 4)}, (1,)),
    "flatten-axis-1-batch-2": (lambda: flatten(1, [2, 3, "n"]), {**H, "x": _w(2, 3, 3)}, None),
}


@pytest.mark.parametrize("name", list(FOUND))
def test_graphs_found_where_the_walk_and_the_probe_disagreed(name, monkeypatch):
    """Each once answered by the walk otherwise than by the probe's runs, or lost (a raise), or right by
    accident (scales read by position where `axes` renumbers them)."""
    build, feeds, expected = FOUND[name]
    traced, probed = _walk_and_probe(build(), feeds, monkeypatch)
    assert traced == expected
    if traced is not None:
        assert probed.stackable and tuple(probed.outputs) == traced


def _random_graphs(seeds, check):
    from hypothesis import given, settings, strategies as st

    import walk_random_graphs as graphs

    @settings(max_examples=seeds, deadline=None, derandomize=True, database=None)
    @given(st.integers(0, 2**31 - 1))
    def run(seed):
        import random

        built = graphs.build(random.Random(seed))
        if built is not None:
            check(seed, *built)

    run()


def _walk_agrees(seed, model, feeds):
    import walk_random_graphs as graphs

    found = graphs.check(model, feeds)
    assert found in ("none", "agree"), f"seed {seed}: {found}"


def _runs_as_onnxruntime(seed, model, feeds):
    from conftest import ort_run

    try:
        expected = ort_run(model, feeds)[0]
    except Exception:
        return  # a graph onnxruntime refuses (a broadcast the builder did not foresee)
    got = onnx_attr.load(model, strip_final_activation=False).run(feeds)[0].numpy()
    assert got.shape == expected.shape, f"seed {seed}"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())),
                               err_msg=f"seed {seed}")


def test_random_graphs_the_walk_answers_as_the_probe():
    """Property: on random chains of ops (tests/walk_random_graphs.py) the walk answers what the
    probe's runs find, or declines; it never raises."""
    _random_graphs(150, _walk_agrees)


def test_random_graphs_import_as_onnxruntime_runs_them():
    """The same graphs through the import against onnxruntime: the probe's runs are only an oracle
    where the plain forward is right (they found ReduceMax/Min/Prod with negative axes wrong)."""
    _random_graphs(100, _runs_as_onnxruntime)


@pytest.mark.slow
def test_random_graphs_campaign():
    _random_graphs(5000, _walk_agrees)
    _random_graphs(3000, _runs_as_onnxruntime)


def _fixed_one(reshape_to: list[int], normalise: bool = True):
    """A static batch-1 export: x [1, 2, 4, 4] -> Conv -> Reshape to a baked target -> an L2
    normalisation (an op the walk does not follow) -> Tanh, its output declared [1, ...]. With
    [1, 3, -1] three stacked rows run together along the last axis; with [-1, 3, 16] they stay apart."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "target"], ["flat"]),
             helper.make_node("LpNormalization", ["flat"], ["unit"], axis=1) if normalise else
             helper.make_node("Identity", ["flat"], ["unit"]),
             helper.make_node("Mul", ["unit", "four"], ["scaled"]),
             helper.make_node("Tanh", ["scaled"], ["y"])]
    return make_model(nodes, [("x", FLOAT, [1, 2, 4, 4])], [("y", FLOAT, [1, 3, 16])],
                      {"w": _w(3, 2, 3, 3), "target": _i(*reshape_to), "four": np.array(4, np.float32)},
                      opset=13)


def _counting(model):
    calls = []
    model.module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("target,mixes", [([1, 3, -1], True), ([-1, 3, 16], False)])
def test_a_declared_batch_of_one_runs_the_probe_only_when_rows_would_stack(target, mixes):
    """Oracle: the probe's own runs. DeepLift's first call on a static batch-1 export (one row per
    pass, the export's contract) runs the model once per pass and nothing more; IG, which would stack
    its steps, runs the rows then, and stacks them only where they came out apart."""
    model = onnx_attr.load(_fixed_one(target), strip_final_activation=False)
    x = _w(1, 2, 4, 4, scale=30)
    tensors = model.prepare({"x": x})
    axes = batch.batch_axes(model.inputs, tensors)
    assert traced_output_axes(model, tensors, axes) is None  # the walk cannot tell: the declared shapes do
    calls = _counting(model)
    layout = batch.probe(model, tensors, axes)
    assert layout.stackable and layout.outputs == (0,) and calls == []
    ran = batch._runs(model, tensors, axes, None, batch.pass_batch(model))
    assert ran.outputs == (0,) and ran.found_doubles is (not mixes)
    calls.clear()
    assert layout.doubles is (not mixes) and len(calls) == 2  # the rows ran now, once: [x] and [x, x/2, x]
    assert layout.doubles is (not mixes) and len(calls) == 2


def test_deeplift_first_call_on_a_declared_batch_of_one_runs_no_probe():
    model = onnx_attr.load(_fixed_one([1, 3, -1], normalise=False), strip_final_activation=False)
    x = _w(1, 2, 4, 4, scale=0.3)
    method = onnx_attr.DeepLift(model)
    calls = _counting(model)
    attributions, delta = method.attribute(x, target=(1, 5), return_convergence_delta=True)
    assert len(calls) == 0  # DeepLift runs its rewritten module, never the plain one
    assert "_batch_layouts" in model.__dict__ and all(v.found_doubles is None for v in model._batch_layouts.values())
    y, y0 = (model.run({"x": v})[0][0, 1, 5] for v in (x, np.zeros_like(x)))
    np.testing.assert_allclose(np.asarray(attributions).sum(), y - y0, rtol=1e-5)
    ig = onnx_attr.IntegratedGradients(model).attribute(x, target=(1, 5), n_steps=16)
    alone = onnx_attr.IntegratedGradients(model).attribute(x, target=(1, 5), n_steps=16, internal_batch_size=1)
    np.testing.assert_allclose(np.asarray(ig), np.asarray(alone), rtol=1e-5, atol=1e-6)


def test_a_declared_batch_of_one_asks_the_walk_before_running_rows():
    """Rows the walk proves apart double without a run, asked only when a method would stack them."""
    model = onnx_attr.load(_fixed_one([-1, 3, 16], normalise=False), strip_final_activation=False)
    tensors = model.prepare({"x": _w(1, 2, 4, 4)})
    axes = batch.batch_axes(model.inputs, tensors)
    walks = []
    walk = batch.traced_output_axes
    calls = _counting(model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch, "traced_output_axes", lambda *a, **k: walks.append(1) or walk(*a, **k))
        layout = batch.probe(model, tensors, axes)
        assert walks == [] and layout.outputs == (0,)
        assert layout.doubles and walks == [1] and calls == []


def test_rows_that_break_a_baked_batch_are_not_re_run_node_by_node(monkeypatch):
    """A static batch-1 export whose Reshape bakes [1, 48] fails on the probe's three rows: the
    probe takes that as the declared axes. The failure is caught, so the forward's node-by-node
    re-run that names a failing node for the user (a whole second forward on a large graph) must
    not run; a user's own failing forward still gets it."""
    from onnx_attr.importing import model as model_module

    located = []
    explain = model_module._explain_failure
    monkeypatch.setattr(model_module, "_explain_failure", lambda *a: located.append(1) or explain(*a))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "target"], ["flat"]),
             helper.make_node("Tanh", ["flat"], ["y"])]
    onnx_model = make_model(nodes, [("x", FLOAT, [1, 2, 4, 4])], [("y", FLOAT, ["k", 48])],
                            {"w": _w(3, 2, 3, 3), "target": _i(1, 48)}, opset=13)
    imported = onnx_attr.load(onnx_model, strip_final_activation=False)
    tensors = imported.prepare({"x": _w(1, 2, 4, 4)})
    layout = batch._runs(imported, tensors, batch.batch_axes(imported.inputs, tensors), None, 1)  # the runs proper
    assert layout.outputs == (0,) and not located
    with pytest.raises(onnx_attr.errors.ForwardError, match="Reshape"):
        imported(torch.cat([tensors[0]] * 3))
    assert located


def test_the_walk_reads_past_a_computed_reshape_and_a_fused_layer_norm_at_an_old_opset(monkeypatch):
    """paddle2onnx's recognisers at opsets 11-13: a Reshape to a computed shape (Shape -> Slice ->
    Concat), whose target ONNX's inference reads only from Reshape-14 on, and a written-out LayerNorm
    that the import fuses into LayerNormalization (opset 17) in the older graph. The walk answers
    from ONNX's own inference (the graph converted to opset 14, the fused node an Identity for
    shapes), as the probe's runs do, without onnxruntime's symbolic inference (a Python pass over
    the graph, several times as slow)."""
    from onnxruntime.tools import symbolic_shape_infer
    from test_layernorm_fusion import layer_norm_model

    model = layer_norm_model(opset=12)
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["x_kept" if i == "x" else i for i in node.input]
    computed = [helper.make_node("Shape", ["x"], ["x_shape"]),
                helper.make_node("Slice", ["x_shape", "from", "to"], ["leading"]),
                helper.make_node("Concat", ["leading", "minus_one"], ["target"], axis=0),
                helper.make_node("Reshape", ["x", "target"], ["x_kept"])]
    for position, node in enumerate(computed):
        graph.node.insert(position, node)
    for name, value in (("from", _i(0)), ("to", _i(2)), ("minus_one", _i(-1))):
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    imported = onnx_attr.load(model, strip_final_activation=False)
    assert "LayerNormalization" in {n.op_type for n in imported.onnx_model.graph.node}
    asked = []

    class Counted:
        def __init__(self, *args):
            asked.append(args)
            raise RuntimeError("not expected")

    monkeypatch.setattr(symbolic_shape_infer, "SymbolicShapeInference", Counted)
    feeds = {"x": (RNG.standard_normal((2, 4, 16)) * 30).astype(np.float32)}
    traced, probed = _walk_and_probe(model, feeds, monkeypatch)
    assert traced == probed.outputs == (0,)
    assert not asked
