"""Ops that are linear in their data input (Resize in every mode, GridSample at a fixed grid,
DFT, STFT, Col2Im, RotaryEmbedding with constant caches): onnxruntime is the oracle for the forward, and DeepLift's
completeness on them is exact because its multiplier is their gradient."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import make_model, ort_run

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(11)


def resize(attrs, x_shape, out_shape, scales=None, sizes=None, roi=None, opset=19):
    inits = {"roi": np.asarray(roi if roi is not None else [], np.float32)}
    names = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.asarray(scales, np.float32)
        names.append("scales")
    else:
        inits["sizes"] = np.asarray(sizes, np.int64)
        if opset < 13:  # Resize-11's scales is not optional: an empty one stands for "given by sizes"
            inits["scales"] = np.zeros(0, np.float32)
        names += ["scales" if opset < 13 else "", "sizes"]
    return make_model([helper.make_node("Resize", names, ["y"], **attrs)], [("x", FLOAT, x_shape)],
                      [("y", FLOAT, out_shape)], initializers=inits, opset=opset)


CASES = {
    "cubic-antialias-down": (resize({"mode": "cubic", "antialias": 1}, [2, 1, 8, 8], [2, 1, 3, 5],
                                    sizes=[2, 1, 3, 5]), {"x": [2, 1, 8, 8]}),
    "linear-align-corners-up": (resize({"mode": "linear", "coordinate_transformation_mode": "align_corners"},
                                       [2, 2, 3, 4], [2, 2, 7, 6], scales=[1, 1, 2.4, 1.5]), {"x": [2, 2, 3, 4]}),
    "crop-and-resize-extrapolated": (resize({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                                             "extrapolation_value": 2.5, "axes": [2, 3]}, [2, 1, 5, 5], [2, 1, 4, 4],
                                            sizes=[4, 4], roi=[-0.2, 0.1, 0.9, 1.3]), {"x": [2, 1, 5, 5]}),
    "nearest-not-larger": (resize({"mode": "nearest", "keep_aspect_ratio_policy": "not_larger", "axes": [2, 3],
                                   "nearest_mode": "round_prefer_ceil"}, [2, 1, 4, 6], [2, 1, 5, 7],
                                  sizes=[5, 8]), {"x": [2, 1, 4, 6]}),
    # opsets 11-12 only: tf2onnx's nearest resize of TF's half_pixel_centers (onnx 1.6's backend data had one)
    "nearest-tf-half-pixel-down": (resize({"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
                                          [2, 1, 7, 6], [2, 1, 3, 4], sizes=[2, 1, 3, 4], opset=11), {"x": [2, 1, 7, 6]}),
    "nearest-tf-half-pixel-up": (resize({"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn",
                                         "nearest_mode": "floor"}, [2, 1, 3, 4], [2, 1, 7, 10],
                                        scales=[1, 1, 2.4, 2.5], opset=11), {"x": [2, 1, 3, 4]}),
    "gridsample-cubic-reflection": (make_model(
        [helper.make_node("GridSample", ["x", "grid"], ["y"], mode="cubic", padding_mode="reflection")],
        [("x", FLOAT, [2, 2, 5, 4])], [("y", FLOAT, [2, 2, 3, 3])], opset=20,
        initializers={"grid": RNG.uniform(-1.3, 1.3, (2, 3, 3, 2)).astype(np.float32)}), {"x": [2, 2, 5, 4]}),
    "dft-onesided": (make_model([helper.make_node("DFT", ["x", "", "axis"], ["y"], onesided=1)],
                                [("x", FLOAT, [2, 8, 1])], [("y", FLOAT, [2, 5, 2])], opset=20,
                                initializers={"axis": np.array(1, np.int64)}), {"x": [2, 8, 1]}),
    "stft-window": (make_model([helper.make_node("STFT", ["x", "step", "window"], ["y"])],
                               [("x", FLOAT, [2, 16, 1])], [("y", FLOAT, [2, 5, 3, 2])], opset=17,
                               initializers={"step": np.array(3, np.int64),
                                             "window": np.hanning(4).astype(np.float32)}), {"x": [2, 16, 1]}),
    # a real signal written [batch, samples], without its trailing 1 (OnnxScript: onnx-asr's whisper/nemo/kaldi
    # front-ends); onnxruntime takes it, and we unfolded the batch axis
    "stft-rank-2-signal": (make_model([helper.make_node("STFT", ["x", "step", "window"], ["y"])],
                                      [("x", FLOAT, [2, 64])], [("y", FLOAT, [2, 7, 9, 2])], opset=17,
                                      initializers={"step": np.array(8, np.int64),
                                                    "window": np.hanning(16).astype(np.float32)}), {"x": [2, 64]}),
    "col2im-pads-strides": (make_model([helper.make_node("Col2Im", ["x", "image", "block"], ["y"], strides=[2, 1],
                                                          pads=[1, 0, 0, 1], dilations=[1, 2])],
                                       [("x", FLOAT, [2, 6, 8])], [("y", FLOAT, [2, 1, 5, 5])], opset=18,
                                       initializers={"image": np.array([5, 5], np.int64),
                                                     "block": np.array([3, 2], np.int64)}), {"x": [2, 6, 8]}),
    "rotary-interleaved-positions": (make_model(
        [helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], interleaved=1, rotary_embedding_dim=4)],
        [("x", FLOAT, [2, 3, 4, 6])], [("y", FLOAT, [2, 3, 4, 6])], opset=23,
        initializers={"cos": np.cos(RNG.uniform(0, 6, (8, 2))).astype(np.float32),
                      "sin": np.sin(RNG.uniform(0, 6, (8, 2))).astype(np.float32),
                      "pos": RNG.integers(0, 8, (2, 4)).astype(np.int64)}), {"x": [2, 3, 4, 6]}),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_onnxruntime_and_deeplift_is_complete(name):
    model_proto, shapes = CASES[name]
    feeds = {k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    (expected,) = ort_run(model_proto, feeds)
    model = onnx_attr.load(model_proto, strip_final_activation=False)
    (got,) = model.run(feeds)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    target = tuple(0 for _ in expected.shape[1:])
    _, delta = onnx_attr.DeepLift(model).attribute(feeds["x"], target=target, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-4
