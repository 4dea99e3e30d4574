"""`--baseline auto` on raw pixels a graph normalises itself (tf2onnx's Keras x/127.5 − 1, an OCR net's
(x − mean)/std per channel): the baseline is the value those first affine steps map to 0, not black, so
black pixels (glasses, text strokes) are attributed (hunt 32: 0.1% of the change to the strokes).

Oracle: onnxruntime at the input and at the reference computed here by hand from the graph's
constants, and the completeness identity."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_attr.app.cli import main

RNG = np.random.default_rng(71)


def _net(tmp_path, normalise: str):
    """pixels [N, 3, 16, 16] (NCHW) or [N, 16, 16, 3] (NHWC) -> normalisation -> Conv -> Relu -> sum, one value."""
    nhwc = normalise == "per channel, NHWC"
    nodes, inits = [], {"w": (RNG.normal(size=(4, 3, 3, 3)) * 0.3).astype(np.float32),
                        "axes": np.array([1, 2, 3], np.int64)}
    x = "x"
    if normalise == "x/127.5 - 1":
        nodes += [helper.make_node("Div", ["x", "k"], ["s"]), helper.make_node("Sub", ["s", "one"], ["n"])]
        inits.update(k=np.array(127.5, np.float32), one=np.array(1.0, np.float32))
        x = "n"
    elif nhwc:
        nodes += [helper.make_node("Sub", ["x", "mean"], ["c"]), helper.make_node("Mul", ["c", "inv_std"], ["n"]),
                  helper.make_node("Transpose", ["n"], ["t"], perm=[0, 3, 1, 2])]
        inits.update(mean=np.array([123.7, 116.3, 103.5], np.float32),
                     inv_std=(1 / np.array([58.4, 57.1, 57.4])).astype(np.float32))
        x = "t"
    nodes += [helper.make_node("Conv", [x, "w"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"]),
              helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0)]
    shape = ["N", 16, 16, 3] if nhwc else ["N", 3, 16, 16]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "net.onnx"
    path.write_bytes(proto.SerializeToString())
    x = RNG.uniform(150, 255, size=(1, 16, 16, 3) if nhwc else (1, 3, 16, 16)).astype(np.float32)
    if nhwc:
        x[:, 5:9, 2:12, :] = 0  # black glasses
    else:
        x[:, :, 5:9, 2:12] = 0
    return path, x


def _run(tmp_path, path, x, *extra):
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "-q", "--no-pictures",
                 *extra]) == 0
    return json.loads((out / "report.json").read_text()), np.load(out / "attributions.npz")["x"].astype(np.float64)


@pytest.mark.parametrize("normalise, zero", [("x/127.5 - 1", 127.5),
                                             ("per channel, NHWC", np.array([123.7, 116.3, 103.5], np.float32))])
def test_raw_pixels_the_graph_normalises_are_explained_against_its_zero(tmp_path, normalise, zero):
    path, x = _net(tmp_path, normalise)
    report, found = _run(tmp_path, path, x)
    assert report["baseline_used"] == "graph zeros" and "black" in report["baseline_note"]
    reference = np.broadcast_to(np.asarray(zero, np.float32), x.shape).astype(np.float32).copy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    change = session.run(None, {"x": x})[0] - session.run(None, {"x": reference})[0]
    np.testing.assert_allclose(found.sum(), change.sum(), rtol=1e-4)
    black = x == 0
    assert abs(found[black].sum()) > 0.05 * abs(found).sum()  # the glasses count
    report, found = _run(tmp_path, path, x, "--baseline", "zeros")  # black, as asked
    assert report["baseline_used"] == "zeros" and np.all(found[black] == 0)


@pytest.mark.parametrize("case", ["no normalisation in the graph", "values in [0, 1]"])
def test_elsewhere_auto_keeps_zeros(tmp_path, case):
    path, x = _net(tmp_path, "none" if case.startswith("no") else "x/127.5 - 1")
    if case == "values in [0, 1]":
        x = x / 255
    report, _ = _run(tmp_path, path, x)
    assert report["baseline_used"] == "zeros" and "baseline_note" not in report


def test_the_dataset_job_takes_the_same_reference(tmp_path):
    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results

    path, x = _net(tmp_path, "x/127.5 - 1")
    np.savez(tmp_path / "x.npz", x=np.concatenate([x, x[:, :, ::-1]]))
    attribute_dataset(str(path), str(tmp_path / "x.npz"), str(tmp_path / "ds"), quiet=True)
    table = read_results(tmp_path / "ds")
    found = attribution_array(table, "attributions").reshape(2, -1).sum(1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    both = np.concatenate([x, x[:, :, ::-1]])
    change = session.run(None, {"x": both})[0] - session.run(None, {"x": np.full_like(both, 127.5)})[0]
    np.testing.assert_allclose(found, change, rtol=1e-4)
