"""Small fixes found by the real-exports benchmark: the CLI's default target on outputs of
rank > 2, and a clear error when no input can be attributed. Oracle: onnxruntime on the file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_attr.app.cli import main


def _save(tmp_path, nodes, inputs, outputs, weights, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


def _conv_map(tmp_path) -> str:
    """[N, 3, 6, 6] -> Conv -> [N, 2, 6, 6]: class logits of rank 4 batched on axis 0 (a ReLU after it would
    make them features: `test_target_forms.test_a_relu_or_tanh_feature_map_is_features_not_class_maps`)."""
    rng = np.random.default_rng(0)
    weights = {"w": (rng.normal(size=(2, 3, 3, 3)) * 0.05).astype(np.float32),
               "b": np.array([3.0, -2.0], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])], weights)


@pytest.mark.parametrize("shape, method, form", [
    ((3, 3, 6, 6), "deeplift", None),
    ((2, 3, 6, 6), "integratedgradients", None),
    ((3, 3, 6, 6), "deeplift", "top"),
    ((2, 3, 6, 6), "deeplift", "segment=0"),  # the smaller segment: 4 and 2 pixels
])
def test_class_maps_default_to_the_largest_segment_and_top_picks_the_largest_value(tmp_path, shape, method, form):
    """[N, 2, 6, 6] over a 6×6 image: class maps. The default explains class K's score summed over
    the pixels predicted as K (argmax over the classes), K the class on the most pixels; `top` the
    largest value. Oracles: onnxruntime's outputs, the mask and the sums by hand."""
    path = _conv_map(tmp_path)
    x = (np.random.default_rng(2).uniform(size=shape) * 255.0).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "run"
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures",
                 "--method", method] + ([f"--target={form}"] if form else [])) == 0
    report = json.loads((out / "report.json").read_text())
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0].astype(np.float64)
    y0 = session.run(None, {"x": np.zeros_like(x[:1])})[0][0].astype(np.float64)
    assert report["target_detail"]["layout"] == "class maps [N, C, H, W] (2 classes)"
    if form == "top":
        expected = [list(np.unravel_index(int(row.argmax()), row.shape)) for row in y]
        assert report["target"] == expected
        change = np.array([y[i][tuple(t)] - y0[tuple(t)] for i, t in enumerate(expected)])
    else:
        predicted = y.argmax(1)
        most = [int(np.bincount(p.reshape(-1), minlength=2).argmax()) for p in predicted]
        classes = most if form is None else [0] * len(x)
        assert report["target"] == (form or "segment") and report["target_detail"]["classes"] == classes
        change = np.array([((y[i, k] - y0[k]) * (predicted[i] == k)).sum() for i, k in enumerate(classes)])
        assert report["target_detail"]["mask_size"] == [int((predicted[i] == k).sum()) for i, k in enumerate(classes)]
    with np.load(out / "attributions.npz", allow_pickle=False) as data:
        sums = data["x"].reshape(len(x), -1).astype(np.float64).sum(1)
    tolerance = 1e-4 * np.abs(change).max() if method == "deeplift" else 1e-2 * np.abs(change).max()
    np.testing.assert_allclose(sums, change, atol=tolerance)


# -- a 0-d non-floating input (a flag) is held at its value by every method --------------------------------------------

def _scaled_by_flag(tmp_path) -> str:
    """y = Relu((x * Cast(sr, float)) @ w): `sr` is a 0-d int64 input, as a sample-rate flag."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Cast", ["sr"], ["s"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "s"], ["xs"]),
             helper.make_node("MatMul", ["xs", "w"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                                   helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                 {"w": (rng.normal(size=(6, 3)) * 3).astype(np.float32)}, name="flag.onnx")


COMPLETE = ["DeepLift", "DeepLiftShap", "IntegratedGradients", "FeatureAblation", "InputXGradient"]


@pytest.mark.parametrize("name", ["DeepLift", "DeepLiftShap", "IntegratedGradients", "Saliency", "InputXGradient",
                                  "GradientShap", "FeatureAblation", "Occlusion", "NoiseTunnel"])
@pytest.mark.parametrize("among_inputs", [False, True])
def test_a_0d_integer_input_is_held_by_every_method(tmp_path, name, among_inputs):
    import onnx_attr

    path = _scaled_by_flag(tmp_path)
    model = onnx_attr.load(path)
    rng = np.random.default_rng(4)
    x = (rng.uniform(size=(4, 6)) * 100).astype(np.float32)
    sr = np.array(3, np.int64)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x, "sr": sr})[0]
    target = 1
    base = np.zeros((1, 6), np.float32)
    change = y[:, target].astype(np.float64) - session.run(None, {"x": base, "sr": sr})[0][0, target]
    kwargs: dict = {}
    if name in ("DeepLiftShap", "GradientShap"):
        kwargs["baselines"] = {"x": base, "sr": sr} if among_inputs else {"x": base}
    elif name in ("DeepLift", "IntegratedGradients", "FeatureAblation", "Occlusion"):
        kwargs["baselines"] = {"x": base, "sr": np.array(0, np.int64)} if among_inputs else {"x": base}
    if name == "Occlusion":
        kwargs["sliding_window_shapes"] = (1,)
    if name == "NoiseTunnel":
        explainer = onnx_attr.NoiseTunnel(onnx_attr.Saliency(model))
        kwargs.update(nt_samples=3, stdevs=0.0)
    else:
        explainer = getattr(onnx_attr, name)(model)
    if among_inputs:
        result = explainer.attribute({"x": x, "sr": sr}, target=target, **kwargs)
        assert np.asarray(result["sr"]).shape == () and float(np.asarray(result["sr"])) == 0.0
    else:
        result = explainer.attribute({"x": x}, target=target, additional_forward_args={"sr": sr}, **kwargs)
    attributions = np.asarray(result["x"], np.float64)
    assert attributions.shape == x.shape and np.isfinite(attributions).all()
    if name in COMPLETE:  # Σ attributions = f(x)[t] - f(x0)[t], f from onnxruntime, with sr held at 3
        tolerance = 1e-3 * np.abs(change).max() if name == "IntegratedGradients" else 1e-5 * np.abs(change).max()
        np.testing.assert_allclose(attributions.sum(1), change, atol=tolerance)
    elif name in ("Saliency", "NoiseTunnel"):  # the gradient of a ReLU-gated linear map, sr held at 3
        w = numpy_helper.to_array(onnx.load(path).graph.initializer[0]).astype(np.float64)
        expected = np.abs(np.where((y[:, target] > 0)[:, None], 3 * w[:, target][None, :], 0.0))
        np.testing.assert_allclose(attributions, expected, rtol=1e-5)


def test_no_attributable_input_is_a_clear_input_error():
    import torch

    import onnx_attr
    from onnx_attr.methods._inputs import Prepared, example_count

    class Model:
        inputs = [type("Spec", (), {"name": "ids", "dtype": "int32"})()]

    ids = torch.zeros((2, 5), dtype=torch.int32)
    prepared = Prepared([ids], [False], [ids], [], lambda items: items, False)
    with pytest.raises(onnx_attr.InputError, match=r"'ids' \(int32, shape \[2, 5\]\).*none is floating or feeds an "
                                                   r"embedding lookup"):
        example_count(Model(), prepared)


def test_a_model_without_attributable_inputs_exits_2_saying_why(tmp_path, capsys):
    """int32 values read only as a mask (Equal to the padding id, no lookup, no one-hot): nothing to
    attribute (read as numbers, they would be measurements: tests/test_integer_features.py)."""
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Cast", ["is_pad"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "scale"], ["y"])]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 5])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                 {"scale": np.full((1, 5), 0.5, np.float32), "pad": np.array(0, np.int32)})
    np.savez(tmp_path / "ids.npz", ids=np.random.default_rng(0).integers(0, 4, (2, 5)).astype(np.int32))
    assert main(["attribute", path, "-i", str(tmp_path / "ids.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures"]) == 2
    err = capsys.readouterr().err
    assert "'ids' (int32)" in err and "none is floating or feeds an embedding lookup" in err


def test_an_output_empty_for_this_input_exits_2_saying_so(tmp_path, capsys):
    """Scores kept above a threshold (a detector's postprocess, found on torchvision's Faster R-CNN
    with random weights): none passes here, so the output is [0]. The default target's argmax was an
    internal error (exit 3). By default the scores the threshold compares are explained (one per
    position at every input); the filtered output asked for by name is the clear error."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Greater", ["s", "threshold"], ["kept"]),
             helper.make_node("Compress", ["s", "kept"], ["scores"], axis=1)]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                 [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "kept"])],
                 {"threshold": np.array(0.99, np.float32)})
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 6), np.float32))
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--no-pictures",
                 "--output-name", "scores"]) == 2
    assert "output 'scores' is empty for this input (shape [1, 0]" in capsys.readouterr().err
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "default"), "--no-pictures"]) == 0
    assert json.loads((tmp_path / "default" / "report.json").read_text())["output"] == "s"


def test_segment_of_a_class_predicted_nowhere_is_a_clear_error(tmp_path):
    path = _conv_map(tmp_path)
    x = np.zeros((1, 3, 6, 6), np.float32)  # the biases decide: class 0 (3 > -2) on every pixel
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "run"), "--no-pictures",
                 "--target=segment=1"]) == 2


@pytest.mark.parametrize("cast", [False, True], ids=["concat", "cast-after"])
def test_maps_stacked_from_different_heads_default_to_the_first_ones_region(tmp_path, cast):
    """rapidocrlite's Indra text detector: [1, 3, H, W] is a text logit beside two Softplus distance
    maps (pixels to the line's top and bottom), joined by a Concat. Read as three class maps, the
    default explained the channel winning the argmax on most pixels: a distance. Channels from
    branches ending in different ops are heads, not classes: the default is channel 0's region.
    A Cast after the Concat (a float16 export's last node; hunt 36's easyhtr detector) changes
    nothing. Oracle: the mask by hand (channel 0 above halfway between its extremes) and
    completeness against onnxruntime."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(0, 0.3, (3, 1, 3, 3)).astype(np.float32), "b": np.array([-2.0, 3.0, 2.5], np.float32),
               "split": np.array([1, 2], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Split", ["c", "split"], ["logit", "dist"], axis=1),
             helper.make_node("Softplus", ["dist"], ["dist_pos"]),
             helper.make_node("Concat", ["logit", "dist_pos"], ["joined" if cast else "out"], axis=1)]
    if cast:
        nodes.append(helper.make_node("Cast", ["joined"], ["out"], to=TensorProto.FLOAT))
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, "H", "W"])], weights)
    x = np.zeros((1, 1, 32, 32), np.float32)
    x[0, 0, 10:14, 4:28] = 200.0  # one line of ink, at pixel scale
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target"] == "region" and "different heads" in report["target_detail"]["layout"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    y0 = session.run(None, {"x": np.zeros_like(x)})[0]
    logit = y[0, 0]
    mask = logit > (logit.min() + logit.max()) / 2
    assert report["target_detail"]["mask_size"] == [int(mask.sum())] and 0 < mask.sum() < mask.size
    got = np.load(tmp_path / "out" / "attributions.npz")["x"]
    expected = (y[0, 0] - y0[0, 0])[mask].sum()
    np.testing.assert_allclose(got.sum(), expected, rtol=1e-4, atol=1e-3)


def _image_to_image(tmp_path, upscale: int, softmax: bool = False, crop: int = 0) -> str:
    """[N, 3, 6, 8] -> Conv (3 -> 3·k²) -> DepthToSpace(k) -> [N, 3, 6k, 8k]: ESPCN's pixel shuffle,
    its border cropped by `crop` (k = 1: a restoration, plus its input: a residual); with `softmax`,
    3 classes over the pixels."""
    rng = np.random.default_rng(4)
    k2 = upscale * upscale
    weights = {"w": (rng.normal(size=(3 * k2, 3, 3, 3)) * 0.1).astype(np.float32),
               "b": rng.normal(size=3 * k2).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])]
    if upscale > 1:
        nodes.append(helper.make_node("DepthToSpace", ["r"], ["d"], blocksize=upscale, mode="CRD"))
        nodes.append(helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["y"]))
        weights.update(starts=np.array([crop, crop]), ends=np.array([6 * upscale - crop, 8 * upscale - crop]),
                       axes=np.array([2, 3]))
    else:
        nodes.append(helper.make_node("Add", ["r", "x"], ["s"] if softmax else ["y"]))
        if softmax:
            nodes.append(helper.make_node("Softmax", ["s"], ["y"], axis=1))
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6 * upscale - 2 * crop, 8 * upscale - 2 * crop])],
                 weights)


@pytest.mark.parametrize("upscale,crop", [(1, 0), (2, 0), (3, 0), (2, 1)])
def test_an_image_out_of_an_image_is_a_map_of_colours_not_three_classes(tmp_path, upscale, crop):
    """A super-resolution net's [N, 3, kH, kW] (ESPCN; waifu2x crops its borders: 2H - 28) and a
    restoration's [N, 3, H, W] are the input's colours: `segment` took the pixels where red or green or blue is the largest channel as
    a class's segment. The default is the bright region's summed score, the mask by hand from
    onnxruntime's outputs, DeepLift complete on it; a 3-class segmenter ending in a Softmax over the
    same shape keeps `segment`."""
    path = _image_to_image(tmp_path, upscale, crop=crop)
    x = (np.random.default_rng(5).uniform(size=(2, 3, 6, 8)) * 255.0).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "run"
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "region"
    scale = (6 * upscale - 2 * crop) / 6
    assert report["target_detail"]["layout"] == "an image [N, 3, H, W] like input 'x'" + (f" (upscaled x{scale:.2g})" if upscale > 1 else "")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0].astype(np.float64)
    y0 = session.run(None, {"x": np.zeros_like(x[:1])})[0][0].astype(np.float64)
    flat = y.reshape(len(y), -1)
    masks = flat > ((flat.min(1) + flat.max(1)) / 2)[:, None]
    assert report["target_detail"]["mask_size"] == masks.sum(1).tolist()
    change = ((flat - y0.reshape(1, -1)) * masks).sum(1)
    with np.load(out / "attributions.npz", allow_pickle=False) as data:
        sums = data["x"].reshape(len(x), -1).astype(np.float64).sum(1)
    np.testing.assert_allclose(sums, change, rtol=1e-4, atol=1e-4 * np.abs(change).max())
    (tmp_path / "seg").mkdir()
    segmenter = _image_to_image(tmp_path / "seg", 1, softmax=True)
    assert main(["attribute", segmenter, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "seg_run"), "--no-pictures"]) == 0
    report = json.loads((tmp_path / "seg_run" / "report.json").read_text())
    assert report["target"] == "segment" and report["target_detail"]["layout"] == "class maps [N, C, H, W] (3 classes)"


def test_an_empty_region_says_it_fell_back_to_the_top_value(tmp_path, capsys):
    """sinanz's gap locator (hunt 36): its response map stayed below 0.5 everywhere, and the run said
    "the region of 1 value(s) with values > 0.5" of a value of 0.3. Where the region is empty the
    target is the top value, and the console line and the label say so. Oracle: the map by hand
    (a Clip to [0, 1] of a convolution whose bias decides), and completeness against onnxruntime."""
    rng = np.random.default_rng(4)
    weights = {"w": (rng.normal(size=(1, 1, 3, 3)) * 0.01).astype(np.float32), "b": np.array([0.3], np.float32),
               "lo": np.array(0.0, np.float32), "hi": np.array(1.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])], weights)
    x = np.zeros((2, 1, 8, 8), np.float32)
    x[0, 0, 2:4, 2:4] = 3.0  # ~0.3 + small: below 0.5 everywhere
    x[1, 0, 2:6, 2:6] = 40.0  # raises a patch above 0.5
    np.savez(tmp_path / "x.npz", x=x)
    y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y[0].max() < 0.5 < y[1].max()
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--no-pictures"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "where that region is empty (example(s) [0]), the top value alone" in line
    detail = json.loads((tmp_path / "out" / "report.json").read_text())["target_detail"]
    assert detail["fell_back_to_top"] == [0] and detail["mask_size"][0] == 1 and detail["mask_size"][1] == int((y[1] > 0.5).sum())
    attributions = np.load(tmp_path / "out" / "attributions.npz")["x"]
    y0 = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": np.zeros_like(x)})[0]
    top = np.unravel_index(y[0].argmax(), y[0].shape)
    assert np.isclose(attributions[0].sum(dtype=np.float64), y[0][top] - y0[0][top], rtol=1e-4, atol=1e-6)
    np.savez(tmp_path / "one.npz", x=x[:1])
    assert main(["attribute", path, "-i", str(tmp_path / "one.npz"), "-o", str(tmp_path / "one"), "--no-pictures"]) == 0
    assert "the top value: the predicted region (values > 0.5 (the map lies in [0, 1])) is empty" in \
        capsys.readouterr().out.splitlines()[0]
