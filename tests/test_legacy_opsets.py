"""Files at ONNX's first opsets (1-6, the old Caffe2 zoo's) and its experimental ops (opsets 1-9:
ImageScaler, Affine, Scale, ScaledTanh, ParametricSoftplus, Crop, ThresholdedRelu, ConstantFill,
DynamicSlice, MeanVarianceNormalization before 9), legacy.py.

Oracles: onnxruntime cannot run opsets 1-6, so each legacy graph is written a second time by hand
in its opset-9 form (same weights) and onnxruntime runs that; the experimental ops are run by
onnxruntime as written (it still has their kernels). Inputs at pixel magnitudes and in the
hundreds; DeepLift's completeness against onnxruntime's f(x) - f(baseline) on a far baseline.
Before legacy.py, opsets 1-5 were refused (BatchNormalization, Relu, Dropout), an opset-6 bias add at
an axis went through onnx.version_converter, which unsqueezes one axis too many (a [C] bias became
[C, 1, 1, 1], broadcasting to a wrong shape), and every experimental op was refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import onnx_attr
from onnx_attr.errors import UnsupportedOpError
from conftest import FLOAT, ort_run

RNG = np.random.default_rng(37)


def _model(nodes, inputs, outputs, weights, opset, ir_version=3):
    """An old-style file: IR 3 lists every weight among the graph inputs too."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()]
    listed = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    if ir_version < 4:
        listed += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "legacy", listed, [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx-caffe2")
    model.ir_version = ir_version
    return model


def _ours(model, feeds):
    out = onnx_attr.load(model, strip_final_activation=False).run(feeds)
    return [o.numpy() for o in out]


def _same(model, modern, feeds, rtol=1e-5, atol=1e-3):
    for got, want in zip(_ours(model, feeds), ort_run(modern, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _pixels(shape):
    return (RNG.random(shape) * 255).astype(np.float32)


# ---- the binary ops' legacy broadcast at an axis ---------------------------------------------------------

@pytest.mark.parametrize("opset", [1, 6])
@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_a_channel_bias_at_axis_1_broadcasts_per_channel(opset, op):
    """[N, C, H, W] op B[C] at axis 1, with C = H = W: read as numpy reads [C] (the last axis), or with
    onnx.version_converter's [C, 1, 1, 1], the result differs (the latter's in shape too)."""
    b = (RNG.random(4) * 3 + 0.5).astype(np.float32)
    extra = {"consumed_inputs": [0, 0]} if opset < 6 else {}
    legacy = _model([helper.make_node(op, ["x", "b"], ["z"], broadcast=1, axis=1, **extra),
                     helper.make_node("Dropout", ["z"], ["y"], is_test=1)],  # no converter at opset <= 6: upgraded
                    [("x", FLOAT, [2, 4, 4, 4])], [("y", FLOAT, [2, 4, 4, 4])], {"b": b}, opset)
    modern = _model([helper.make_node(op, ["x", "b"], ["y"])], [("x", FLOAT, [2, 4, 4, 4])],
                    [("y", FLOAT, [2, 4, 4, 4])], {"b": b.reshape(4, 1, 1)}, 9, ir_version=4)
    x = RNG.normal(0, 100, (2, 4, 4, 4)).astype(np.float32)
    _same(legacy, modern, {"x": x})
    expected = {"Add": x + b[:, None, None], "Mul": x * b[:, None, None], "Sub": x - b[:, None, None],
                "Div": x / b[:, None, None]}[op]  # by hand, too
    np.testing.assert_allclose(_ours(legacy, {"x": x})[0], expected, rtol=1e-6, atol=1e-4)


def test_a_computed_second_operand_is_unsqueezed_and_a_trailing_axis_is_left_alone():
    """B from the graph (not a weight) at axis 1 of rank 4, and B [H, W] at axis 2 (already numpy's)."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"], broadcast=1, axis=1),
             helper.make_node("Add", ["m", "hw"], ["y"], broadcast=1, axis=2)]
    hw = RNG.normal(0, 10, (5, 6)).astype(np.float32)
    legacy = _model(nodes, [("x", FLOAT, [2, 3, 5, 6]), ("s", FLOAT, [3])], [("y", FLOAT, [2, 3, 5, 6])], {"hw": hw}, 6)
    modern = _model([helper.make_node("Unsqueeze", ["s"], ["s3"], axes=[1, 2]),
                     helper.make_node("Mul", ["x", "s3"], ["m"]), helper.make_node("Add", ["m", "hw"], ["y"])],
                    [("x", FLOAT, [2, 3, 5, 6]), ("s", FLOAT, [3])], [("y", FLOAT, [2, 3, 5, 6])], {"hw": hw}, 9, 4)
    _same(legacy, modern, {"x": _pixels((2, 3, 5, 6)), "s": RNG.normal(0, 5, 3).astype(np.float32)})


def test_an_axis_broadcast_on_an_input_of_unknown_rank_is_refused_by_name():
    """x reshaped to a shape given at run time (of unknown length): where does axis 1 put b?"""
    legacy = _model([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                     helper.make_node("Add", ["r", "b"], ["y"], name="bias_add", broadcast=1, axis=1)],
                    [("x", FLOAT, [2, 3, 4]), ("shape", onnx.TensorProto.INT64, ["k"])], [("y", FLOAT, ["a"])],
                    {"b": np.ones(3, np.float32)}, 6, ir_version=4)
    with pytest.raises(UnsupportedOpError, match=r"bias_add.*rank of 'r' is unknown"):
        onnx_attr.load(legacy)


# ---- a Caffe2-zoo-like network at opset 3, against its opset-9 twin ---------------------------------------

def _zoo_pair():
    """conv -> BatchNormalization (consumed_inputs, is_test, its training outputs listed) -> Relu ->
    MaxPool -> conv -> BN -> Sum (the residual) -> Relu -> Dropout (is_test) -> Reshape (shape as an
    attribute) -> Gemm (broadcast) -> Softmax, and the same network written at opset 9."""
    w = {"w1": RNG.normal(0, 0.05, (8, 3, 3, 3)), "b1": RNG.normal(0, 1, 8), "w2": RNG.normal(0, 0.2, (8, 8, 3, 3)),
         "b2": RNG.normal(0, 1, 8), "fc": RNG.normal(0, 0.5, (5, 8 * 4 * 4)), "fcb": RNG.normal(0, 1, 5)}
    for k in ("1", "2"):
        w |= {f"s{k}": RNG.uniform(0.5, 1.5, 8), f"o{k}": RNG.normal(0, 1, 8), f"m{k}": RNG.normal(0, 5, 8),
              f"v{k}": RNG.uniform(10, 50, 8)}
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}

    def network(legacy: bool):
        old = {"consumed_inputs": [0]} if legacy else {}

        def bn(k, x, y):
            attrs = dict(epsilon=1e-5, is_test=1, consumed_inputs=[0, 0, 0, 1, 1]) if legacy else dict(epsilon=1e-5)
            outs = [y, f"rm{k}", f"rv{k}", f"sm{k}", f"sv{k}"] if legacy else [y]
            return helper.make_node("BatchNormalization", [x, f"s{k}", f"o{k}", f"m{k}", f"v{k}"], outs, **attrs)

        nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 bn("1", "c1", "n1"), helper.make_node("Relu", ["n1"], ["r1"], **old),
                 helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 bn("2", "c2", "n2"), helper.make_node("Sum", ["n2", "p1"], ["s"], **old),
                 helper.make_node("Relu", ["s"], ["r2"], **old),
                 helper.make_node("Dropout", ["r2"], ["d"], **({"is_test": 1, "ratio": 0.5} if legacy else {}))]
        weights = dict(w)
        if legacy:
            nodes.append(helper.make_node("Reshape", ["d"], ["f"], shape=[2, -1]))
            nodes.append(helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1, broadcast=1))
        else:
            weights["shape"] = np.array([2, -1], np.int64)
            nodes.append(helper.make_node("Reshape", ["d", "shape"], ["f"]))
            nodes.append(helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1))
        nodes.append(helper.make_node("Softmax", ["g"], ["y"]))
        return _model(nodes, [("x", FLOAT, [2, 3, 8, 8])], [("y", FLOAT, [2, 5])], weights,
                      3 if legacy else 9, 3 if legacy else 4)

    return network(True), network(False)


def test_a_caffe2_zoo_style_opset3_network_matches_its_opset9_twin():
    legacy, modern = _zoo_pair()
    x = _pixels((2, 3, 8, 8))
    _same(legacy, modern, {"x": x}, rtol=1e-4, atol=1e-5)
    model = onnx_attr.load(legacy, strip_final_activation=False)
    assert any("legacy forms as opset 7" in n for n in model.notes)
    assert model.summary()["file_opsets"]["ai.onnx"] == 3  # what inspect shows beside the imported opset
    assert model.verify({"x": x}).passed


def test_deeplift_on_the_opset3_network_is_complete_against_onnxruntime_at_pixel_magnitudes():
    legacy, modern = _zoo_pair()
    x, far = _pixels((2, 3, 8, 8)), np.full((2, 3, 8, 8), 127.5, np.float32)
    model = onnx_attr.load(legacy)  # the final softmax stripped: logits, written by hand below
    logits = [ort_run(_without_softmax(modern), {"x": v})[0] for v in (x, far)]
    attributions, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(far),
                                                               target=3, return_convergence_delta=True)
    moved = logits[0][:, 3] - logits[1][:, 3]
    np.testing.assert_allclose(attributions.sum(dim=(1, 2, 3)).numpy(), moved, rtol=1e-4, atol=1e-3)
    assert np.abs(moved).max() > 1.0  # the output moved: the check is not 0 = 0


def _without_softmax(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[-1]
    out.graph.output[0].name = "g"
    return out


# ---- the other legacy forms, one by one ------------------------------------------------------------------

def test_renamed_and_retyped_attributes_cast_pad_concat_upsample_split_tile_lppool():
    x = RNG.normal(0, 100, (1, 2, 3, 4)).astype(np.float32)
    legacy = _model([
        helper.make_node("Cast", ["x"], ["c"], to="DOUBLE"),
        helper.make_node("Cast", ["c"], ["cf"], to="float"),
        helper.make_node("Pad", ["cf"], ["p"], paddings=[0, 0, 1, 2, 0, 0, 2, 1], value=-7.0),
        helper.make_node("Concat", ["p", "p"], ["k"]),  # Concat-1: axis 1 by default
        helper.make_node("Upsample", ["k"], ["u"], height_scale=2.0, width_scale=3.0, mode="nearest"),
        helper.make_node("Split", ["u", "sizes"], ["s1", "s2"], axis=3),
        helper.make_node("Tile", ["s1", "tiles", "axis"], ["t"]),
        helper.make_node("LpPool", ["s2"], ["lp"], p=2.0, kernel_shape=[2, 2]),
    ], [("x", FLOAT, [1, 2, 3, 4])], [("t", FLOAT, ["a", "b", "c", "d"]), ("lp", FLOAT, ["e", "f", "g", "h"])],
        {"sizes": np.array([10, 11], np.int64), "tiles": np.array([2], np.int64), "axis": np.array([1], np.int64)}, 1)
    modern = _model([
        helper.make_node("Cast", ["x"], ["c"], to=onnx.TensorProto.DOUBLE),
        helper.make_node("Cast", ["c"], ["cf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Pad", ["cf"], ["p"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=-7.0),
        helper.make_node("Concat", ["p", "p"], ["k"], axis=1),
        helper.make_node("Upsample", ["k", "scales"], ["u"], mode="nearest"),
        helper.make_node("Split", ["u"], ["s1", "s2"], axis=3, split=[10, 11]),
        helper.make_node("Tile", ["s1", "repeats"], ["t"]),
        helper.make_node("LpPool", ["s2"], ["lp"], p=2, kernel_shape=[2, 2]),
    ], [("x", FLOAT, [1, 2, 3, 4])], [("t", FLOAT, ["a", "b", "c", "d"]), ("lp", FLOAT, ["e", "f", "g", "h"])],
        {"scales": np.array([1, 1, 2, 3], np.float32), "repeats": np.array([1, 2, 1, 1], np.int64)}, 9, 4)
    _same(legacy, modern, {"x": x})


def test_prelu_slope_per_channel_before_opset_7():
    slope = np.array([0.1, 0.5, 2.0, -1.0], np.float32)  # C = W = 4: numpy's reading would use the last axis
    legacy = _model([helper.make_node("PRelu", ["x", "a"], ["y"])], [("x", FLOAT, [2, 4, 3, 4])],
                    [("y", FLOAT, [2, 4, 3, 4])], {"a": slope}, 6)
    x = RNG.normal(0, 50, (2, 4, 3, 4)).astype(np.float32)
    a = slope[None, :, None, None]
    np.testing.assert_allclose(_ours(legacy, {"x": x})[0], np.where(x > 0, x, a * x), rtol=1e-6)


# ---- experimental ops, against onnxruntime's own kernels -------------------------------------------------

EXPERIMENTAL = [
    ("ImageScaler", dict(scale=1 / 255, bias=[-0.485, -0.456, -0.406])),
    ("Affine", dict(alpha=-3.0, beta=12.5)),
    ("Scale", dict(scale=0.0078125)),
    ("ScaledTanh", dict(alpha=1.7159, beta=0.01)),
    ("ParametricSoftplus", dict(alpha=2.0, beta=0.02)),
    ("ThresholdedRelu", dict(alpha=100.0)),
    ("Crop", dict(border=[1, 2, 3, 1])),
    ("Crop", dict(border=[2, 1, 0, 0], scale=[4, 5])),
]


@pytest.mark.parametrize("opset", [7, 8, 9])
@pytest.mark.parametrize("op,attrs", EXPERIMENTAL, ids=[f"{op}-{i}" for i, (op, _) in enumerate(EXPERIMENTAL)])
def test_experimental_ops_match_onnxruntime(op, attrs, opset):
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", FLOAT, ["N", 3, 7, 8])],
                   [("y", FLOAT, ["N", "c", "h", "w"])], {}, opset, ir_version=4)
    x = _pixels((2, 3, 7, 8))
    _same(model, model, {"x": x}, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("opset", [8, 9])
def test_dynamic_slice_with_bounds_computed_in_the_graph_matches_onnxruntime(opset):
    """PyTorch 1.0 wrote a slice whose bounds follow the input's shape as DynamicSlice (Slice-10's inputs)."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Slice", ["shape"], ["w"], starts=[1], ends=[2]),
             helper.make_node("Sub", ["w", "two"], ["end"]),
             helper.make_node("DynamicSlice", ["x", "one", "end", "axis"], ["y"])]
    model = _model(nodes, [("x", FLOAT, ["N", 7])], [("y", FLOAT, ["N", "k"])],
                   {"two": np.array([2], np.int64), "one": np.array([1], np.int64), "axis": np.array([1], np.int64)},
                   opset, ir_version=4)
    x = RNG.normal(0, 100, (3, 7)).astype(np.float32)
    _same(model, model, {"x": x}, rtol=0, atol=0)
    assert _ours(model, {"x": x})[0].shape == (3, 4)


@pytest.mark.parametrize("opset", [7, 8])
@pytest.mark.parametrize("attrs", [{}, {"normalize_variance": 0}], ids=["normalized", "centred"])
def test_mean_variance_normalization_before_opset_9_matches_onnxruntime(opset, attrs):
    model = _model([helper.make_node("MeanVarianceNormalization", ["x"], ["y"], **attrs)], [("x", FLOAT, [2, 3, 4, 5])],
                   [("y", FLOAT, [2, 3, 4, 5])], {}, opset, ir_version=4)
    x = (RNG.normal(0, 1, (2, 3, 4, 5)) * np.array([1.0, 50.0, 300.0])[:, None, None] + 100).astype(np.float32)
    _same(model, model, {"x": x}, rtol=1e-5, atol=1e-4)


def test_a_tiny_yolo_v2_style_head_verifies_and_deeplift_is_complete():
    """ImageScaler -> Conv -> BatchNormalization -> LeakyRelu -> MaxPool -> Conv at opset 8, as the zoo's
    tiny-YOLOv2 starts; onnxruntime runs the file as written (ImageScaler included)."""
    w = {"w1": RNG.normal(0, 3.0, (6, 3, 3, 3)), "s": RNG.uniform(0.5, 1.5, 6), "o": RNG.normal(0, 1, 6),
         "m": RNG.normal(0, 1, 6), "v": RNG.uniform(0.5, 2, 6), "w2": RNG.normal(0, 0.3, (4, 6, 1, 1))}
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    nodes = [helper.make_node("ImageScaler", ["image"], ["scaled"], scale=1 / 255, bias=[0.0, 0.0, 0.0]),
             helper.make_node("Conv", ["scaled", "w1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["n"], epsilon=1e-5),
             helper.make_node("LeakyRelu", ["n"], ["r"], alpha=0.1),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["grid"], kernel_shape=[1, 1])]
    model = _model(nodes, [("image", FLOAT, [1, 3, 8, 8])], [("grid", FLOAT, [1, 4, 4, 4])], w, 8, ir_version=4)
    x, zeros = _pixels((1, 3, 8, 8)), np.zeros((1, 3, 8, 8), np.float32)
    imported = onnx_attr.load(model)
    report = imported.verify({"image": x})
    assert report.passed
    assert any("ImageScaler" in n for n in imported.notes)
    attributions, _ = onnx_attr.DeepLift(imported).attribute(torch.from_numpy(x), target=(1, 2, 3),
                                                              return_convergence_delta=True)
    at_x, at_zero = (ort_run(model, {"image": v})[0][0, 1, 2, 3] for v in (x, zeros))
    assert abs(at_x - at_zero) > 0.1
    np.testing.assert_allclose(float(attributions.sum()), at_x - at_zero, rtol=1e-5, atol=1e-5)


# ---- ConstantFill: PyTorch 0.4's zero initial state of an LSTM, at opset 6 ---------------------------------

def _lstm_with_filled_state(opset: int):
    """x [T, N, 4] -> LSTM whose h0/c0 are zeros of shape [1, N, 3]: at opset 6 as PyTorch 0.4 wrote it
    (Shape -> Gather -> Concat -> ConstantFill(input_as_shape)), at opset 9 with ConstantOfShape."""
    rng = np.random.default_rng(4)  # the same weights in both forms
    w = {"W": rng.normal(0, 0.5, (1, 12, 4)), "R": rng.normal(0, 0.5, (1, 12, 3)), "B": rng.normal(0, 0.3, (1, 24)),
         "one": np.array([1], np.int64), "hidden": np.array([3], np.int64), "batch_axis": np.array(1, np.int64)}
    w = {k: np.asarray(v, np.float32) if v.dtype == np.float64 else v for k, v in w.items()}
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "batch_axis"], ["n"]),
             helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
             helper.make_node("Concat", ["one", "n1", "hidden"], ["state_shape"], axis=0)]
    for state in ("h0", "c0"):
        nodes.append(helper.make_node("ConstantFill", ["state_shape"], [state], input_as_shape=1) if opset < 9 else
                     helper.make_node("ConstantOfShape", ["state_shape"], [state]))
    nodes.append(helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "y_h", "y_c"], hidden_size=3))
    return _model(nodes, [("x", FLOAT, [5, 2, 4])], [("y_h", FLOAT, [1, 2, 3])], w, opset, ir_version=4)


def test_constant_fill_initial_states_at_opset_6_match_the_opset_9_twin():
    """Also verified (onnxruntime has no ConstantFill kernel: the graph verify runs has it written out)
    and explained completely, at inputs in the tens against onnxruntime's f(x) - f(0) on the twin."""
    x = RNG.normal(0, 30, (5, 2, 4)).astype(np.float32)
    legacy, modern = _lstm_with_filled_state(6), _lstm_with_filled_state(9)
    _same(legacy, modern, {"x": x}, atol=1e-5)
    imported = onnx_attr.load(legacy)
    assert imported.verify({"x": x}).passed
    attributions = onnx_attr.DeepLift(imported).attribute({"x": x}, target=(0, 1, 2))
    moved = [ort_run(modern, {"x": v})[0][0, 1, 2] for v in (x, np.zeros_like(x))]
    np.testing.assert_allclose(float(np.asarray(attributions["x"])[:, 1].sum()), moved[0] - moved[1], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("opset", [7, 9])
def test_constant_fill_forms_by_hand(opset):
    """The fill of an input's own shape with extra axes, and of the `shape` attribute, in a given type."""
    nodes = [helper.make_node("ConstantFill", ["x"], ["like"], value=2.5, extra_shape=[2]),
             helper.make_node("ConstantFill", [], ["fixed"], shape=[3, 1], value=7.0, dtype=onnx.TensorProto.INT64),
             helper.make_node("Add", ["x", "x"], ["y"])]
    model = _model(nodes, [("x", FLOAT, [2, 3])], [("like", FLOAT, [2, 3, 2]), ("fixed", onnx.TensorProto.INT64, [3, 1]),
                                                    ("y", FLOAT, [2, 3])], {}, opset, ir_version=4)
    like, fixed, _ = _ours(model, {"x": RNG.normal(0, 1, (2, 3)).astype(np.float32)})
    np.testing.assert_array_equal(like, np.full((2, 3, 2), 2.5, np.float32))
    assert fixed.dtype == np.int64
    np.testing.assert_array_equal(fixed, np.full((3, 1), 7))


@pytest.mark.parametrize("opset", [7, 8])
def test_batch_normalization_with_per_element_statistics_matches_onnxruntime(opset):
    """spatial=0 (opsets 7-8): statistics per element of an example, [C, H, W]; at logits-like magnitudes,
    and DeepLift complete through it (an affine map of x) against onnxruntime's f(x) - f(0)."""
    params = {"s": RNG.uniform(0.5, 2, (3, 4, 5)), "b": RNG.normal(0, 10, (3, 4, 5)),
              "m": RNG.normal(0, 50, (3, 4, 5)), "v": RNG.uniform(1, 400, (3, 4, 5))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    model = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0, epsilon=1e-3)],
                   [("x", FLOAT, ["N", 3, 4, 5])], [("y", FLOAT, ["N", 3, 4, 5])], params, opset, ir_version=4)
    x = RNG.normal(0, 100, (2, 3, 4, 5)).astype(np.float32)
    _same(model, model, {"x": x}, rtol=1e-5, atol=1e-4)
    attributions, delta = onnx_attr.DeepLift(onnx_attr.load(model)).attribute(
        torch.from_numpy(x), target=(1, 2, 3), return_convergence_delta=True)
    moved = [ort_run(model, {"x": v})[0][:, 1, 2, 3] for v in (x, np.zeros_like(x))]
    np.testing.assert_allclose(attributions.sum(dim=(1, 2, 3)).numpy(), moved[0] - moved[1], rtol=1e-5, atol=1e-4)
