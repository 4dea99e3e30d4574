"""Small fixes found by the real-exports benchmark: the CLI's default target on outputs of
rank > 2, and a clear error when no input can be attributed. Oracle: onnxruntime on the file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_attr.cli import main


def _save(tmp_path, nodes, inputs, outputs, weights, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


def _conv_map(tmp_path) -> str:
    """[N, 3, 6, 6] -> Conv -> Relu -> [N, 2, 6, 6]: an output of rank 4 batched on axis 0."""
    rng = np.random.default_rng(0)
    weights = {"w": (rng.normal(size=(2, 3, 3, 3)) * 0.05).astype(np.float32),
               "b": np.array([3.0, -2.0], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])], weights)


def _sequence_head(tmp_path) -> str:
    """[N, 4, 5] -> MatMul -> [N, 4, 3]: per-position scores (rank 3), as token classifiers give."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3])],
                 {"w": rng.normal(size=(5, 3)).astype(np.float32) * 10}, name="seq.onnx")


@pytest.mark.parametrize("make, shape, scale, method", [
    (_conv_map, (3, 3, 6, 6), 255.0, "deeplift"),
    (_sequence_head, (4, 4, 5), 10.0, "deeplift"),
    (_sequence_head, (2, 4, 5), 10.0, "integratedgradients"),
])
def test_default_target_of_a_rank_above_2_output_is_each_examples_largest_value(tmp_path, capsys, make, shape,
                                                                               scale, method):
    path = make(tmp_path)
    x = (np.random.default_rng(2).uniform(size=shape) * scale).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "run"
    assert main(["attribute", path, "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures",
                 "--method", method]) == 0
    report = json.loads((out / "report.json").read_text())
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    y0 = session.run(None, {"x": np.zeros_like(x[:1])})[0][0]
    expected = [list(np.unravel_index(int(row.argmax()), row.shape)) for row in y]
    assert report["target"] == expected
    assert report["target_source"] == "the largest value of the output (argmax over all its elements)"
    with np.load(out / "attributions.npz", allow_pickle=False) as data:
        sums = data["x"].reshape(len(x), -1).astype(np.float64).sum(1)
    change = np.array([y[i][tuple(t)] - y0[tuple(t)] for i, t in enumerate(expected)], np.float64)
    tolerance = 1e-4 * np.abs(change).max() if method == "deeplift" else 1e-2 * np.abs(change).max()
    np.testing.assert_allclose(sums, change, atol=tolerance)
