"""`onnx-attr attribute`: results written atomically, report complete, bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnx_attr
from onnx_attr.app.cli import main
from onnx_attr.importing.inputs import read_npz

from conftest import SAMPLES

DIGITS = str(SAMPLES / "digits_cnn.onnx")
DIGITS_INPUTS = str(SAMPLES / "digits_cnn_inputs.npz")
CANCER = str(SAMPLES / "breast_cancer_mlp.onnx")
CANCER_INPUTS = str(SAMPLES / "breast_cancer_mlp_inputs.npz")


def test_digits_main_job_writes_attributions_report_and_heatmaps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--target", "3", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert "attributions.npz" in files and "report.json" in files
    assert sum(f.startswith("heatmap_image_") and f.endswith(".png") for f in files) == 8
    report = json.loads((out / "report.json").read_text())
    assert report["final_activation"]["stripped"] is True and report["verify"]["passed"] is True
    assert report["target"] == 3 and set(report["versions"]) >= {"torch", "onnx", "onnxruntime", "onnx_attr"}
    from importlib.metadata import version

    assert report["versions"]["onnx2torch"] == version("onnx2torch")  # not "?"
    assert report["manifest"]["method"] == "deeplift" and report["manifest"]["target"] == "3"
    with np.load(out / "attributions.npz", allow_pickle=False) as data:
        attributions = data["image"]
    assert attributions.shape == (8, 1, 8, 8)
    # completeness against the imported model's own logits (verified against onnxruntime above)
    model = onnx_attr.load(DIGITS)
    x = read_npz(DIGITS_INPUTS, model.inputs)["image"]
    change = model.run(x)[0][:, 3].numpy() - model.run(np.zeros_like(x[:1]))[0][0, 3].numpy()
    np.testing.assert_allclose(attributions.reshape(8, -1).sum(1), change, rtol=1e-4, atol=1e-4)
    assert max(abs(d) for d in report["convergence_delta"]) < 1e-4
    assert "stripped: logits attributed" in capsys.readouterr().out


def test_default_target_is_the_predicted_class_and_mean_baseline(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--baseline", "mean", "--out", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = onnx_attr.load(DIGITS)
    predicted = model.run(read_npz(DIGITS_INPUTS, model.inputs))[0].argmax(1).tolist()
    assert report["target"] == predicted and report["target_source"] == "default for classes [N, C]: the predicted class (argmax)"


def test_sigmoid_head_and_keep_final_activation(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attribute", CANCER, "--input", CANCER_INPUTS, "--keep-final-activation", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["final_activation"]["op_type"] == "Sigmoid" and report["final_activation"]["stripped"] is False
    assert report["target"] is None  # a [N, 1] output needs none
    assert not any(f.startswith("heatmap") for f in report["files"])  # tabular input: no heatmap


def test_deepliftshap_with_a_baseline_distribution(tmp_path, capsys):
    base = tmp_path / "baselines.npz"
    x = np.load(DIGITS_INPUTS)["image"]
    np.savez(base, image=x[:3] * 0.5)
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--method", "deepliftshap", "--baseline", str(base),
                 "--target", "1", "--out", str(tmp_path / "shap")]) == 0


@pytest.mark.parametrize("extra,message", [
    (["--target", "10"], "out of range"),
    (["--target", "1,2"], "2 indices for 8 example"),
    (["--target", "1,2,3,4,5,6,7,8,9,0"], "10 indices for 8 example"),
    (["--target", "1:2"], "gives 2 indices; the output of shape [N, 10] takes 1"),
    (["--target", "x"], "is not a target form"),
    (["--baseline", "nope.txt"], "use auto, zeros, mean, blur"),
    (["--output-name", "missing"], "no output named"),
    (["--output-name", "1"], "is not an output name or an index below 1"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "attributions.npz").exists() and not (out / "report.json").exists()


def test_output_name_takes_an_index_too(tmp_path):
    """--output-name's help says "ONNX output name or index": 0 names the first output (it was refused
    as "no output named '0'"); a name that reads as a number is still a name first."""
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--output-name", "0", "--target", "3",
                 "--out", str(tmp_path / "run"), "--no-pictures"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["output"] == onnx_attr.load(DIGITS).outputs[0].name


def test_an_input_of_no_rows_exits_2(tmp_path, capsys):
    """An .npz of 0 examples said the model's output was empty, as for a detector that kept nothing."""
    empty = tmp_path / "empty.npz"
    np.savez(empty, image=np.load(DIGITS_INPUTS)["image"][:0])
    assert main(["attribute", DIGITS, "--input", str(empty), "--out", str(tmp_path / "run")]) == 2
    assert "holds no examples" in capsys.readouterr().err


def test_nan_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "nan.npz"
    x = np.load(DIGITS_INPUTS)["image"].copy()
    x[0, 0, 0, 0] = np.nan
    np.savez(bad, image=x)
    assert main(["attribute", DIGITS, "--input", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "NaN" in capsys.readouterr().err


def test_attributions_all_zero_are_said_so(tmp_path, capsys):
    """An input equal to its baseline (a decoder step whose start token and score are the zero
    baseline, hunt 27) gives attributions that are all exactly 0, complete with a delta of 0: the
    run says so and what to change, rather than passing the zeros off as an explanation."""
    zero = tmp_path / "zero.npz"
    np.savez(zero, image=np.zeros_like(np.load(DIGITS_INPUTS)["image"][:2]))
    out = tmp_path / "run"
    assert main(["attribute", DIGITS, "--input", str(zero), "--baseline", "zeros", "--out", str(out)]) == 0
    assert "every attribution is exactly 0" in capsys.readouterr().out
    assert any("every attribution is exactly 0" in w for w in json.loads((out / "report.json").read_text())["warnings"])
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--out", str(tmp_path / "real")]) == 0
    assert "every attribution" not in capsys.readouterr().out


def test_lime_zeroed_by_its_lasso_is_not_blamed_on_the_baseline(tmp_path, capsys):
    """A target that moves little (0.03 on nudenet's detector in sweep 35) against Lime's Lasso penalty
    (alpha 0.01, Captum's default) gets every coefficient shrunk to 0, though the value does move
    between the input and the baseline: the warning names the Lasso and what to use, not the baseline.
    Oracle: the linear model's own change by hand, and KernelShap on the same call, which is not 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((8, 1), 4e-3, np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "small",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = np.ones((1, 8), np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert float((x @ w)[0, 0]) == pytest.approx(0.032)  # f(x) - f(0): the value moves
    out = tmp_path / "lime"
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--method", "lime",
                 "--no-pictures"]) == 0
    printed = capsys.readouterr().out
    assert not np.load(out / "attributions.npz")["x"].any()
    assert "Lime's Lasso" in printed and "same at the input and at the baseline" not in printed
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "shap"), "--method",
                 "kernelshap", "--no-pictures"]) == 0
    assert np.load(tmp_path / "shap" / "attributions.npz")["x"].any() and "every attribution" not in capsys.readouterr().out


def test_missing_parent_folders_are_created(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--out", str(out)]) == 0
    assert (out / "report.json").exists()


def test_out_path_under_a_file_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--out", str(blocker / "run")]) == 2
    assert "a file stands where a folder is needed" in capsys.readouterr().err
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--out", str(blocker)]) == 2


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_integrated_gradients_from_the_cli(tmp_path, capsys):
    out = tmp_path / "ig"
    assert main(["attribute", CANCER, "--input", CANCER_INPUTS, "--method", "integratedgradients",
                 "--baseline", "mean", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "IntegratedGradients" and report["max_relative_delta"] < 1e-2


def test_each_delta_is_reported_with_what_it_measures(tmp_path, capsys):
    """DeepLift's delta is ~0 (exact), IG's shrinks with --n-steps (approximate), GradientShap's is one
    draw's (sampled, large by design): the report and the summary say which, so a sampled delta is
    not read as a completeness miss."""
    def run(method, *extra):
        out = tmp_path / f"{method}{len(extra)}"
        assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--method", method, "--out", str(out),
                     "--no-pictures", *extra]) == 0
        return json.loads((out / "report.json").read_text()), capsys.readouterr().out

    exact, printed = run("deeplift")
    assert exact["delta_meaning"].startswith("exact") and exact["max_relative_delta"] < 1e-4
    assert "note: that delta is" not in printed
    coarse, printed = run("integratedgradients", "--n-steps", "4")
    fine, _ = run("integratedgradients", "--n-steps", "64")
    assert coarse["delta_meaning"].startswith("approximate") and "note: that delta is approximate" in printed
    assert fine["max_relative_delta"] < coarse["max_relative_delta"] / 10
    np.savez(tmp_path / "bg.npz", image=np.load(DIGITS_INPUTS)["image"][:4])
    sampled, printed = run("gradientshap", "--baseline", str(tmp_path / "bg.npz"))
    assert sampled["delta_meaning"].startswith("sampled") and "note: that delta is sampled" in printed
    assert sampled["max_relative_delta"] > 1e-2 and not sampled["warnings"]


def _many_inputs(folder, count):
    x = np.load(DIGITS_INPUTS)["image"]
    folder.mkdir()
    for i in range(count):
        np.savez(folder / f"batch_{i:03d}.npz", image=x[i % 8: i % 8 + 1])
    return folder


def test_folder_of_inputs_gives_one_result_each_and_resume_skips_finished(tmp_path, capsys):
    inputs = _many_inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    assert main(["attribute", DIGITS, "--input", str(inputs), "--target", "2", "--out", str(out)]) == 0
    folders = ["batch_000.npz", "batch_001.npz", "batch_002.npz", "batch_003.npz"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [*folders, "index.json"]
    stamp = (out / "batch_001.npz" / "report.json").stat().st_mtime_ns
    (out / "batch_002.npz" / "report.json").unlink()  # as if interrupted before it finished
    assert main(["attribute", DIGITS, "--input", str(tmp_path / "in" / "*.npz"), "--target", "2", "--out", str(out),
                 "--resume", "--json"]) == 0
    summary = json.loads((out / "index.json").read_text())
    assert summary["computed"] == ["batch_002.npz"] and len(summary["skipped_as_finished"]) == 3
    assert (out / "batch_001.npz" / "report.json").stat().st_mtime_ns == stamp  # not redone


def _run_until_killed(command, out, finished_at_least, total):
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and \
            len(list(out.glob("*/report.json"))) < finished_at_least:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("kills", [pytest.param(3, id="3-kills"), pytest.param(22, id="22-kills", marks=pytest.mark.slow)])
def test_killed_run_resumes_bit_identical_to_an_uninterrupted_run(tmp_path, kills):
    """Kill the folder run again and again (SIGKILL: no clean-up runs), resume each time: every result
    is bit-identical to an uninterrupted run's, and no temporary file is left behind."""
    import subprocess
    import sys

    total = kills * 2 + 6
    inputs = _many_inputs(tmp_path / "in", total)
    out, clean = tmp_path / "out", tmp_path / "clean"
    common = ["attribute", DIGITS, "--input", str(inputs), "--target", "1", "--batch-size", "1"]
    assert main([*common, "--out", str(clean)]) == 0
    command = [sys.executable, "-m", "onnx_attr.app.cli", *common, "--out", str(out)]
    for k in range(kills):
        _run_until_killed(command + (["--resume"] if k else []), out, 2 * (k + 1), total)
        # a kill can leave a hidden temporary beside a result, never a half-written result file
        visible = [p for p in out.glob("*/*") if not p.name.startswith(".")]
        assert all(p.name in ("report.json", "attributions.npz") or p.suffix == ".png" for p in visible)
    finished_before = len(list(out.glob("*/report.json")))
    assert finished_before < total, "the runs must be killed midway for this test to mean anything"
    assert subprocess.run(command + ["--resume"], capture_output=True).returncode == 0
    summary = json.loads((out / "index.json").read_text())
    assert len(summary["skipped_as_finished"]) >= finished_before - 1 and len(summary["inputs"]) == total
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    for i in range(total):
        name = f"batch_{i:03d}.npz"
        assert (out / name / "attributions.npz").read_bytes() == (clean / name / "attributions.npz").read_bytes()
        got, want = (json.loads((d / name / "report.json").read_text()) for d in (out, clean))
        assert got["convergence_delta"] == want["convergence_delta"] and got["manifest"] == want["manifest"]


def test_strict_turns_a_delta_warning_into_exit_1(tmp_path, capsys):
    from onnx import helper

    from conftest import FLOAT, make_model

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Mod", ["r", "period"], ["c"], name="sawtooth", fmod=1),
             helper.make_node("ReduceSum", ["c", "axis"], ["p"], keepdims=1)]
    model_path = tmp_path / "sawtooth.onnx"
    model_path.write_bytes(make_model(nodes, [("x", FLOAT, ["n", 3])], [("p", FLOAT, ["n", 1])],
                                      opset=13, initializers={"axis": np.array([1], np.int64),
                                                             "period": np.array(2.5, np.float32)}).SerializeToString())
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.array([[1.0, 2.0, 3.0]], np.float32))
    base = ["attribute", str(model_path), "--input", str(inputs), "--gradient-fallback"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert "warning: convergence delta above" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "b"), "--strict"]) == 1


def test_one_sequence_of_frames_is_never_cut_into_passes(tmp_path, capsys):
    """A model that convolves one [T, F] sequence along its axis 0 (madmom's onset and beat nets):
    axis 0 is time, not examples. 40 frames with the default --batch-size 16 once ran as three
    "examples" of 16, 16 and 8 frames (wrong attributions, or a 2-frame tail too short for the
    kernel). Oracle: the API's DeepLift on the whole sequence, and completeness."""
    from onnx import helper

    from conftest import FLOAT, make_model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
             helper.make_node("Unsqueeze", ["t", "zero"], ["u"]),
             helper.make_node("Conv", ["u", "w"], ["c"], kernel_shape=[7]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["y"], axes=[2], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, ["frames", 5])], [("y", FLOAT, [1, 3])],
                       {"w": rng.standard_normal((3, 5, 7)).astype(np.float32), "zero": np.array([0], np.int64)},
                       opset=13)
    path = tmp_path / "frames.onnx"
    path.write_bytes(proto.SerializeToString())
    x = (rng.standard_normal((40, 5)) * 50).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--target", "0,1", "--baseline", "zeros", "--no-pictures"]) == 0
    got = np.load(tmp_path / "out" / "attributions.npz")["x"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["convergence_delta"]) == 1  # one example
    want = onnx_attr.DeepLift(onnx_attr.load(str(path))).attribute({"x": x}, {"x": np.zeros_like(x)}, target=(0, 1))["x"]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
    model = onnx_attr.load(str(path))
    change = float(model.run({"x": x})[0][0, 1] - model.run({"x": np.zeros_like(x)})[0][0, 1])
    assert abs(float(got.sum()) - change) <= 1e-4 * max(1.0, abs(change))


def _linear_image_model(tmp_path, shape=(3, 24, 20)):
    """y = W · flatten(x) + b, two outputs, over an unnormalised image: a perturbation method's value for a
    block of elements is Σ_block w·(x - x0), by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    size = int(np.prod(shape))
    w = rng.standard_normal((size, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"])], "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "b")])
    path = tmp_path / "lin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = (rng.random((2, *shape)) * 255).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    return path, x, w


@pytest.mark.parametrize("method", ["featureablation", "shapleyvaluesampling", "kernelshap", "neuronfeatureablation"])
def test_cli_perturbation_methods_cut_large_inputs_into_blocks(tmp_path, capsys, method):
    """An input of more elements per example than --features (default 256) is explained over at most
    that many contiguous blocks (square patches through the channels), not one forward per element;
    on a linear model each block's value is Σ_block w·x by hand (zero baseline), shared by its elements,
    and the report says how many blocks. --features all gives one feature per element."""
    from onnx_attr.methods.perturbation import block_groups

    path, x, w = _linear_image_model(tmp_path)
    out = tmp_path / method
    layer = ["--layer", "y"] if method.startswith("neuron") else []  # the neuron: element 1 of the Gemm's output
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--method", method,
                 "--target", "1", "--no-pictures", *layer]) == 0
    report = json.loads((out / "report.json").read_text())
    ids = block_groups(x.shape[1:], 256).numpy()[0]
    assert report["blocks_per_input"] == {"x": int(ids.max()) + 1} and ids.max() + 1 <= 256
    assert f"'x' into {int(ids.max()) + 1}" in capsys.readouterr().out  # said: every element holds its block's value
    assert ids.max() + 1 >= 64  # patches of an image, not a handful of stripes
    assert report["manifest"]["options"]["features"] == 256
    got = np.load(out / "attributions.npz")["x"]
    contribution = (x.reshape(2, -1) * w[:, 1]).reshape(x.shape)
    for row in range(2):
        per_block = np.bincount(ids.ravel(), contribution[row].ravel())
        expected = per_block[ids]
        if method == "kernelshap":  # a fit from 25 samples: one coefficient per block, shared by its elements
            first = np.zeros(int(ids.max()) + 1)
            first[ids.ravel()] = got[row].ravel()
            np.testing.assert_array_equal(got[row], first[ids])
            assert np.isfinite(got[row]).all()
        else:
            # each value a difference of two float32 forwards of magnitude up to Σ|w·x|: rounded to ulps of that
            np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=4e-7 * np.abs(contribution[row]).sum())
    if method == "featureablation":
        (tmp_path / "small").mkdir()
        small, xs, ws = _linear_image_model(tmp_path / "small", (2, 6, 5))
        assert main(["attribute", str(small), "-i", str(tmp_path / "small" / "x.npz"), "-o", str(tmp_path / "all"),
                     "--method", method, "--target", "0", "--features", "all", "--no-pictures"]) == 0
        np.testing.assert_allclose(np.load(tmp_path / "all" / "attributions.npz")["x"],
                                   xs * ws[:, 0].reshape(xs.shape[1:]), rtol=1e-4, atol=1e-3)
        assert "blocks_per_input" not in json.loads((tmp_path / "all" / "report.json").read_text())
        assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "bad"),
                     "--method", method, "--features", "0"]) == 2
        assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "bad"),
                     "--features", "16"]) == 2  # deeplift takes no --features


def test_attributions_are_kept_when_onnxruntime_cannot_run_the_file(tmp_path, capsys, monkeypatch):
    """onnxruntime refusing a file it wrote itself (a QOperator QLinearAdd with an int32 bias) or crashing
    on it (hunt 25): the attributions of the imported module are written, report.json says verify could
    not run and why, and the exit code is verify's (1), not a bad input's (2) with nothing written."""
    import onnx_attr.importing.verify as verify
    from onnx_attr.errors import ReferenceRuntimeError

    def refuses(*args, **kwargs):
        raise ReferenceRuntimeError("onnxruntime could not run the model, so it cannot be verified: [ONNXRuntimeError]")

    monkeypatch.setattr(verify, "run_onnxruntime", refuses)
    out = tmp_path / "run"
    assert main(["attribute", DIGITS, "--input", DIGITS_INPUTS, "--target", "3", "--out", str(out),
                 "--no-pictures"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["passed"] is False and "could not run the model" in report["verify"]["not_run"]
    assert np.load(out / "attributions.npz")["image"].shape == (8, 1, 8, 8)
    assert "verify against onnxruntime: NOT RUN (onnxruntime could not run" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["shapleyvaluesampling", "kernelshap"])
def test_a_state_batched_on_axis_1_beside_blocks_is_its_own_features(tmp_path, method):
    """The CLI's blocks skip an input batched off axis 0 (silero-vad's state [2, N, 128]); the Shapley
    and Lime methods then refused the mask by name as naming no features for it (sweep 35), with no way
    to give one. Left out of a mask by name, its elements are features of their own. Oracle: a linear
    model, Σx + Σstate: each state element's value is itself, each block of x its sum (zero baseline;
    exact for ShapleyValueSampling on a linear model)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceSum", ["x", "one"], ["sx"], keepdims=1),
             helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["st"], ["sf"], axis=1),
             helper.make_node("ReduceSum", ["sf", "one"], ["ss"], keepdims=1), helper.make_node("Add", ["sx", "ss"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 300]),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    rng = np.random.default_rng(0)
    x, s = rng.standard_normal((2, 300)).astype(np.float32), rng.standard_normal((2, 2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, s=s)
    out = tmp_path / method
    assert main(["attribute", str(path), "-i", str(tmp_path / "in.npz"), "-o", str(out), "--method", method,
                 "--no-pictures"]) == 0
    got = np.load(out / "attributions.npz")
    assert got["s"].shape == s.shape and np.isfinite(got["s"]).all()
    if method == "kernelshap":  # a fit from a few samples over 158 features: the shapes and a run, not values
        return
    np.testing.assert_allclose(got["s"], s, rtol=1e-4, atol=1e-4)
    pairs = x.reshape(2, 150, 2).sum(2)  # 300 elements in 150 blocks of 2
    np.testing.assert_allclose(got["x"], np.repeat(pairs, 2, axis=1), rtol=1e-4, atol=1e-4)


def test_baseline_mean_of_token_ids_is_refused_as_dataset_refuses_it(tmp_path, capsys):
    """`--baseline mean` on token ids averaged them and truncated the mean to ids no row holds (ids 3, 4, 6
    from rows 1 2 3 and 5 6 9), silently; `dataset` refused the same (sweep 35). Both refuse now."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
                               helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                              [numpy_helper.from_array(table, "table"),
                               numpy_helper.from_array(np.array([1, 2], np.int64), "axes")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    np.savez(tmp_path / "x.npz", ids=np.array([[1, 2, 3], [5, 6, 9]], np.int64))
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"),
                 "--baseline", "mean"]) == 2
    assert "['ids'] hold token ids" in capsys.readouterr().err
    assert not (tmp_path / "o" / "attributions.npz").exists()


@pytest.mark.parametrize("resume", [True, False])
def test_a_folder_runs_results_and_one_files_never_share_an_out(tmp_path, capsys, resume):
    """A folder run into OUT, then one file with --resume --method saliency into the same OUT, was accepted:
    Saliency's report.json beside DeepLift's index.json and folders (and the reverse), two runs' results
    mixed (sweep 35). Either order is refused, and what was there is kept byte for byte."""
    data = tmp_path / "data"
    data.mkdir()
    x = np.load(DIGITS_INPUTS)["image"]
    np.savez(data / "a.npz", image=x[:1])
    np.savez(data / "b.npz", image=x[1:2])
    extra = ["--resume", "--method", "saliency"] if resume else ["--method", "saliency"]
    for first, second, kept in ((data, data / "a.npz", "index.json"), (data / "a.npz", data, "report.json")):
        out = tmp_path / f"out_{kept}"
        assert main(["attribute", DIGITS, "-i", str(first), "-o", str(out), "--no-pictures", "-q"]) == 0
        before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        capsys.readouterr()
        assert main(["attribute", DIGITS, "-i", str(second), "-o", str(out), "--no-pictures", "-q", *extra]) == 2
        assert "never mixed" in capsys.readouterr().err
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("method, features", [("shapleyvaluesampling", "16"), ("featureablation", "all"),
                                              ("lime", "256")])
def test_a_long_perturbation_run_says_its_passes_before_it_runs(tmp_path, capsys, monkeypatch, method, features):
    """Sweep 35: ShapleyValueSampling's 6,400 passes ran 273 s with nothing said. The CLI now says how many
    passes a perturbation method will take where they would take long (here: any length), and that count is
    the copies of the batch the method evaluates: counted at the model's forward."""
    import re

    import onnx_attr.app.attribute_job as job
    from onnx_attr.importing.model import AttributableModel

    path, _, _ = _linear_image_model(tmp_path, (2, 6, 5))
    monkeypatch.setattr(job, "PASSES_NOTE_SECONDS", 0.0)
    monkeypatch.setattr(job, "PASSES_NOTE_MIN", 0)
    calls = []
    real = AttributableModel.__call__
    monkeypatch.setattr(AttributableModel, "__call__",  # the copies of the batch (two examples) each forward holds
                        lambda self, *a, **k: calls.append(len(a[0]) // 2) or real(self, *a, **k))
    before = []
    announce = job._Job._announce_passes

    def counted(self, *args):
        announce(self, *args)
        before.append(sum(calls))

    monkeypatch.setattr(job._Job, "_announce_passes", counted)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--method",
                 method, "--target", "0", "--features", features, "--no-pictures"]) == 0
    said = re.search(r"runs about ([\d,]+) forward passes here", capsys.readouterr().err)
    assert said is not None
    from onnx_attr.methods.perturbation import block_groups

    elements = 2 * 6 * 5
    cut = elements if features == "all" or elements <= int(features) else \
        int(block_groups((2, 6, 5), int(features)).max()) + 1
    expected = {"shapleyvaluesampling": 25 * cut + 1, "featureablation": cut + 1, "lime": 26}[method]
    assert int(said.group(1).replace(",", "")) == expected
    made = sum(calls) - before[0]  # the method's own copies, after the announcement's timed forward
    assert expected - 1 <= made <= expected + 1, (made, expected)


@pytest.mark.parametrize("method", ["neurondeeplift", "neuronfeatureablation", "neuronintegratedgradients"])
def test_a_neuron_method_names_its_layer_and_asks_for_the_neuron(tmp_path, capsys, method):
    """Sweep 35: without --target, NeuronFeatureAblation ran on no neuron and reported the model's output
    and its Softmax; NeuronDeepLift's error called the layer "the output". The neuron is asked for, naming
    the layer and the indices it takes; the report names the layer. Oracle: the neuron's value from a
    model cut there, by onnxruntime, against the sum of NeuronDeepLift's attributions."""
    import onnx
    import onnxruntime as ort

    common = ["attribute", DIGITS, "-i", DIGITS_INPUTS, "--method", method, "--layer", "relu_1", "--no-pictures"]
    for target, got in (([], "got none"), (["--target", "3"], "got 3")):
        assert main([*common, "-o", str(tmp_path / "bad"), *target]) == 2
        said = capsys.readouterr().err
        assert "one element of layer 'relu_1' [batch, 16, 4, 4]" in said and "--target 0,0,0" in said and got in said
        assert not (tmp_path / "bad" / "report.json").exists()
    assert main([*common, "-o", str(tmp_path / "ok"), "--target", "3,1,1", "-q"]) == 0
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["output"] == "relu_1" and report["final_activation"] is None
    if method == "neurondeeplift":
        cut = onnx.load(DIGITS)
        cut.graph.output[0].name = "relu_1"
        session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x = np.load(DIGITS_INPUTS)[name]
        neuron = session.run(["relu_1"], {name: x})[0][:, 3, 1, 1] - \
            session.run(["relu_1"], {name: np.zeros_like(x)})[0][:, 3, 1, 1]
        found = np.load(tmp_path / "ok" / "attributions.npz")
        np.testing.assert_allclose(found[found.files[0]].reshape(len(x), -1).sum(1), neuron, rtol=1e-4, atol=1e-5)


def test_the_fallbacks_own_blocks_count_in_its_pass_estimate():
    """Kokoro (hunt 38): the CLI's fallback FeatureAblation cuts its own blocks (at most 256 an input, fitted
    to its time budget on the first call: 18 there), but the estimate counted one pass per element (293 for
    38 made). The count now takes the explainer's own cut: by hand, min(elements, blocks) per input + 1."""
    from onnx import helper

    from conftest import FLOAT, make_model
    from onnx_attr.app.attribute_job import fallback_explainer, perturbation_passes

    nodes = [helper.make_node("ReduceSum", ["a"], ["sa"], keepdims=1), helper.make_node("ReduceSum", ["b"], ["sb"], keepdims=1),
             helper.make_node("Add", ["sa", "sb"], ["y"])]
    model = onnx_attr.load(make_model(nodes, [("a", FLOAT, ["N", 35]), ("b", FLOAT, ["N", 300])], [("y", FLOAT, ["N", 1])]))
    inputs = {"a": np.ones((1, 35), np.float32), "b": np.ones((1, 300), np.float32)}
    assert perturbation_passes("featureablation", fallback_explainer(model), None, inputs) == 35 + 256 + 1
    assert perturbation_passes("featureablation", fallback_explainer(model, fitted=18), None, inputs) == 18 + 18 + 1


def test_a_long_path_method_run_says_its_steps_before_it_runs(tmp_path, capsys, monkeypatch):
    """Kokoro (hunt 38): IntegratedGradients printed nothing for 300 s before it was stopped; its steps
    are said now, with a time from one timed forward, where they would take long (here: any length)."""
    import onnx_attr.app.attribute_job as job

    path, _, _ = _linear_image_model(tmp_path, (2, 6, 5))
    monkeypatch.setattr(job, "PASSES_NOTE_SECONDS", 0.0)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--method",
                 "integratedgradients", "--n-steps", "7", "--target", "0", "--no-pictures"]) == 0
    err = capsys.readouterr().err
    assert err.count("IntegratedGradients runs 7 steps here, a forward and a backward each") == 1
