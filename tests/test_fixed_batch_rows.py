"""An export that fixes its batch (tf2onnx's [1, 1960] keyword spotter) given several rows: `run`,
`verify` and the CLI feed them in passes of the fixed size, as the attribution methods always did.
Before, verify and the CLI refused a CSV of several recordings ("axis 0 must be 1")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from onnx_attr.app.cli import main
from onnx_attr.errors import InputError

from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(11)
W = (RNG.standard_normal((4, 3)) * 3).astype(np.float32)
X = (RNG.standard_normal((3, 4)) * 40).astype(np.float32)  # three rows, unnormalised


def _fixed(batch: int = 1, tail=None):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    outputs = [("y", FLOAT, [batch, 3])]
    if tail is not None:
        nodes.append(tail)
        outputs.append((tail.output[0], FLOAT, []))
    return make_model(nodes, [("x", FLOAT, [batch, 4])], outputs, {"w": W})


@pytest.mark.parametrize("batch", [1, 2])
def test_rows_run_and_verify_in_passes_of_the_fixed_batch(batch):
    proto = _fixed(batch)
    model = onnx_attr.load(proto)
    # oracle: onnxruntime, one pass of the fixed size at a time (three rows: the last pass is padded)
    padded = np.concatenate([X, X[-1:].repeat(batch * 2 - 3 if batch == 2 else 0, 0)])
    want = np.concatenate([ort_run(proto, {"x": padded[i:i + batch]})[0] for i in range(0, len(padded), batch)])[:3]
    np.testing.assert_allclose(model.run(X)[0].numpy(), want, rtol=1e-6, atol=1e-4)
    report = model.verify(X)
    assert report.passed and report.outputs[0].shape == [3, 3] and "passes" in report.notes[-1]


def test_a_wrong_import_still_fails_verify_in_passes():
    model = onnx_attr.load(_fixed())
    weight = next(t for t in [*model.module.parameters(), *model.module.buffers()] if t.shape == (4, 3))
    with torch.no_grad():
        weight[2, 1] += 0.01  # our module 1% off on one weight; onnxruntime runs the file
    report = model.verify(X)
    want = np.abs(X[:, 2] * 0.01 * (X @ W)[:, 1].__gt__(0)).max()  # by hand: where row's y[1] is not clipped
    assert not report.passed
    np.testing.assert_allclose(report.outputs[0].max_abs, want, rtol=1e-3)


def test_an_output_without_the_rows_is_a_clear_error():
    model = onnx_attr.load(_fixed(tail=helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)))
    with pytest.raises(InputError, match="fixes its batch at 1 and output 'total'"):
        model.run(X)


def test_the_cli_explains_a_csv_of_several_rows(tmp_path):
    import onnx

    onnx.save(_fixed(), tmp_path / "m.onnx")
    (tmp_path / "rows.csv").write_text("a,b,c,d\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in X) + "\n")
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verify"]["passed"]
    got = np.load(tmp_path / "out" / "attributions.npz")["x"]
    # DeepLift by hand from a zero baseline: x_i w_it · relu(z_t) / z_t for each row's predicted class t
    z = X.astype(np.float64) @ W
    t = np.maximum(z, 0).argmax(1)
    want = X * W[:, t].T * (np.maximum(z[np.arange(3), t], 0) / z[np.arange(3), t])[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def _feature_vector(declared):
    """skl2onnx's form of one example (pysjtu's SVM): a static feature vector [4], unsqueezed to one
    row, probabilities [1, 3]. The 4 is one example's size, not 4 examples. skl2onnx 1.6 declared
    that SVM's outputs with the input's size ([400, 26] for [1, 325]): `declared`."""
    axes = np.array([0], np.int64)
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["row"]), helper.make_node("MatMul", ["row", "w"], ["y"])]
    return make_model(nodes, [("x", FLOAT, [4])], [("y", FLOAT, declared)], initializers={"w": W, "axes": axes},
                      opset=17)


@pytest.mark.parametrize("declared", [[1, 3], [4, 3]])
def test_a_static_feature_vector_is_one_example(tmp_path, declared):
    """Before, every form was refused: without --batch-axis "the output has no axis of 4 examples",
    with --batch-axis 0 "not the batch", each message naming the other as the way out."""
    import onnx

    x = X[0]
    model = onnx_attr.load(_feature_vector(declared))
    got = onnx_attr.DeepLift(model).attribute(x, target=(0, 2))
    np.testing.assert_allclose(np.asarray(got), x * W[:, 2], rtol=1e-5)  # linear: x · w from a zero baseline
    onnx.save(_feature_vector(declared), tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "-q"]) == 0
    predicted = int(np.argmax(x.astype(np.float64) @ W))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "attributions.npz")["x"], x * W[:, predicted], rtol=1e-5)


def test_rows_of_a_dynamically_quantized_model_run_alone_in_run_verify_and_the_cli(tmp_path):
    """A dynamic quantization's scale is the whole batch's, so two rows in one pass change each other
    (rapid-table-det's edge detector: row 0's map moved by its full range). The methods run each row
    alone, as production does; `run`, `verify` and the CLI's default target did not: the CLI explained
    row 0 at a target read off the mixed pass (14% off its attributions alone). Oracle: onnxruntime
    on each row alone."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 4])], [("y", FLOAT, ["n", 3])], {"w": W * 0.002}, opset=13)
    rows = np.stack([np.abs(X[0]) + 1, np.abs(X[1]) * 50]).astype(np.float32)  # the second widens the scale
    alone = np.concatenate([ort_run(proto, {"x": rows[i:i + 1]})[0] for i in range(2)])
    assert np.abs(ort_run(proto, {"x": rows})[0][0] - alone[0]).max() > 1e-3  # a shared pass mixes them
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(model.run({"x": rows})[0].numpy(), alone, rtol=1e-5, atol=1e-6)
    report = model.verify({"x": rows})
    assert report.passed and any("each row runs alone" in n for n in report.notes)
    outs = []
    for name, x in (("one", rows[:1]), ("two", rows)):
        np.savez(tmp_path / f"{name}.npz", x=x)
        assert main(["attribute", _saved(proto, tmp_path),
                     "-i", str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / name), "--no-pictures", "-q"]) == 0
        outs.append((json.loads((tmp_path / name / "report.json").read_text())["target"],
                     np.load(tmp_path / name / "attributions.npz")["x"]))
    assert outs[1][0][0] == outs[0][0][0] == int(alone[0].argmax())
    np.testing.assert_allclose(outs[1][1][0], outs[0][1][0], rtol=1e-5, atol=1e-7)


def _saved(proto, folder) -> str:
    import onnx

    path = folder / "model.onnx"
    if not path.exists():
        onnx.save(proto, path)
    return str(path)


def test_an_output_declared_at_the_wrong_rank_joins_on_the_axis_that_holds_the_rows(tmp_path):
    """ddddocr 1.6's CTC scores: declared [1, seqlen], computed time-major [T, 1, C]. The passes join
    on the one axis holding the fixed batch in every pass, not the declared axis 0 (which holds T);
    before, two rows were refused. Oracle: onnxruntime, one row at a time; DeepLift on both rows
    against DeepLift on each alone."""
    W3 = (RNG.standard_normal((2, 3)) * 3).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]),  # [1, 2, 5] -> [5, 1, 2]
             helper.make_node("MatMul", ["t", "w"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 2, 5])], [("y", FLOAT, [1, "seqlen"])], {"w": W3})
    x = (RNG.standard_normal((2, 2, 5)) * 40).astype(np.float32)
    model = onnx_attr.load(proto)
    got = model.run(x)[0].numpy()
    want = np.concatenate([ort_run(proto, {"x": x[i:i + 1]})[0] for i in range(2)], axis=1)
    assert got.shape == (5, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    target = onnx_attr.Target(index=(3, 1), batch_axis=1)  # time step 3, class 1 (the output is time-major)
    both = onnx_attr.DeepLift(model).attribute(x, target=target)
    alone = np.concatenate([onnx_attr.DeepLift(model).attribute(x[i:i + 1], target=target) for i in range(2)])
    np.testing.assert_allclose(both, alone, rtol=1e-6, atol=1e-6)
    assert np.abs(alone).max() > 0


def test_a_time_major_output_declaring_the_fixed_batch_on_axis_1_joins_there(tmp_path, capsys):
    """easyhtr's line reader (hunt 36): input [1, 1, 48, W], output declared [T, 1, 43] with T free.
    Two rows were refused ("no axis of 1 rows to join"), and `inspect` named axis 0, the time axis,
    as the batch: the declared 1 on axis 1 is the fixed batch. Oracle: onnxruntime one row at a time;
    the CLI's attributions per example add up to onnxruntime's change of the picked (step, class)."""
    rng = np.random.default_rng(36)
    W3 = np.abs(rng.standard_normal((2, 3)) * 3).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]),  # [1, 2, T] -> [T, 1, 2]
             helper.make_node("MatMul", ["t", "w"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 2, "T"])], [("y", FLOAT, ["steps", 1, 3])], {"w": W3})
    x = (np.abs(rng.standard_normal((2, 2, 6))) * 40).astype(np.float32)  # positive: every step's Relu alive
    model = onnx_attr.load(proto)
    from onnx_attr.importing.batch import output_batch_axes

    assert output_batch_axes(model.inputs, model.outputs) == [1]
    got = model.run(x)[0].numpy()
    want = np.concatenate([ort_run(proto, {"x": x[i:i + 1]})[0] for i in range(2)], axis=1)
    assert got.shape == (6, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    assert main(["inspect", _saved(proto, tmp_path)]) == 0
    assert "(batch on axis 1, as declared)" in capsys.readouterr().out
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "out"
    assert main(["attribute", _saved(proto, tmp_path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "-q",
                 "--target", "4,2", "--baseline", "zeros"]) == 0
    attributions = np.load(out / "attributions.npz")["x"]
    for i in range(2):
        change = ort_run(proto, {"x": x[i:i + 1]})[0][4, 0, 2] - ort_run(proto, {"x": 0 * x[i:i + 1]})[0][4, 0, 2]
        assert np.isclose(attributions[i].sum(dtype=np.float64), change, rtol=1e-5, atol=1e-4)
    assert np.abs(attributions).max() > 0


def test_a_batch_of_one_baked_into_reshapes_under_a_batch_symbol_runs_a_row_a_pass(tmp_path):
    """hunt 37: BlazeFace (tf2onnx, batch 1) with its batch dim edited to a symbol; its Reshapes keep a
    literal 1, so two images come out as one interleaved anchor list [1, 2A, k]. The CLI explained both
    as one example (one anchor, the second image's attributions all 0). The rows are now run one per
    pass: each example gets its own target and attributions. Oracles: onnxruntime on each image alone
    (its top anchor, and f(x) - f(0) for completeness)."""
    k = (RNG.standard_normal((1, 2, 1, 1)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"]),                       # [N, 1, 4, 4]
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),  # [N, 4, 4, 1]
             helper.make_node("Reshape", ["t", "s1"], ["a"]),                 # [1, N*16, 1]: the baked 1
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Transpose", ["p"], ["q"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["q", "s1"], ["b"]),                 # [1, N*4, 1]
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]           # rows interleaved by scale
    proto = make_model(nodes, [("x", FLOAT, ["N", 2, 4, 4])], [("y", FLOAT, ["N", 20, 1])],
                       initializers={"k": k, "s1": np.array([1, -1, 1], np.int64)})
    path = tmp_path / "baked.onnx"
    path.write_bytes(proto.SerializeToString())
    x = (RNG.standard_normal((2, 2, 4, 4)) * 20).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "out"
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "-q", "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    attributions = np.load(out / "attributions.npz")["x"]
    for i in range(2):
        (alone,) = ort_run(proto, {"x": x[i:i + 1]})
        (zeros,) = ort_run(proto, {"x": np.zeros_like(x[i:i + 1])})
        top = np.unravel_index(alone[0].argmax(), alone[0].shape)
        assert tuple(report["target"][i]) == tuple(int(t) for t in top)
        change = float(alone[0][top]) - float(zeros[0][top])
        assert abs(change) > 1 and float(attributions[i].astype(np.float64).sum()) == pytest.approx(change, rel=1e-5)


def test_rows_concatenated_into_one_attention_stay_one_example():
    """The other side of the rule above: rows reshaped into one sequence [1, N·L, D] that attends over
    itself also grow the output threefold, but move each row's values; such rows change each other and
    stay one whole example. Oracle: onnxruntime on one row against the same row among others."""
    from onnx_attr.importing.batch import batch_axes, probe

    nodes = [helper.make_node("Reshape", ["x", "s"], ["q"]),                  # [1, N*4, 3]
             helper.make_node("Transpose", ["q"], ["k"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "k"], ["a"]),
             helper.make_node("Softmax", ["a"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "q"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["N", 4, 3])], [("y", FLOAT, ["N", 4, 3])],
                       initializers={"s": np.array([1, -1, 3], np.int64)})
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    (alone,) = ort_run(proto, {"x": x[:1]})
    (both,) = ort_run(proto, {"x": x})
    assert not np.allclose(both[0, :4], alone[0], atol=1e-4)  # the rows do change each other
    model = onnx_attr.load(proto, strip_final_activation=False)
    tensors = [torch.from_numpy(x)]
    assert not probe(model, tensors, batch_axes(model.inputs, tensors)).stackable


def test_a_delayed_frame_is_one_example(tmp_path):
    """dfnstream's DeepFilterNet (hunt 38): one frame [512], no batch, whose output starts with samples the
    state holds and gives this frame's later. The probe halved rows 1.. and compared row 0 of the outputs,
    which came from the state and stayed: the frame was read as 512 examples (delta of each, 4.5e-2
    relative). Halving row 0 and comparing the rest now shows the rows mix: one example. Oracle:
    onnxruntime's frame and new state, the waveform's length along itself by hand, completeness."""
    import onnxruntime as ort

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1), helper.make_node("Tanh", ["m"], ["g"]),
             helper.make_node("Slice", ["x", "zero", "cut"], ["head"]), helper.make_node("Mul", ["head", "g"], ["gained"]),
             helper.make_node("Concat", ["state", "gained"], ["enhanced_audio_frame"], axis=0),
             helper.make_node("Slice", ["x", "cut", "end"], ["next_state"])]
    consts = {"zero": np.array([0], np.int64), "cut": np.array([448], np.int64), "end": np.array([512], np.int64)}
    proto = make_model(nodes, [("x", FLOAT, [512]), ("state", FLOAT, [64])], [("enhanced_audio_frame", FLOAT, [512]), ("next_state", FLOAT, [64])],
                       consts, opset=13)
    path = tmp_path / "frame.onnx"
    path.write_bytes(proto.SerializeToString())
    x = (np.sin(np.arange(512) / 7) * 0.5 + 0.2).astype(np.float32)
    state = (RNG.standard_normal(64) * 0.3).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x, state=state)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["convergence_delta"]) == 1 and report["target"] == "embedding"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, y0 = (session.run(None, {"x": v, "state": state})[0].astype(np.float64) for v in (x, np.zeros_like(x)))
    direction = y / np.linalg.norm(y)
    found = np.load(tmp_path / "out" / "attributions.npz")["x"]
    np.testing.assert_allclose(found.astype(np.float64).sum(), (y - y0) @ direction, rtol=1e-4)
