"""A top-level Scan is unrolled for DeepLift: it runs as many steps as its scan inputs are long, a
shape, so every point from the baseline to the input runs the same steps. Oracles: onnxruntime on
the original graph (the unrolled model's forward, and f(x) - f(baseline) for completeness), and a
by-hand recurrence."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from onnx_attr.app.cli import main

from conftest import FLOAT, INT64, make_model, ort_run


def framing_scan():
    """wespeaker's framing (onnx-asr): a state of the last hop concatenated with the next one, along
    the scan axis 1 of [batch, hops, hop], each frame scanned out on axis 1; then a Tanh energy."""
    body = helper.make_graph(
        [helper.make_node("Concat", ["prev", "curr"], ["frame"], axis=-1),
         helper.make_node("Slice", ["frame", "hop", "end", "last"], ["next"])], "body",
        [helper.make_tensor_value_info("prev", FLOAT, ["n", 3]), helper.make_tensor_value_info("curr", FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("next", FLOAT, ["n", 3]), helper.make_tensor_value_info("frame", FLOAT, ["n", 6])])
    nodes = [helper.make_node("Slice", ["x", "zero", "one", "one"], ["first"]),
             helper.make_node("Squeeze", ["first", "one"], ["state"]),
             helper.make_node("Scan", ["state", "x"], ["_", "frames"], body=body, num_scan_inputs=1,
                              scan_input_axes=[1], scan_output_axes=[1], name="framing"),
             helper.make_node("MatMul", ["frames", "w"], ["proj"]), helper.make_node("Tanh", ["proj"], ["y"])]
    rng = np.random.default_rng(3)
    return make_model(nodes, [("x", FLOAT, ["n", "t", 3])], [("y", FLOAT, ["n", "t", 4])], initializers={
        "zero": np.array([0], np.int64), "one": np.array([1], np.int64), "hop": np.array([3], np.int64),
        "end": np.array([2**62], np.int64), "last": np.array([-1], np.int64),
        "w": rng.standard_normal((6, 4)).astype(np.float32)})


def reversed_rnn_scan():
    """A time-major tanh RNN over two scan inputs [T, n, 3] (the batch on axis 1), the second read
    backwards, its outputs stacked backwards on the last axis: h <- tanh(h W + a_t + 2 b_t), y_t = h."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["hw"]), helper.make_node("Add", ["hw", "a_t"], ["s"]),
         helper.make_node("Mul", ["b_t", "two"], ["b2"]), helper.make_node("Add", ["s", "b2"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]), helper.make_node("Identity", ["h2"], ["y_t"])], "body",
        [helper.make_tensor_value_info(n, FLOAT, None) for n in ("h", "a_t", "b_t")],
        [helper.make_tensor_value_info(n, FLOAT, None) for n in ("h2", "y_t")])
    rng = np.random.default_rng(4)
    scan = helper.make_node("Scan", ["h0", "a", "b"], ["hn", "ys"], body=body, num_scan_inputs=2,
                            scan_input_axes=[0, 0], scan_input_directions=[0, 1], scan_output_axes=[-1],
                            scan_output_directions=[1], name="rnn")
    nodes = [helper.make_node("Mul", ["a", "zero"], ["z"]), helper.make_node("ReduceSum", ["z", "axis0"], ["h0"],
                                                                             keepdims=0), scan,
             helper.make_node("ReduceSum", ["ys", "axis_last"], ["y"], keepdims=0)]
    return make_model(nodes, [("a", FLOAT, [5, "n", 3]), ("b", FLOAT, [5, "n", 3])], [("y", FLOAT, ["n", 3])],
                      initializers={
        "W": (0.8 * rng.standard_normal((3, 3))).astype(np.float32), "two": np.array(2.0, np.float32),
        "zero": np.array(0.0, np.float32), "axis0": np.array([0], np.int64), "axis_last": np.array([-1], np.int64)})


def by_hand_rnn(proto, a, b):
    w = next(np.frombuffer(t.raw_data, np.float32).reshape(3, 3) for t in proto.graph.initializer if t.name == "W")
    h, ys = np.zeros(a.shape[1:]), []
    for t in range(len(a)):
        h = np.tanh(h @ w + a[t] + 2 * b[len(b) - 1 - t])
        ys.append(h)
    return np.stack(ys[::-1], -1).sum(-1)


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_a_framing_scan_is_unrolled_and_complete(scale):
    proto = framing_scan()
    x = (scale * np.random.default_rng(0).standard_normal((2, 7, 3))).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(x, target=(4, 2), return_convergence_delta=True)
    unrolled = dl.engine.model
    assert not any(n.op_type == "Scan" for n in unrolled.onnx_model.graph.node)
    np.testing.assert_allclose(unrolled.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-6)
    change = ort_run(proto, {"x": x})[0][:, 4, 2] - ort_run(proto, {"x": 0 * x})[0][:, 4, 2]
    np.testing.assert_allclose(attributions.sum((1, 2)), change, rtol=1e-4, atol=1e-6)
    assert np.abs(attributions[:, 5:]).max() == 0 and np.abs(attributions[:, :3]).max() == 0  # frame 4: hops 3, 4


def test_a_reversed_scan_over_two_inputs_is_unrolled_and_complete():
    proto = reversed_rnn_scan()
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 2, 3)).astype(np.float32), rng.standard_normal((5, 2, 3)).astype(np.float32)
    feeds = {"a": a, "b": b}
    np.testing.assert_allclose(ort_run(proto, feeds)[0], by_hand_rnn(proto, a, b), rtol=1e-5)
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    base = {"a": 0.5 * a, "b": -b}
    attributions = dl.attribute((a, b), baselines=(base["a"], base["b"]), target=1)
    change = ort_run(proto, feeds)[0][:, 1] - ort_run(proto, base)[0][:, 1]
    total = sum(t.sum((0, 2)) for t in attributions)  # per example, on the batch axis 1
    np.testing.assert_allclose(total, change, rtol=1e-4, atol=1e-6)
    assert not any(n.op_type == "Scan" for n in dl.engine.model.onnx_model.graph.node)
    np.testing.assert_allclose(dl.engine.model.run(feeds)[0].numpy(), by_hand_rnn(proto, a, b), rtol=1e-5)


def test_the_cli_explains_a_scan_with_deeplift(tmp_path):
    proto = framing_scan()
    path = tmp_path / "framing.onnx"
    path.write_bytes(proto.SerializeToString())
    x = np.random.default_rng(2).standard_normal((1, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out")]) == 0
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "DeepLift"  # not the fallback to FeatureAblation
