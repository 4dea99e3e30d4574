"""A model not defined at zero (a min-max normalisation of its input, as efficientword-net ships)
still gets explained by default: `--baseline auto` sees the non-finite output at zeros and blurs
each example instead, and says so. Oracles: scipy's Gaussian filter for the blur, onnxruntime's
outputs at the input and at the blurred baseline for completeness."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model
from onnx_attr.app.cli import main
from onnx_attr.methods.blur import MIN_BLURRED_SIZE, blurred

RNG = np.random.default_rng(11)


def test_the_blur_is_scipys_gaussian_along_each_long_axis():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = (RNG.standard_normal((3, 2, 40, 24)) * 300 + 50).astype(np.float32)  # unnormalised magnitudes
    ours = blurred(x, batch_axis=0)
    expected = x.astype(np.float64)
    for axis in (2, 3):  # the channel axis (2 < MIN_BLURRED_SIZE) and the batch stay
        sigma = 0.1 * x.shape[axis]
        expected = ndimage.gaussian_filter1d(expected, sigma, axis=axis, mode="nearest", radius=int(np.ceil(3 * sigma)))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-3)
    assert ours.dtype == np.float32


def test_each_example_is_blurred_alone_inside_its_own_range():
    x = np.stack([RNG.uniform(2.0, 3.0, (MIN_BLURRED_SIZE * 4,)), RNG.uniform(-900, -800, (MIN_BLURRED_SIZE * 4,))])
    out = blurred(x, batch_axis=0)
    for row, b in zip(x, out):
        assert row.min() <= b.min() and b.max() <= row.max()  # weighted means of the example's own values
        assert b.std() > 0  # not a constant: a min-max normalisation stays defined
    np.testing.assert_array_equal(blurred(x[1:], batch_axis=0)[0], out[1])
    time_major = blurred(np.ascontiguousarray(x.T), batch_axis=1)  # the batch on axis 1
    np.testing.assert_allclose(time_major.T, out, rtol=1e-6)


def test_ids_and_tensors_keep_their_kind():
    ids = np.arange(40).reshape(1, 40)
    assert blurred(ids) is ids
    t = torch.randn(1, 16, dtype=torch.float64)
    assert isinstance(blurred(t), torch.Tensor) and blurred(t).dtype == torch.float64


def minmax_model(quantized: bool = False):
    """x [N, 1, 12, 10] -> (x - min) / (max - min) over each example -> Conv -> Relu -> Flatten ->
    MatMul -> [N, 3]: NaN wherever the example is constant (zeros included). `quantized` puts a
    QuantizeLinear/DequantizeLinear pair after the division (as a QDQ quantizer does): the NaN is
    then rounded to a finite value before the output, but not before DeepLift's reference pass."""
    qdq = [helper.make_node("QuantizeLinear", ["ratio", "scale", "zero"], ["q"]),
           helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["unit"])] if quantized else [
        helper.make_node("Identity", ["ratio"], ["unit"])]
    nodes = [helper.make_node("ReduceMin", ["x"], ["low"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("ReduceMax", ["x"], ["high"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Sub", ["x", "low"], ["shifted"]),
             helper.make_node("Sub", ["high", "low"], ["span"]),
             helper.make_node("Div", ["shifted", "span"], ["ratio"]),
             *qdq,
             helper.make_node("Conv", ["unit", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["n", 1, 12, 10])], [("y", FLOAT, ["n", 3])],
                      {"w": RNG.standard_normal((4, 1, 3, 3)).astype(np.float32),
                       "fc": (RNG.standard_normal((480, 3)) * 0.1).astype(np.float32),
                       "scale": np.array(1 / 255, np.float32), "zero": np.array(0, np.uint8)}, opset=13)


@pytest.fixture(params=[False, True], ids=["float", "qdq"])
def minmax(tmp_path, request):
    path = tmp_path / "minmax.onnx"
    path.write_bytes(minmax_model(request.param).SerializeToString())
    x = (RNG.standard_normal((2, 1, 12, 10)) * 20 - 60).astype(np.float32)  # log powers in dB
    np.savez(tmp_path / "x.npz", x=x)
    return path, x


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_cli_blurs_where_zeros_are_outside_the_models_domain(minmax, tmp_path, capsys):
    path, x = minmax
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--quiet",
                 "--target", "1"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline"] == "auto" and report["baseline_used"] == "blur" and "domain" in report["baseline_note"]
    assert "baseline blur" in capsys.readouterr().out
    attributions = np.load(tmp_path / "out" / "attributions.npz")["x"]
    assert np.isfinite(attributions).all()
    y, y0 = _ort(path, x)[:, 1], _ort(path, blurred(x, 0))[:, 1]  # completeness against onnxruntime
    np.testing.assert_allclose(attributions.reshape(2, -1).sum(1), y - y0, rtol=1e-4, atol=1e-3 * np.abs(y).max())


def test_zeros_asked_for_stay_zeros_and_say_why_they_fail(minmax, tmp_path, capsys):
    path, _ = minmax
    # written all the same, but not a success: NaN attributions are not an explanation
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--quiet",
                 "--target", "1", "--baseline", "zeros"]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline_used"] == "zeros" and "baseline_note" not in report
    assert "outside the model's domain" in report["non_finite"] and "--baseline blur" in report["non_finite"]


def test_a_model_defined_at_zero_keeps_zeros(tmp_path):
    from conftest import SAMPLES

    assert main(["attribute", str(SAMPLES / "breast_cancer_mlp.onnx"), "-i", str(SAMPLES / "breast_cancer_mlp_inputs.npz"),
                 "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["baseline_used"] == "zeros"


def test_the_dataset_job_blurs_every_row_there(minmax, tmp_path):
    from onnx_attr.app.dataset_job import attribute_dataset, read_results
    from onnx_attr.app.dataset_job import attribution_array

    path, x = minmax
    summary = attribute_dataset(str(path), str(tmp_path / "x.npz"), str(tmp_path / "ds"), target="1", quiet=True)
    assert summary["error_rows_computed"] == 0
    table = read_results(tmp_path / "ds")
    assert set(table.column("status").to_pylist()) == {"ok"}
    attributions = attribution_array(table, "attributions").reshape(2, -1)
    y, y0 = _ort(path, x)[:, 1], _ort(path, blurred(x, 0))[:, 1]
    np.testing.assert_allclose(attributions.sum(1), y - y0, rtol=1e-4, atol=1e-3 * np.abs(y).max())


def test_the_api_takes_a_blurred_baseline(minmax):
    path, x = minmax
    model = onnx_attr.load(str(path))
    a, delta = onnx_attr.DeepLift(model).attribute(x, baselines=onnx_attr.blurred(x), target=1,
                                                   return_convergence_delta=True)
    assert np.isfinite(np.asarray(a)).all() and float(np.abs(np.asarray(delta)).max()) < 1e-3


def test_integrated_gradients_blurs_where_only_the_output_at_zeros_is_not_finite(tmp_path):
    """A noise level read through Log (a diffusion denoiser's sigma): IG's path points stop short of
    α = 0, so its attributions stay finite at a zero baseline and only its delta meets Log(0)."""
    from onnx import TensorProto, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Log", ["sigma"], ["ls"]),
         helper.make_node("Unsqueeze", ["ls", "one"], ["ls2"]), helper.make_node("Add", ["xw", "ls2"], ["y"])],
        "sigma", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                  helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(RNG.standard_normal((16, 1)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([1], np.int64), "one")])
    path = tmp_path / "sigma.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    np.savez(tmp_path / "x.npz", x=(RNG.standard_normal((2, 16)) * 50).astype(np.float32),
             sigma=np.array([0.7, 80.0], np.float32))
    out = tmp_path / "out"
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--quiet",
                 "--method", "integratedgradients", "--no-pictures"]) == 0
    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, whatever a report holds
    report = json.loads(text)
    assert report["baseline_used"] == "blur" and report["max_relative_delta"] <= 1e-3


def test_reports_are_strict_json(tmp_path):
    from onnx_attr.fileio import write_json

    write_json(tmp_path / "r.json", {"delta": float("nan"), "rows": [1.0, float("inf"), {"x": -float("inf")}]})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "delta": None, "rows": [1.0, None, {"x": None}]}


def test_a_long_axis_blurs_by_fft_as_the_direct_convolution_does():
    """A CTC decoder's [18, 18385] class scores: σ = 1838, a kernel of 11031 taps; conv1d's unfolded
    copy asked for 29 GB (the CLI's auto baseline exited 2, out of memory). The FFT path gives the
    direct convolution's values (numpy's, edges replicated) in memory linear in the axis."""
    from onnx_attr.methods.blur import blurred

    rng = np.random.default_rng(7)
    x = rng.random((18, 18385)).astype(np.float32)
    out = blurred(x, batch_axis=None, sigma_fraction=0.1)
    assert out.shape == x.shape and out.dtype == x.dtype
    sigma1, sigma0 = 0.1 * 18385, 0.1 * 18  # axis 0 (18 long, no batch given) is blurred too: both by hand

    def gaussian(values, sigma):
        radius = min(int(np.ceil(3 * sigma)), len(values) - 1)
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        return np.convolve(np.pad(values, radius, mode="edge"), taps / taps.sum(), mode="valid")

    by_rows = np.stack([gaussian(r.astype(np.float64), sigma1) for r in np.apply_along_axis(
        lambda c: gaussian(c, sigma0), 0, x.astype(np.float64))])
    np.testing.assert_allclose(out, by_rows, rtol=1e-5, atol=1e-6)


def _threshold_mask(width):
    """atspm-detector's sibling attention (hunt 20): a Softmax of the input below a constant masks the
    logits it attends with. At zeros the Softmax is uniform, so the comparison goes the other way than
    at the input; the Where it decides is a StepSelect (select_fusion.py), complete all the same."""
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1), helper.make_node("LessOrEqual", ["p", "thr"], ["low"]),
             helper.make_node("Where", ["low", "neg", "x"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["att"], axis=-1), helper.make_node("MatMul", ["att", "w"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["n", width])], [("y", FLOAT, ["n", 3])],
                      {"thr": np.array(0.5 / width, np.float32), "neg": np.array(-1e4, np.float32),
                       "w": (RNG.standard_normal((width, 3)) * 5).astype(np.float32)}, opset=13)


def _peak_pick(width):
    """swift-f0's decode: the value at the Softmax's ArgMax (plus a per-position offset). At zeros the
    Softmax is uniform and its ArgMax the first position; at a rising input, the last. An index has no
    multiplier: DeepLift refuses the call where the pick moves and the target depends on it."""
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1),
             helper.make_node("ArgMax", ["p"], ["peak"], axis=1, keepdims=1, name="peak"),
             helper.make_node("Add", ["x", "offset"], ["shifted"]),
             helper.make_node("GatherElements", ["shifted", "peak"], ["picked"], axis=1),
             helper.make_node("Mul", ["picked", "w"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["n", width])], [("y", FLOAT, ["n", 3])],
                      {"offset": (np.arange(width) * 0.1).astype(np.float32).reshape(1, width),
                       "w": (RNG.standard_normal((1, 3)) * 5).astype(np.float32)}, opset=13)


def test_a_single_comparison_masking_is_explained_at_zeros(tmp_path):
    """Without the logic, the masked attention is one StepSelect: DeepLift at the zeros themselves,
    complete against onnxruntime at the input and at zeros."""
    path = tmp_path / "mask1.onnx"
    path.write_bytes(_threshold_mask(16).SerializeToString())
    x = np.stack([np.linspace(-6, 6, 16), np.linspace(4, -3, 16)]).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures", "--target", "0"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "DeepLift" and report["baseline_used"] == "zeros"
    attributions = np.load(tmp_path / "out" / "attributions.npz")["x"]
    change = _ort(path, x)[:, 0] - _ort(path, np.zeros_like(x))[:, 0]
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-4, atol=1e-4)


def test_a_comparison_the_zeros_take_otherwise_is_explained_at_the_blurred_input(tmp_path):
    """`--baseline auto` blurs where DeepLift refuses the zeros for comparisons they take the other way
    than the input (here the blurred ramp peaks where the ramp does); before, the CLI fell back to
    FeatureAblation. An input too short to blur keeps that fallback: its blur is the input itself, and
    its attributions would all be 0. Oracle: onnxruntime at the input and at the blurred reference."""
    path = tmp_path / "peak.onnx"
    path.write_bytes(_peak_pick(16).SerializeToString())
    x = np.stack([np.linspace(-6, 6, 16), np.linspace(4, -3, 16)]).astype(np.float32)  # blurred: the same peaks
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures", "--target", "0"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "DeepLift" and report["baseline_used"] == "blur"
    assert "'peak'" in report["baseline_note"] and "compare" in report["baseline_note"]
    attributions = np.load(tmp_path / "out" / "attributions.npz")["x"]
    change = _ort(path, x)[:, 0] - _ort(path, blurred(x, 0))[:, 0]
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-4, atol=1e-4)
    assert np.abs(attributions).max() > 0
    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results

    attribute_dataset(str(path), str(tmp_path / "x.npz"), str(tmp_path / "ds"), target="0", quiet=True)
    table = read_results(tmp_path / "ds")  # the dataset job decides the same
    assert set(table.column("status").to_pylist()) == {"ok"}
    np.testing.assert_allclose(attribution_array(table, "attributions").reshape(2, -1).sum(1), change, rtol=1e-4,
                               atol=1e-4)
    short = tmp_path / "short.onnx"
    short.write_bytes(_peak_pick(4).SerializeToString())
    np.savez(tmp_path / "s.npz", x=x[:, ::4].copy())
    assert main(["attribute", str(short), "-i", str(tmp_path / "s.npz"), "-o", str(tmp_path / "s"), "-q",
                 "--no-pictures", "--target", "0"]) == 0
    assert json.loads((tmp_path / "s" / "report.json").read_text())["method"] == "FeatureAblation"


def _fails_at_zero():
    """y = x·W + Σ LSTM(a sequence of 4·[max x > 0] steps): at zeros the sequence is empty and the
    recurrence has no step to run (kokoro's zero speed predicting no frames fails the same way)."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0), helper.make_node("Greater", ["top", "zero"], ["on"]),
             helper.make_node("Cast", ["on"], ["n1"], to=TensorProto.INT64), helper.make_node("Mul", ["n1", "four"], ["n"]),
             helper.make_node("Range", ["start", "n", "step"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["rf", "shape"], ["seq"]),
             helper.make_node("LSTM", ["seq", "lw", "lr"], ["", "h"], hidden_size=2),
             helper.make_node("ReduceSum", ["h"], ["extra"], keepdims=0),
             helper.make_node("MatMul", ["x", "w"], ["hx"]), helper.make_node("Add", ["hx", "extra"], ["y"])]
    consts = {"zero": np.array(0, np.float32), "four": np.array(4, np.int64), "start": np.array(0, np.int64),
              "step": np.array(1, np.int64), "shape": np.array([-1, 1, 1], np.int64),
              "lw": (RNG.standard_normal((1, 8, 1)) * 0.5).astype(np.float32),
              "lr": (RNG.standard_normal((1, 8, 2)) * 0.5).astype(np.float32),
              "w": (RNG.standard_normal((16, 3)) * 5).astype(np.float32)}
    return make_model(nodes, [("x", FLOAT, [1, 16])], [("y", FLOAT, [1, 3])], consts, opset=13)


@pytest.mark.parametrize("method", ["deeplift", "integratedgradients"])
def test_a_forward_that_fails_at_zeros_is_explained_at_the_blurred_input(tmp_path, method):
    """The API names the baseline as where the forward fails; the CLI's `--baseline auto` takes the blurred
    input instead (before: exit 2 with the input's shapes in the message; IG's path fails on its way to
    zeros, with no word of the baseline: hunt 31). Oracle: onnxruntime."""
    path = tmp_path / "length.onnx"
    path.write_bytes(_fails_at_zero().SerializeToString())
    x = np.linspace(-2, 5, 16, dtype=np.float32)[None]
    explainer = {"deeplift": onnx_attr.DeepLift, "integratedgradients": onnx_attr.IntegratedGradients}[method]
    with pytest.raises(onnx_attr.BaselineForwardError, match="at the baseline"):
        explainer(onnx_attr.load(str(path))).attribute(torch.from_numpy(x), target=0)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures", "--target", "0", "--method", method]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == {"deeplift": "DeepLift", "integratedgradients": "IntegratedGradients"}[method]
    assert report["baseline_used"] == "blur" and "forward fails" in report["baseline_note"]
    attributions = np.load(tmp_path / "out" / "attributions.npz")["x"]
    change = _ort(path, x)[:, 0] - _ort(path, blurred(x, 0))[:, 0]
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-4 if method == "deeplift" else 2e-2, atol=1e-4)


def test_a_forward_that_fails_at_zeros_beside_token_ids_takes_the_blur_too(tmp_path):
    """Kokoro's int8 TTS (hunt 31): token ids, a style vector and a speed whose zero gives its duration LSTM
    no frame. DeepLift's pass that looks up the baseline ids' embeddings runs the whole model at the
    baseline first, and its failure was reported as the input's (exit 2). Oracle: onnxruntime with the
    ids kept and the floats at the blurred input."""
    rng = np.random.default_rng(44)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),  # [1, T, 4]
             helper.make_node("ReduceMean", ["e", "one"], ["pooled"], keepdims=1),  # [1, 1, 4]
             helper.make_node("Mul", ["speed", "three"], ["frames_f"]), helper.make_node("Floor", ["frames_f"], ["fl"]),
             helper.make_node("Cast", ["fl"], ["frames"], to=TensorProto.INT64),
             helper.make_node("Concat", ["frames", "one", "one"], ["reps"], axis=0),
             helper.make_node("Tile", ["pooled", "reps"], ["seq"]),  # [frames, 1, 4]: empty at speed 0
             helper.make_node("Add", ["seq", "style"], ["styled"]),
             helper.make_node("LSTM", ["styled", "lw", "lr"], ["", "h"], hidden_size=3),
             helper.make_node("ReduceSum", ["h", "last"], ["y"], keepdims=0)]
    consts = {"table": (rng.standard_normal((10, 4)) * 2).astype(np.float32), "one": np.array([1], np.int64),
              "three": np.array(3, np.float32), "last": np.array([-1], np.int64),
              "lw": (rng.standard_normal((1, 12, 4)) * 0.5).astype(np.float32),
              "lr": (rng.standard_normal((1, 12, 3)) * 0.5).astype(np.float32)}
    proto = make_model(nodes, [("ids", TensorProto.INT64, [1, "T"]), ("style", FLOAT, [1, 4]), ("speed", FLOAT, [1])],
                       [("y", FLOAT, [1, 1])], consts, opset=18)
    path = tmp_path / "tts.onnx"
    path.write_bytes(proto.SerializeToString())
    feeds = {"ids": np.array([[1, 4, 2, 7, 3, 5]], np.int64), "style": np.array([[0.3, -0.2, 0.5, 0.1]], np.float32),
             "speed": np.array([1.0], np.float32)}
    np.savez(tmp_path / "x.npz", **feeds)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "DeepLift" and report["baseline_used"] == "blur"
    found = np.load(tmp_path / "out" / "attributions.npz")
    from onnx_attr.app.attribute_job import domain_reference

    reference, _ = domain_reference(onnx_attr.load(str(path)), dict(feeds), {})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    change = session.run(None, feeds)[0] - session.run(None, {**feeds, **reference})[0]
    total = sum(found[k].sum() for k in found.files)
    np.testing.assert_allclose(total, change.sum(), rtol=1e-4, atol=1e-5)
    assert abs(change.sum()) > 1e-2 and reference["speed"][0] > 0  # the blur keeps a speed with frames to run


def ctc_score_model():
    """probabilities [N, T, C] -> the mean of each step's best probability over the steps whose best
    class is not the blank (0): a CTC decoder's score (ppocr-vectron's ctc_decode). At zeros every
    step's argmax is the blank (ties take the first), and at the blur too (the blank dominates each
    step's average), so the score is 0/0 at both of --baseline auto's references."""
    nodes = [helper.make_node("ReduceMax", ["p"], ["best"], axes=[2], keepdims=0),
             helper.make_node("ArgMax", ["p"], ["ids"], axis=2, keepdims=0),
             helper.make_node("Equal", ["ids", "blank"], ["is_blank"]),
             helper.make_node("Not", ["is_blank"], ["kept_bool"]),
             helper.make_node("Cast", ["kept_bool"], ["kept"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["best", "kept"], ["kept_best"]),
             helper.make_node("ReduceSum", ["kept_best", "axes"], ["total"], keepdims=0),
             helper.make_node("ReduceSum", ["kept", "axes"], ["count"], keepdims=0),
             helper.make_node("Div", ["total", "count"], ["score"])]
    return make_model(nodes, [("p", FLOAT, ["n", 24, 5])], [("score", FLOAT, ["n"])],
                      {"blank": np.array(0, np.int64), "axes": np.array([1], np.int64)}, opset=13)


def test_the_cli_falls_back_where_zeros_and_the_blur_leave_the_output_undefined(tmp_path):
    proto = ctc_score_model()
    path = tmp_path / "ctc.onnx"
    path.write_bytes(proto.SerializeToString())
    p = np.full((2, 24, 5), 0.1, np.float32)
    p[:, :, 0] = 0.6  # the blank, but for two characters of each example
    p[0, 5, 0], p[0, 5, 2], p[0, 17, 0], p[0, 17, 3] = 0.05, 0.65, 0.05, 0.65
    p[1, 9, 0], p[1, 9, 1], p[1, 10, 0], p[1, 10, 4] = 0.0, 0.7, 0.05, 0.65
    np.savez(tmp_path / "p.npz", p=p)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, y0, yb = (run.run(None, {"p": v})[0] for v in (p, np.zeros_like(p), blurred(p, 0)))
    assert np.isfinite(y).all() and np.isnan(y0).all() and np.isnan(yb).all()
    assert main(["attribute", str(path), "-i", str(tmp_path / "p.npz"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "FeatureAblation"
    assert "not finite at zeros nor at the blurred input" in report["fallback_reason"]
    attributions = np.load(tmp_path / "out" / "attributions.npz")["p"]
    assert attributions.shape == p.shape and np.isfinite(attributions).all() and np.abs(attributions).max() > 0
    # a baseline asked for is kept, and its failure said: no method swapped behind the user's back
    assert main(["attribute", str(path), "-i", str(tmp_path / "p.npz"), "-o", str(tmp_path / "blur"), "--quiet",
                 "--baseline", "blur"]) == 0
    report = json.loads((tmp_path / "blur" / "report.json").read_text())
    assert report["method"] == "DeepLift" and "fallback_reason" not in report
    assert any("not finite" in w for w in report["warnings"])


def test_an_output_not_finite_at_the_input_is_refused_before_any_pass(tmp_path, capsys):
    """Kokoro int8's imported audio was NaN throughout (hunt 31): the CLI picked index 0 of an argmax over NaN
    and ran FeatureAblation for minutes, writing NaN attributions. The target's value at the input is now
    checked first: the run stops with a clear error (exit 2) and writes nothing."""
    nodes = [helper.make_node("Log", ["x"], ["l"]), helper.make_node("MatMul", ["l", "w"], ["y"])]
    path = tmp_path / "log.onnx"
    path.write_bytes(make_model(nodes, [("x", FLOAT, ["N", 4])], [("y", FLOAT, ["N", 3])],
                                {"w": RNG.standard_normal((4, 3)).astype(np.float32)}, opset=13).SerializeToString())
    x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 2.0, 3.0, 4.0]], np.float32)  # log(-1): NaN in every value of row 1
    np.savez(tmp_path / "x.npz", x=x)
    for method in ("deeplift", "featureablation"):
        out = tmp_path / method
        assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--no-pictures",
                     "--method", method]) == 2
        said = capsys.readouterr().err
        assert "not finite at this input" in said and "the input itself" not in said  # x is finite: log's domain
        assert not (out / "report.json").exists()
    # an input of NaN (sweep 35's all-NaN image) is named as the cause
    np.savez(tmp_path / "nan.npz", x=np.where(np.eye(2, 4, dtype=bool), np.nan, 1.0).astype(np.float32))
    assert main(["attribute", str(path), "-i", str(tmp_path / "nan.npz"), "-o", str(tmp_path / "nan"),
                 "--no-pictures"]) == 2
    assert "the input itself is not: 'x' holds 2 NaN or infinite value(s) of 8" in capsys.readouterr().err
    np.savez(tmp_path / "ok.npz", x=x[:1])
    assert main(["attribute", str(path), "-i", str(tmp_path / "ok.npz"), "-o", str(tmp_path / "ok"), "-q",
                 "--no-pictures"]) == 0


def _log_sum_times_speed():
    """y = Σ log(x) · speed: undefined at x = 0 (the blur's case), speed [1] a scale no blur moves (Kokoro's)."""
    nodes = [helper.make_node("Log", ["x"], ["l"]), helper.make_node("ReduceSum", ["l"], ["s"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["s", "speed"], ["y"])]
    return make_model(nodes, [("x", FLOAT, [1, 16]), ("speed", FLOAT, [1])], [("y", FLOAT, [1, 1])], {}, opset=12)


def test_an_input_the_blur_cannot_move_goes_to_zero_or_is_said(tmp_path):
    """Kokoro (hunt 38): under the blur baseline its speed [1] was its own baseline, so its attribution was
    exactly 0 and nothing said so; speed sets the waveform's length. `--baseline auto` now takes such an
    input to zero where the model is defined there (said in the note), and `--baseline blur` asked for says
    that it leaves it as it is. Oracle: onnxruntime at the input and at the reference used."""
    path = tmp_path / "speed.onnx"
    path.write_bytes(_log_sum_times_speed().SerializeToString())
    x, speed = np.linspace(0.5, 4, 16, dtype=np.float32)[None], np.array([1.3], np.float32)
    np.savez(tmp_path / "x.npz", x=x, speed=speed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda a, s: float(session.run(None, {"x": a, "speed": s})[0][0, 0])  # noqa: E731
    for baseline in ("auto", "blur"):
        out = tmp_path / baseline
        assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "-q", "--no-pictures",
                     "--baseline", baseline]) == 0
        report = json.loads((out / "report.json").read_text())
        found = np.load(out / "attributions.npz")
        assert report["baseline_used"] == "blur" and "'speed'" in report["baseline_note"]
        reference_speed = np.zeros_like(speed) if baseline == "auto" else speed
        change = run(x, speed) - run(blurred(x, 0), reference_speed)
        total = float(found["x"].sum() + found["speed"].sum())
        np.testing.assert_allclose(total, change, rtol=1e-4)
        if baseline == "auto":  # speed moved 1.3 -> 0: its share is Σ log(blurred x) · 1.3 under the product rule
            assert "at zero" in report["baseline_note"] and abs(float(found["speed"].sum())) > 1.0
        else:
            assert "leaves ['speed'] as they are" in report["baseline_note"] and float(found["speed"].sum()) == 0.0


def test_a_perturbation_method_takes_the_blur_before_its_passes(tmp_path, monkeypatch):
    """Kokoro's fallback FeatureAblation (hunt 38) ran its blocks at zeros until the one that failed, then all
    of them again at the blur: 57 passes of 3 s, half wasted. Where the forward fails at zeros, the blur is
    taken before any pass: one call of the method. Oracle: onnxruntime at the input and at the blur."""
    from onnx_attr.methods.perturbation import FeatureAblation

    path = tmp_path / "length.onnx"
    path.write_bytes(_fails_at_zero().SerializeToString())
    x = np.linspace(-2, 5, 16, dtype=np.float32)[None]
    np.savez(tmp_path / "x.npz", x=x)
    calls = []
    original = FeatureAblation.attribute
    monkeypatch.setattr(FeatureAblation, "attribute", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures", "--target", "0", "--method", "featureablation", "--features", "4"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline_used"] == "blur" and "forward fails" in report["baseline_note"] and len(calls) == 1
    attributions = np.load(tmp_path / "out" / "attributions.npz")["x"]
    reference, y = blurred(x, 0), _ort(path, x)[0, 0]
    for block in range(4):  # each element holds its block's value: f(x) - f(x with the block at the blur)
        ablated = x.copy()
        ablated[0, 4 * block:4 * block + 4] = reference[0, 4 * block:4 * block + 4]
        np.testing.assert_allclose(attributions[0, 4 * block:4 * block + 4], y - _ort(path, ablated)[0, 0], rtol=1e-4,
                                   atol=1e-5)
