"""Batch axes from the graph, held inputs, runtime Ifs specialised per call, IG on time-major
models: the patterns of the silero-vad and ddddocr exports as small graphs. Oracles: onnxruntime
for f(x) - f(x0) (completeness), and a slow IG that runs one path point of one example at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run
from onnx_attr.importing.batch import batch_axes
from onnx_attr.importing.specs import TensorSpec
from test_real_export_patterns import silero_if_model

RNG = np.random.default_rng(1818)


def spec(name, shape, dtype=np.float32):
    return TensorSpec(name, shape, np.dtype(dtype))


@pytest.mark.parametrize("shapes, expected", [
    ([("batch", "sequence"), (2, "batch", 128), ()], [0, 1, None]),  # silero op15: state batched on axis 1
    ([(None, None), (2, None, 128), ()], [0, 1, None]),  # silero spox: anonymous dims, one free axis
    ([("sequence_length", 576), (1, 1, 128), (1, 1, 128)], [0, None, None]),  # h/c: no batch
    ([(1, 576), (2, 1, 128)], [0, None]),  # openvino: fixed shapes, state without a batch
    ([(1, 3, 8, 8), (1, 10)], [0, 0]),  # a fixed batch of 1 on both
    ([(50, "batch", 40)], [1]),  # time-major, one input: the symbol named batch, not the fixed axis 0
    ([("T", "batch_size", 40), (7,)], [1, None]),  # named so, beside an input without it
    ([("n", 3), ("n", 5)], [0, 0]),
    # CRAFT's refiner: a map and its features, the batch baked in as 1, sharing their height and width
    ([(1, 2, "height", "width"), (1, 32, "height", "width")], [0, 0]),
    ([(1, 2, "length"), (1, 32, "length")], [0, 0]),  # one shared size: still not the batch
    ([(1, "N", 4), (1, "N", 3)], [1, 1]),  # a time-major step and its state: N on axis 1 is the batch
    # a beam-search decoder step (muggle-speech, hunt 27): tokens [1, L] beside encoder states [1, T, 256] and
    # their mask [1, 1, T], no symbol shared: the batch is baked in as 1 on all, their one free axis is time
    ([(1, "L"), (1, "T", 256), (1, 1, "T2"), ("s", 1)], [0, 0, 0, 0]),
])
def test_batch_axes_from_declared_shapes(shapes, expected):
    assert batch_axes([spec(f"i{k}", s) for k, s in enumerate(shapes)]) == expected


def _completeness(model, feeds, baselines, target_pick):
    """Σ attributions against onnxruntime's f(x) - f(x0), per example."""
    proto = model.reference_model
    high = target_pick(ort_run(proto, feeds)[0])
    low = target_pick(ort_run(proto, {**feeds, **baselines})[0])
    return high - low


@pytest.mark.parametrize("rate", [16000, 8000])
def test_deeplift_takes_the_branch_of_a_held_sample_rate_and_is_complete(rate):
    proto = silero_if_model()
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = (300 * RNG.standard_normal((1, 4))).astype(np.float32) / 100
    state = RNG.standard_normal((1, 3)).astype(np.float32)
    feeds = {"input": x, "state": state, "sr": np.array(rate, np.int64)}
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute({"input": x, "state": state}, additional_forward_args={"sr": feeds["sr"]},
                                       return_convergence_delta=True)
    change = _completeness(model, feeds, {"input": 0 * x, "state": 0 * state}, lambda o: o[:, 0])
    total = sum(a.reshape(1, -1).sum(1) for a in attributions.values())
    np.testing.assert_allclose(total, change, rtol=1e-4, atol=1e-6)
    assert abs(float(delta[0])) <= 1e-4 * max(abs(float(change[0])), 1e-3)
    assert dl.last_report["held_inputs"] == ["sr"]
    assert any("specialised" in n for n in dl.engine.model.notes)
    again = onnx_attr.DeepLift(model)
    again.attribute({"input": x, "state": state}, additional_forward_args={"sr": feeds["sr"]})
    assert again.engine.model is dl.engine.model  # one specialised model per condition value


def test_gradient_fallback_and_ig_on_the_if_model_raise_nothing_raw():
    model = onnx_attr.load(silero_if_model(), strip_final_activation=False)
    x, state = RNG.standard_normal((1, 4)).astype(np.float32), np.zeros((1, 3), np.float32)
    sr = np.array(16000, np.int64)
    onnx_attr.DeepLift(model, gradient_fallback=True).attribute({"input": x, "state": state},
                                                                 additional_forward_args={"sr": sr})
    ig = onnx_attr.IntegratedGradients(model)
    _, delta = ig.attribute({"input": x}, additional_forward_args={"state": state, "sr": sr}, n_steps=64,
                            return_convergence_delta=True)
    assert ig.last_report["held_inputs"] == ["state", "sr"]
    ig.attribute({"input": x, "sr": sr, "state": state}, n_steps=8)  # a 0-d setting among the inputs: held
    assert ig.last_report["held_inputs"] == ["sr"]
    ablation = onnx_attr.FeatureAblation(model)  # the perturbation methods report the same (hunt 31: it had none)
    ablation.attribute({"input": x}, additional_forward_args={"state": state, "sr": sr})
    assert ablation.last_report["held_inputs"] == ["state", "sr"] and ablation.last_report["batch_axes"]["input"] == 0


def test_an_if_on_an_attributed_input_is_refused_by_name():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Cast", ["s"], ["nonzero"], to=TensorProto.BOOL),  # not a comparison: no BranchSelect
             helper.make_node("If", ["nonzero"], ["y"], then_branch=then, else_branch=other, name="sign_switch")]
    proto = make_model(nodes, [("x", FLOAT, [1, 3])], [("y", FLOAT, [1, 3])], opset=13)
    model = onnx_attr.load(proto)
    with pytest.raises(onnx_attr.UnsupportedOpError, match=r"sign_switch.*attributed input 'x'") as err:
        onnx_attr.DeepLift(model).attribute(np.ones((1, 3), np.float32), target=0)
    assert err.value.opset == 13 and "If (ai.onnx opset 13)" in str(err.value)  # the file's opset, named


def state_on_axis_one_model():
    """silero op15's layout: input [batch, 4], state [2, batch, 3]; out = sigmoid(input·W + s0 · s1)."""
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"]),
             helper.make_node("Gather", ["state", "i0"], ["s0"], axis=0),
             helper.make_node("Gather", ["state", "i1"], ["s1"], axis=0),
             helper.make_node("Mul", ["s0", "s1"], ["s01"]),
             helper.make_node("Add", ["h", "s01"], ["z"]),
             helper.make_node("Tanh", ["z"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["output"], axes=[1], keepdims=1)]
    return make_model(nodes, [("input", FLOAT, ["batch", 4]), ("state", FLOAT, [2, "batch", 3])],
                      [("output", FLOAT, ["batch", 1])], initializers={"w": w, "i0": np.array(0, np.int64),
                                                                       "i1": np.array(1, np.int64)}, opset=13)


@pytest.mark.parametrize("method", ["deeplift", "ig"])
def test_a_state_batched_on_axis_one_is_cut_and_stacked_on_that_axis(method):
    model = onnx_attr.load(state_on_axis_one_model())
    x = (3 * RNG.standard_normal((3, 4))).astype(np.float32)
    state = (2 * RNG.standard_normal((2, 3, 3))).astype(np.float32)
    feeds = {"input": x, "state": state}
    explainer = onnx_attr.DeepLift(model) if method == "deeplift" else onnx_attr.IntegratedGradients(model)
    options = {} if method == "deeplift" else {"n_steps": 200}
    attributions, delta = explainer.attribute(feeds, return_convergence_delta=True, **options)
    assert attributions["state"].shape == state.shape
    assert explainer.last_report["batch_axes"] == {"input": 0, "state": 1}
    change = _completeness(model, feeds, {"input": 0 * x, "state": 0 * state}, lambda o: o[:, 0])
    total = attributions["input"].sum(1) + attributions["state"].sum((0, 2))
    np.testing.assert_allclose(total, change, rtol=1e-4 if method == "deeplift" else 2e-3, atol=1e-5)
    # each example alone gives the same attributions as in the batch (the state cut on axis 1)
    for i in range(3):
        alone = explainer.attribute({"input": x[i:i + 1], "state": state[:, i:i + 1]}, **options)
        np.testing.assert_allclose(alone["state"], attributions["state"][:, i:i + 1], rtol=1e-4, atol=1e-6)


def time_major_model(frames_are_batch: bool):
    """An LSTM over axis 0 of its input. frames_are_batch: input [frames, 6] declared like a batch
    (silero's sequence export); else input [N, 6, T] transposed to [T, N, 6] (a CRNN), output [T, N, 5]."""
    hidden = 5
    w = (0.5 * RNG.standard_normal((1, 4 * hidden, 6))).astype(np.float32)
    r = (0.5 * RNG.standard_normal((1, 4 * hidden, hidden))).astype(np.float32)
    nodes = []
    if frames_are_batch:
        nodes.append(helper.make_node("Unsqueeze", ["x", "one"], ["seq"]))  # [T, 1, 6]
    else:
        nodes.append(helper.make_node("Transpose", ["x"], ["seq"], perm=[2, 0, 1]))  # [T, N, 6]
    nodes += [helper.make_node("LSTM", ["seq", "w", "r"], ["y"], hidden_size=hidden),  # [T, 1, N, H]
              helper.make_node("Squeeze", ["y", "one"], ["out"])]
    inputs = [("x", FLOAT, ["frames", 6] if frames_are_batch else ["n", 6, "t"])]
    outputs = [("out", FLOAT, ["frames", 1, hidden] if frames_are_batch else ["t", "n", hidden])]
    return make_model(nodes, inputs, outputs, initializers={"w": w, "r": r, "one": np.array([1], np.int64)},
                      opset=13)


def slow_ig(model, x: np.ndarray, pick, n_steps: int) -> np.ndarray:
    """IG by hand: one path point at a time, each its own forward and backward."""
    points, weights = np.polynomial.legendre.leggauss(n_steps)
    total = torch.zeros(x.shape, dtype=torch.float64)
    for p, w in zip((points + 1) / 2, weights / 2):
        point = torch.tensor(float(p) * x, requires_grad=True)
        (grad,) = torch.autograd.grad(pick(model(point)), point)
        total += float(w) * grad.double()
    return (total * torch.from_numpy(x).double()).numpy()


def test_ig_on_frames_declared_like_a_batch_runs_its_steps_one_at_a_time():
    model = onnx_attr.load(time_major_model(frames_are_batch=True))
    x = (2 * RNG.standard_normal((7, 6))).astype(np.float32)
    ig = onnx_attr.IntegratedGradients(model)
    ours = ig.attribute(x, target=(6, 0, 2), n_steps=16)
    assert not ig.last_report["steps_stacked"]
    expected = slow_ig(model, x, lambda out: out[6, 0, 2], 16)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(ours - expected).max() < 1e-3 * np.abs(expected).max()


def test_ig_on_a_time_major_output_stacks_steps_on_the_batch_axis():
    model = onnx_attr.load(time_major_model(frames_are_batch=False))
    x = (2 * RNG.standard_normal((3, 6, 4))).astype(np.float32)
    ig = onnx_attr.IntegratedGradients(model)
    ours = ig.attribute(x, target=(3, 1), n_steps=16)  # time step 3, unit 1, for each example
    assert ig.last_report["steps_stacked"]
    for i in range(3):
        expected = slow_ig(model, x[i:i + 1], lambda out: out[3, 0, 1], 16)
        np.testing.assert_allclose(ours[i:i + 1], expected, rtol=1e-4, atol=1e-6)
    dl, delta = onnx_attr.DeepLift(model).attribute(x, target=(3, 1), return_convergence_delta=True)
    assert np.abs(delta.numpy()).max() < 1e-4


@pytest.mark.parametrize("target, axis, size", [((9, 1), 0, 4), ((3, 7), 2, 5)])
def test_a_target_out_of_range_names_the_outputs_own_axis(target, axis, size):
    """Output [T, N, C] is read batch-first as [N, T, C]: the error names axis 0 for T, not the
    view's axis 1."""
    model = onnx_attr.load(time_major_model(frames_are_batch=False))
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    for method in (onnx_attr.DeepLift(model), onnx_attr.IntegratedGradients(model)):
        with pytest.raises(onnx_attr.InputError, match=rf"target {target[axis // 2]} is out of range for output "
                                                       rf"axis {axis} of size {size}"):
            method.attribute(x, target=target)


def test_inspect_shows_each_batch_axis():
    info = onnx_attr.load(state_on_axis_one_model()).summary()
    assert [d["batch_axis"] for d in info["inputs"]] == [0, 1]
    assert [d["batch_axis"] for d in info["outputs"]] == [0]


HELD_STATE_METHODS = {
    "DeepLift": lambda m: (onnx_attr.DeepLift(m), {}),
    "DeepLiftShap": lambda m: (onnx_attr.DeepLiftShap(m), {"baselines": {"input": np.zeros((2, 4), np.float32)}}),
    "IntegratedGradients": lambda m: (onnx_attr.IntegratedGradients(m), {"n_steps": 8}),
    "Saliency": lambda m: (onnx_attr.Saliency(m), {}),
    "InputXGradient": lambda m: (onnx_attr.InputXGradient(m), {}),
    "GradientShap": lambda m: (onnx_attr.GradientShap(m), {"baselines": {"input": np.zeros((2, 4), np.float32)},
                                                           "n_samples": 3}),
    "NoiseTunnel": lambda m: (onnx_attr.NoiseTunnel(onnx_attr.IntegratedGradients(m)), {"nt_samples": 3,
                                                                                        "n_steps": 4}),
    "FeatureAblation": lambda m: (onnx_attr.FeatureAblation(m), {}),
    "Occlusion": lambda m: (onnx_attr.Occlusion(m), {"sliding_window_shapes": (1,)}),
    "LayerIntegratedGradients": lambda m: (onnx_attr.LayerIntegratedGradients(m, "z"), {"n_steps": 8}),
    "LayerDeepLift": lambda m: (onnx_attr.LayerDeepLift(m, "z"), {}),
}
RANDOM = {"GradientShap", "NoiseTunnel"}


@pytest.mark.parametrize("name", sorted(HELD_STATE_METHODS))
def test_every_method_holds_a_state_batched_on_axis_one(name):
    model = onnx_attr.load(state_on_axis_one_model())
    x = (3 * RNG.standard_normal((3, 4))).astype(np.float32)
    state = (2 * RNG.standard_normal((2, 3, 3))).astype(np.float32)
    method, options = HELD_STATE_METHODS[name](model)
    torch.manual_seed(0)
    np.random.seed(0)
    batch = method.attribute({"input": x}, additional_forward_args={"state": state}, **options)
    batch = batch["input"] if isinstance(batch, dict) else batch
    assert np.shape(batch)[0] == 3
    if name in RANDOM:
        return
    for i in range(3):  # each example with its own column of the state gives the same answer
        alone = method.attribute({"input": x[i:i + 1]}, additional_forward_args={"state": state[:, i:i + 1]},
                                 **options)
        alone = alone["input"] if isinstance(alone, dict) else alone
        np.testing.assert_allclose(np.asarray(alone), np.asarray(batch)[i:i + 1], rtol=1e-4, atol=1e-6)


def fixed_state_model():
    """silero's OpenVINO export: fixed shapes, the If inlined; the state [2, 1, 3] has no batch
    and a Gather takes its row 1 (the zero baseline cut it to one row before)."""
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"]),
             helper.make_node("Gather", ["state", "i1"], ["s1"], axis=0),
             helper.make_node("Add", ["h", "s1"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["output"], axes=[1], keepdims=1)]
    return make_model(nodes, [("input", FLOAT, [1, 4]), ("state", FLOAT, [2, 1, 3])], [("output", FLOAT, [1, 1])],
                      initializers={"w": w, "i1": np.array(1, np.int64)}, opset=13)


@pytest.mark.parametrize("method", ["deeplift", "ig"])
def test_a_state_without_a_batch_is_attributed_whole(method):
    model = onnx_attr.load(fixed_state_model(), strip_final_activation=False)
    feeds = {"input": (3 * RNG.standard_normal((1, 4))).astype(np.float32),
             "state": RNG.standard_normal((2, 1, 3)).astype(np.float32)}
    explainer = onnx_attr.DeepLift(model) if method == "deeplift" else onnx_attr.IntegratedGradients(model)
    attributions = explainer.attribute(feeds, **({} if method == "deeplift" else {"n_steps": 100}))
    assert attributions["state"].shape == (2, 1, 3) and not np.any(attributions["state"][0])  # row 0 unused
    assert explainer.last_report["batch_axes"] == {"input": 0, "state": None}
    change = _completeness(model, feeds, {k: 0 * v for k, v in feeds.items()}, lambda o: o[:, 0])
    total = sum(a.sum() for a in attributions.values())
    np.testing.assert_allclose(total, change, rtol=1e-4 if method == "deeplift" else 1e-3, atol=1e-6)


def held_trip_count_loop(while_on_input: bool = False):
    """acc += tanh(x * i) for i < steps (a held int64 scalar input), the running sum also scanned;
    while_on_input: the loop instead goes on while sum(acc) < 6, so its count follows x's values."""
    body_nodes = [helper.make_node("Cast", ["i"], ["fi"], to=FLOAT), helper.make_node("Mul", ["x", "fi"], ["xi"]),
                  helper.make_node("Tanh", ["xi"], ["t"]), helper.make_node("Add", ["acc_in", "t"], ["acc_out"]),
                  helper.make_node("Identity", ["acc_out"], ["running"])]
    if while_on_input:
        body_nodes += [helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
                       helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    else:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", FLOAT, None), helper.make_tensor_value_info("running", FLOAT, None)])
    nodes = [helper.make_node("Mul", ["x", "zero"], ["acc0"]),
             helper.make_node("Loop", ["steps", "go", "acc0"], ["acc", "trace"], body=body, name="accumulate")]
    return make_model(nodes, [("x", FLOAT, ["n", 3]), ("steps", INT64, [])],
                      [("acc", FLOAT, ["n", 3]), ("trace", FLOAT, [None, "n", 3])],
                      initializers={"zero": np.array(0.0, np.float32), "go": np.array(True),
                                    "limit": np.array(6.0, np.float32)})


@pytest.mark.parametrize("steps", [3, 5])
def test_a_loop_with_a_held_trip_count_is_unrolled_per_call(steps):
    proto = held_trip_count_loop()
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = (2 * RNG.standard_normal((2, 3))).astype(np.float32)
    feeds = {"x": x, "steps": np.array(steps, np.int64)}
    for ours, theirs in zip(model.run(feeds), ort_run(proto, feeds)):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(x, target=1, additional_forward_args={"steps": feeds["steps"]},
                                       return_convergence_delta=True)
    change = _completeness(model, feeds, {"x": 0 * x}, lambda o: o[:, 1])
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-4, atol=1e-6)
    assert f"{steps} iteration(s)" in dl.engine.model.notes[-1]
    assert not any(n.op_type == "Loop" for n in dl.engine.model.onnx_model.graph.node)


def test_a_loop_whose_count_follows_an_attributed_input_is_refused_by_name():
    model = onnx_attr.load(held_trip_count_loop(while_on_input=True), strip_final_activation=False)
    x = (0.5 * RNG.standard_normal((2, 3))).astype(np.float32)
    with pytest.raises(onnx_attr.UnsupportedOpError, match=r"accumulate.*attributed input 'x'"):
        onnx_attr.DeepLift(model).attribute(x, target=1, additional_forward_args={"steps": np.array(4, np.int64)})


def test_the_probe_reads_nan_outputs_without_failing():
    from onnx_attr.importing.batch import output_axis

    model = onnx_attr.load(state_on_axis_one_model())
    x = np.full((2, 4), np.nan, np.float32)
    assert output_axis(model, model.prepare({"input": x, "state": np.ones((2, 2, 3), np.float32)}), 0) == 0


@pytest.mark.parametrize("reverse", [0, 1])
def test_rows_that_see_the_rows_before_or_after_them_are_one_whole_example(reverse):
    """A running sum over the axis declared as the batch (a stand-in for an LSTM run over frames in
    either direction): each row depends on its neighbours on one side, so the probe must find the
    rows mixed whichever side that is, and IG must then give what one whole example gives."""
    from onnx_attr.importing.batch import probe, batch_axes as axes_of

    proto = make_model([helper.make_node("CumSum", ["x", "axis"], ["s"], reverse=reverse),
                        helper.make_node("Tanh", ["s"], ["y"])],
                       [("x", TensorProto.FLOAT, ["n", 3])], [("y", TensorProto.FLOAT, ["n", 3])],
                       initializers={"axis": np.array(0, np.int64)})
    model = onnx_attr.load(proto)
    x = RNG.normal(size=(4, 3)).astype(np.float32) * 3
    tensors = model.prepare({"x": x})
    layout = probe(model, tensors, axes_of(model.inputs, tensors))
    assert not layout.stackable and layout.outputs == (None,)
    attr, delta = onnx_attr.IntegratedGradients(model).attribute(x, target=(3, 2), n_steps=64,
                                                                 return_convergence_delta=True)
    y = ort_run(proto, {"x": x})[0]
    assert abs(float(attr.sum()) - float(y[3, 2])) < 1e-3  # Σ attr = f(x) - f(0), with f(0) = 0


def test_a_mask_target_on_a_whole_example_covers_every_axis_of_its_output():
    """Rows that mix make the output one example: a `Target` mask without a batch axis then weighs
    the whole output (what the CLI's default masks do), for DeepLift and IG alike. Oracle:
    onnxruntime's Σ mask·(f(x) − f(0)), which DeepLift's sum must give and IG's approach."""
    proto = make_model([helper.make_node("CumSum", ["x", "axis"], ["s"]), helper.make_node("Tanh", ["s"], ["y"])],
                       [("x", TensorProto.FLOAT, ["n", 3])], [("y", TensorProto.FLOAT, ["n", 3])],
                       initializers={"axis": np.array(0, np.int64)})
    model = onnx_attr.load(proto)
    x = (RNG.normal(size=(4, 3)) * 0.7).astype(np.float32)
    mask = RNG.random((4, 3)).astype(np.float32)
    expected = float((mask * ort_run(proto, {"x": x})[0]).sum())  # f(0) = 0
    for method, tolerance in ((onnx_attr.DeepLift, 1e-5), (onnx_attr.IntegratedGradients, 1e-3)):
        attr = method(model).attribute(x, target=onnx_attr.Target(weights=mask))
        assert attr.shape == x.shape and abs(float(attr.sum()) - expected) < tolerance * max(1.0, abs(expected))


def test_ids_held_beside_an_attributed_float_input_keep_their_embedding_lookup_plain():
    """LORE's second stage: cell features (attributed) plus integer boxes whose coordinates index a
    position table (an embedding lookup), passed as additional_forward_args: the lookup's tap must
    stay a plain Gather (it raised a KeyError from the tap), and DeepLift is complete on the
    features against onnxruntime, the ids held."""
    rng = np.random.default_rng(5)
    table = rng.normal(size=(16, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["boxes", "first"], ["coord"], axis=2),
             helper.make_node("Gather", ["table", "coord"], ["position"]),
             helper.make_node("Add", ["feat", "position"], ["s"]), helper.make_node("Tanh", ["s"], ["y"])]
    proto = make_model(nodes, [("feat", FLOAT, ["batch", 3, 4]), ("boxes", INT64, ["batch", 3, 2])],
                       [("y", FLOAT, ["batch", 3, 4])],
                       initializers={"table": table, "first": np.array(0, np.int64)})
    model = onnx_attr.load(proto)
    feat = rng.normal(size=(1, 3, 4)).astype(np.float32) * 2
    boxes = rng.integers(0, 16, (1, 3, 2)).astype(np.int64)
    attr = onnx_attr.DeepLift(model).attribute(feat, target=(1, 2), additional_forward_args={"boxes": boxes})
    with_zero = ort_run(proto, {"feat": np.zeros_like(feat), "boxes": boxes})[0][0, 1, 2]
    expected = ort_run(proto, {"feat": feat, "boxes": boxes})[0][0, 1, 2] - with_zero
    assert abs(float(np.asarray(attr).sum()) - float(expected)) < 1e-5


@pytest.mark.parametrize("outputs,expected", [
    ([(1, "seq", 2)], [0]),  # khmersm: the inputs' batch baked in as 1, not the output's one free axis
    ([("batch", "seq", 2)], [0]),
    ([(2, "batch", 128)], [1]),  # a state with the batch on axis 1
    ([("seq", "batch", 5)], [1]),  # time-major
])
def test_declared_output_batch_axes(outputs, expected):
    """What `inspect` shows before any call: the inputs' batch symbol where the output has it; an
    output of leading size 1 where it does not is an export that baked a batch of one."""
    from onnx_attr.importing.batch import output_batch_axes

    inputs = [TensorSpec("x", ("batch", "seq"), np.dtype(np.int64)), TensorSpec("mask", ("batch", "seq"), np.dtype(bool))]
    outs = [TensorSpec(f"y{i}", shape, np.dtype(np.float32)) for i, shape in enumerate(outputs)]
    assert output_batch_axes(inputs, outs) == expected


@pytest.mark.parametrize("outputs,expected", [
    ([(1, "T_out", 3)], [0]),  # FunASR's FSMN-VAD logits [1, T', 248] of a [1, T, 400]: not time
    ([(1, 128, "T2", 1)], [0]),  # its cache out
])
def test_declared_output_batch_axes_of_a_fixed_batch(outputs, expected):
    """An export that fixes its batch at 1 has no batch symbol: an output leading with that 1 holds
    the batch there, not on its one free axis (`inspect` said axis 1 for the VAD's logits)."""
    from onnx_attr.importing.batch import output_batch_axes

    inputs = [TensorSpec("speech", (1, "T", 400), np.dtype(np.float32))]
    outs = [TensorSpec(f"y{i}", shape, np.dtype(np.float32)) for i, shape in enumerate(outputs)]
    assert output_batch_axes(inputs, outs) == expected


@pytest.mark.parametrize("length", [8, "L"])
def test_self_attention_over_axis_0_is_one_example_not_a_batch(length):
    """nn.MultiheadAttention's sequence-first layout [L, 1, E] through self-attention over axis 0
    (qonnx's sdp.onnx). Declared fixed (8), its rows were taken as a batch untested; symbolic, the
    probe's rows [x, x/2, x] gave equal first and last blocks, since attention treats the two copies
    of x alike. Either way each row was explained as an example: DeepLift's relative delta was 8.
    Oracle: onnxruntime's output change for the whole sequence."""
    import onnx_attr

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), helper.make_node("MatMul", ["xt", "w"], ["q"]),
             helper.make_node("Transpose", ["xt"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "xt"], ["o"]),
             helper.make_node("Transpose", ["o"], ["y"], perm=[1, 0, 2])]
    proto = make_model(nodes, [("x", FLOAT, [length, 1, 4])], [("y", FLOAT, [length, 1, 4])],
                       initializers={"w": (rng.standard_normal((4, 4)) * 0.5).astype(np.float32)})
    model = onnx_attr.load(proto)
    x = rng.standard_normal((8, 1, 4)).astype(np.float32)
    attributions, delta = onnx_attr.DeepLift(model).attribute(x, target=(3, 0, 2), return_convergence_delta=True)
    assert delta.shape == (1,)  # one example: the whole sequence
    change = ort_run(proto, {"x": x})[0][3, 0, 2] - ort_run(proto, {"x": 0 * x})[0][3, 0, 2]
    np.testing.assert_allclose(np.asarray(attributions).sum(dtype=np.float64), change, rtol=1e-5, atol=1e-6)


def test_a_sequence_reduced_to_one_value_is_one_example(tmp_path):
    """x [time_steps, features] -> 0-d score (ppocr-vectron's CTC decoder: the mean of each step's
    best score). Axis 0 looked like the batch by convention and [x, x/2, x] kept the 0-d shape, so
    it read as "no batch axis on the output" and every method refused a 0-d output of 18 examples.
    The rows moved the value: they are reduced together, one whole example. Oracle: onnxruntime at
    x and at the zero baseline (completeness); the CLI's default run exits 0."""
    import onnx

    from onnx_attr.app.cli import main

    nodes = [helper.make_node("ReduceMax", ["x"], ["best"], axes=[1], keepdims=0),
             helper.make_node("ReduceMean", ["best"], ["score"], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, ["time_steps", "features"])], [("score", FLOAT, [])], opset=16)
    x = (np.random.default_rng(0).random((18, 40)) * 30).astype(np.float32)  # logits in the tens
    model = onnx_attr.load(proto)
    change = float(ort_run(proto, {"x": x})[0]) - float(ort_run(proto, {"x": 0 * x})[0])
    for method in (onnx_attr.DeepLift(model), onnx_attr.IntegratedGradients(model)):
        attributions = np.asarray(method.attribute({"x": x})["x"], np.float64)
        assert attributions.shape == x.shape and method.last_report["batch_axes"] == {"x": None}
        assert attributions.sum() == pytest.approx(change, rel=1e-3 if isinstance(method, onnx_attr.IntegratedGradients)
                                                   else 1e-5)
    onnx.save(proto, tmp_path / "score.onnx")
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(tmp_path / "score.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "-q"]) == 0


def test_a_decoder_whose_one_step_decodes_nothing_is_one_example(tmp_path):
    """ppocr-vectron's CTC decoder: ids and the mean score of the non-blank steps of one [time,
    classes] sequence. The probe's one-step run starts at a blank step: no ids, a NaN score, and
    [x, x/2, x] the same, so no output grew or moved and the 18 steps were read as 18 examples
    (exit 2). No output with a row per input row: one whole example. Oracle: onnxruntime."""
    import onnx

    from onnx_attr.app.cli import main

    nodes = [helper.make_node("ArgMax", ["x"], ["best"], axis=1, keepdims=0),
             helper.make_node("Equal", ["best", "blank"], ["is_blank"]), helper.make_node("Not", ["is_blank"], ["keep"]),
             helper.make_node("ReduceMax", ["x"], ["top"], axes=[1], keepdims=0),
             helper.make_node("Compress", ["top", "keep"], ["kept"], axis=0),
             helper.make_node("Compress", ["best", "keep"], ["ids"], axis=0),
             helper.make_node("ReduceMean", ["kept"], ["score"], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, ["time_steps", "classes"])], [("ids", INT64, ["n"]), ("score", FLOAT, [])],
                       {"blank": np.array(0, np.int64)}, opset=13)
    rng = np.random.default_rng(4)
    x = rng.random((18, 30)).astype(np.float32)
    x[0, 0] = x[5, 0] = 3.0  # steps 0 and 5 are blank
    model = onnx_attr.load(proto)
    change = float(ort_run(proto, {"x": x})[1]) - float(ort_run(proto, {"x": x * 0.25})[1])
    method = onnx_attr.DeepLift(model)
    attributions = np.asarray(method.attribute({"x": x}, baselines={"x": x * 0.25}, output="score")["x"], np.float64)
    assert method.last_report["batch_axes"] == {"x": None}
    assert attributions.sum() == pytest.approx(change, rel=1e-5)
    onnx.save(proto, tmp_path / "ctc.onnx")
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(tmp_path / "ctc.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "-q"]) == 0


def test_a_held_input_that_is_not_one_row_per_example_is_fed_as_given():
    """Boxes [9, 5, 2] held beside pictures (ppocr-vectron's line extraction with --hold boxes): the
    perturbation methods grew every input with a batch axis to their rows, and expand(3, ...) of 9
    boxes raised torch's error (exit 3). A held input whose leading size is neither 1 nor the
    examples' count is fed as given. Oracle: the ablation by hand."""
    w = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ReduceMax", ["boxes"], ["top"], keepdims=0),
             helper.make_node("Add", ["h", "top"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 4]), ("boxes", FLOAT, ["k", 2])], [("y", FLOAT, ["n", 1])],
                       {"w": w}, opset=13)
    model = onnx_attr.load(proto)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    boxes = np.random.default_rng(3).random((9, 2)).astype(np.float32)
    method = onnx_attr.FeatureAblation(model)
    attributions = method.attribute({"x": x}, target=0, additional_forward_args={"boxes": boxes})
    np.testing.assert_allclose(attributions["x"], x * w[:, 0], rtol=1e-6)  # removing x_j takes x_j·w_j away


def test_a_squeeze_of_a_wider_axis_is_refused_as_onnxruntime_refuses_it():
    """Squeeze(axis 0) of an export that fixed its batch at one without saying so (mlfmu's LSTM): torch
    leaves an axis of size 2 in place, so two rows ran on and failed at a later node named wrongly.
    It is a clear error naming the Squeeze; one row runs as onnxruntime runs it, and IG, which finds
    the rows cannot share a pass, runs them one at a time."""
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Unsqueeze", ["t", "axes"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 4])], [("y", FLOAT, ["n", 4])], {"axes": np.array([0], np.int64)},
                       opset=13)
    model = onnx_attr.load(proto)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(model.run(x[:1])[0].numpy(), ort_run(proto, {"x": x[:1]})[0], rtol=1e-6)
    with pytest.raises(onnx_attr.OnnxAttrError, match=r"Squeeze.*removes axis 0, which has size 2"):
        model.run(x)
    attributions = onnx_attr.IntegratedGradients(model).attribute(x, target=1)
    assert np.asarray(attributions).shape == (2, 4)


def test_an_unbatched_picture_beside_boxes_of_another_count_is_one_example(tmp_path):
    """ppocr-vectron's line_extract takes x [3, H, W] (no batch) and boxes [n, 5, 2]: axis 0 of each,
    read as the batch by convention, holds 3 channels and 9 boxes. Every method refused ("do not
    have the batch of 3"). A fixed leading size the other inputs do not share is no batch: the call
    is one example, explained whole (a linear graph: DeepLift's attributions are x · w by hand)."""
    import json

    import onnx

    from onnx_attr.app.cli import main

    nodes = [helper.make_node("ReduceMean", ["x"], ["channels"], axes=[1, 2], keepdims=0),
             helper.make_node("ReduceSum", ["boxes", "first"], ["corners"], keepdims=0),
             helper.make_node("Flatten", ["corners"], ["flat"], axis=0),
             helper.make_node("Reshape", ["flat", "row"], ["c"]),
             helper.make_node("Concat", ["channels", "c"], ["features"], axis=0),
             helper.make_node("MatMul", ["features", "w"], ["y"])]
    w = np.random.default_rng(4).standard_normal((13, 2)).astype(np.float32)
    proto = make_model(nodes, [("x", FLOAT, [3, "h", "w"]), ("boxes", FLOAT, ["n", 5, 2])], [("y", FLOAT, [2])],
                       {"w": w, "row": np.array([-1], np.int64), "first": np.array([0], np.int64)}, opset=13)
    x = (np.random.default_rng(5).uniform(size=(3, 16, 24)) * 255).astype(np.float32)
    boxes = (np.random.default_rng(6).uniform(size=(9, 5, 2)) * 100).astype(np.float32)
    model = onnx_attr.load(proto)
    attributions = onnx_attr.DeepLift(model).attribute({"x": x, "boxes": boxes}, target=1)
    np.testing.assert_allclose(attributions["x"], x * (w[:3, 1] / (16 * 24))[:, None, None], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(attributions["boxes"], boxes * w[3:, 1].reshape(5, 2), rtol=1e-4, atol=1e-3)
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=x, boxes=boxes)
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["max_relative_delta"] <= 1e-4


def _features_first(two: bool):
    """x [8, n] (features first, the batch on axis 1, as PyTorch's time-major LSTMs take it) -> Transpose ->
    MatMul -> Relu -> MatMul -> y [n, 3]; with `two`, z [2, n] added through its own MatMul: the symbol
    shared by both inputs. One input names it batch."""
    symbol = "n" if two else "batch"
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]), helper.make_node("MatMul", ["xt", "w1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y0" if two else "y"])]
    inputs, weights = [("x", FLOAT, [8, symbol])], {"w1": RNG.normal(size=(8, 6)).astype(np.float32),
                                                     "w2": RNG.normal(size=(6, 3)).astype(np.float32)}
    if two:
        nodes += [helper.make_node("Transpose", ["z"], ["zt"], perm=[1, 0]), helper.make_node("MatMul", ["zt", "wz"], ["zz"]),
                  helper.make_node("Add", ["y0", "zz"], ["y"])]
        inputs.append(("z", FLOAT, [2, symbol]))
        weights["wz"] = RNG.normal(size=(2, 3)).astype(np.float32)
    return make_model(nodes, inputs, [("y", FLOAT, [symbol, 3])], weights)


@pytest.mark.parametrize("two", [False, True])
def test_examples_on_axis_1_are_counted_summed_and_targeted_there(two, tmp_path):
    """Hunt 20: with the batch on axis 1, completeness deltas summed each input over its axis 0 (deltas of
    2 to 14 on exact attributions, "do not add up"), the CLI counted 8 examples and refused every call, and
    one input [8, batch] was taken as one whole example. Oracle: onnxruntime's f(x) - f(0) per example, at
    each example's own target."""
    import onnx

    from onnx_attr.app.cli import main

    proto = _features_first(two)
    feeds = {"x": (RNG.normal(size=(8, 5)) * 30).astype(np.float32)}
    if two:
        feeds["z"] = (RNG.normal(size=(2, 5)) * 30).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    y = ort_run(proto, feeds)[0]
    change = y - ort_run(proto, {k: np.zeros_like(v) for k, v in feeds.items()})[0]
    args = tuple(feeds.values())
    for method in (onnx_attr.DeepLift, onnx_attr.IntegratedGradients):
        explainer = method(model)
        attributions, delta = explainer.attribute(args if two else args[0], target=1, return_convergence_delta=True)
        parts = attributions if two else (attributions,)
        np.testing.assert_allclose(sum(np.asarray(a).sum(0) for a in parts), change[:, 1], rtol=1e-4, atol=1e-3)
        assert np.abs(np.asarray(delta)).max() < 1e-3 * np.abs(change[:, 1]).max()
        assert not [w for w in explainer.last_report["warnings"] if "add up" in w]
        recomputed = explainer.compute_convergence_delta(attributions, tuple(0 * a for a in args) if two else 0 * args[0],
                                                         args if two else args[0], target=1)
        assert np.abs(np.asarray(recomputed)).max() < 1e-3 * np.abs(change[:, 1]).max()
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", **feeds)
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "-q"]) == 0
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target"] == y.argmax(1).tolist() and report["batch_axes"]["x"] == 1
    sums = np.load(tmp_path / "out" / "attributions.npz")
    total = sum(sums[k].sum(0) for k in feeds)
    np.testing.assert_allclose(total, change[np.arange(5), y.argmax(1)], rtol=1e-4, atol=1e-3)
