"""Unrolling a Loop for DeepLift renames each copy of its body in one pass (a body repeated k times
costs k passes, not k x names x nodes), all names at once: an outer name that is also one of the
body's own input names is not renamed twice. Oracle: onnxruntime on the original graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from onnx_attr.importing.normalize import _prefixed_branch, rename_all

from conftest import FLOAT, INT64, make_model, ort_run


def swapping_loop():
    """Carried (a, b) <- (b + tanh(a), tanh(a)), started from outer tensors named `b` and `c`: the
    outer `b` feeds the body's `a`, while the body has its own input `b`."""
    body = helper.make_graph(
        [helper.make_node("Tanh", ["a"], ["ta"]), helper.make_node("Add", ["b", "ta"], ["s"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("a", FLOAT, None), helper.make_tensor_value_info("b", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("s", FLOAT, None),
         helper.make_tensor_value_info("ta", FLOAT, None)])
    nodes = [helper.make_node("Mul", ["x", "one"], ["b"]), helper.make_node("Mul", ["x", "half"], ["c"]),
             helper.make_node("Loop", ["steps", "go", "b", "c"], ["fa", "fb"], body=body, name="swap"),
             helper.make_node("Add", ["fa", "fb"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["n", 3]), ("steps", INT64, [])], [("y", FLOAT, ["n", 3])],
                      initializers={"one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
                                    "go": np.array(True)})


@pytest.mark.parametrize("steps", [1, 4])
def test_an_outer_name_equal_to_a_body_input_is_fed_once(steps):
    proto = swapping_loop()
    model = onnx_attr.load(proto, strip_final_activation=False)
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal((2, 3))).astype(np.float32)
    feeds = {"x": x, "steps": np.array(steps, np.int64)}
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(x, target=1, additional_forward_args={"steps": feeds["steps"]},
                                       return_convergence_delta=True)
    unrolled = dl.engine.model
    assert not any(n.op_type == "Loop" for n in unrolled.onnx_model.graph.node)
    np.testing.assert_allclose(unrolled.run(feeds)[0].numpy(), ort_run(proto, feeds)[0], rtol=1e-6, atol=1e-6)
    change = ort_run(proto, feeds)[0][:, 1] - ort_run(proto, {**feeds, "x": 0 * x})[0][:, 1]
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-4, atol=1e-6)


def test_rename_all_renames_together():
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g", [], [])
    graph.output.extend([helper.make_tensor_value_info("a", FLOAT, None)])
    rename_all(graph, {"a": "b", "b": "c"})
    assert list(graph.node[0].input) == ["b", "c"] and graph.output[0].name == "b"


def test_a_prefixed_copy_keeps_a_local_that_already_has_the_prefix_apart():
    body = helper.make_graph([helper.make_node("Neg", ["x"], ["p/y"]), helper.make_node("Abs", ["x"], ["y"]),
                              helper.make_node("Add", ["p/y", "y"], ["z"])], "body",
                             [helper.make_tensor_value_info("x", FLOAT, None)],
                             [helper.make_tensor_value_info("z", FLOAT, None)])
    copy = _prefixed_branch(body, "p/", set())
    assert [list(n.output) for n in copy.node] == [["p/p/y"], ["p/y"], ["p/z"]]
    assert list(copy.node[2].input) == ["p/p/y", "p/y"] and copy.output[0].name == "p/z"


def rnn_decoder(steps: int):
    """A recurrent decoder like SLANet's: carried state h <- tanh(h W + b), each step's
    y = relu(h V) / width(h) (a Gather on a Shape, as exports write it) stacked as a scan output and moved behind the batch axis ([1, steps, 3]),
    and summed in a carried total (the first output: every step counts in it)."""
    rng = np.random.default_rng(1)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["hw"]), helper.make_node("Add", ["hw", "bias"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]), helper.make_node("MatMul", ["h2", "V"], ["hv"]),
         helper.make_node("Relu", ["hv"], ["r"]), helper.make_node("Shape", ["h"], ["shape"]),
         helper.make_node("Gather", ["shape", "last"], ["width"]), helper.make_node("Cast", ["width"], ["w"], to=FLOAT),
         helper.make_node("Div", ["r", "w"], ["y"]), helper.make_node("Add", ["total", "y"], ["total2"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", FLOAT, None), helper.make_tensor_value_info("total", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h2", FLOAT, None),
         helper.make_tensor_value_info("total2", FLOAT, None), helper.make_tensor_value_info("y", FLOAT, None)])
    nodes = [helper.make_node("Loop", ["steps", "go", "x", "zeros"], ["h_last", "total", "ys"], body=body,
                              name="decoder"),
             helper.make_node("Transpose", ["ys"], ["out"], perm=[1, 0, 2])]
    return make_model(nodes, [("x", FLOAT, [1, 4])], [("total", FLOAT, [1, 3]), ("out", FLOAT, [1, steps, 3])],
                      initializers={"steps": np.array(steps, np.int64), "go": np.array(True),
                                    "zeros": np.zeros((1, 3), np.float32),
                                    "last": np.array(1, np.int64), "W": (0.9 * rng.standard_normal((4, 4))).astype(np.float32),
                                    "bias": (0.3 * rng.standard_normal(4)).astype(np.float32),
                                    "V": rng.standard_normal((4, 3)).astype(np.float32)})


def test_a_long_decoder_loop_is_complete():
    proto = rnn_decoder(100)
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = (3 * np.random.default_rng(0).standard_normal((1, 4))).astype(np.float32)
    attributions = onnx_attr.DeepLift(model).attribute(x, target=1)
    change = ort_run(proto, {"x": x})[0][0, 1] - ort_run(proto, {"x": 0 * x})[0][0, 1]
    assert abs(change) > 1e-2  # the total still depends on x
    np.testing.assert_allclose(attributions.sum(), change, rtol=1e-4, atol=1e-5)


def _python_calls(steps: int) -> int:
    """Python and builtin calls made while DeepLift unrolls, converts, rewrites and runs `steps` trips."""
    import sys

    model = onnx_attr.load(rnn_decoder(steps), strip_final_activation=False)
    x = np.ones((1, 4), np.float32)
    count = 0

    def counted(_frame, event, _arg):
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(counted)
    try:
        onnx_attr.DeepLift(model).attribute(x, target=1)
    finally:
        sys.setprofile(None)
    return count


def test_unrolling_costs_grow_linearly_with_the_trip_count():
    """Counted calls, not seconds: doubling the trips from 40 to 80 adds what 20 -> 40 added, twice
    over (measured 2.00; a walk per node over the graph's names or ancestors gave 2.27). A first
    run pays the one-time costs (imports, caches)."""
    _python_calls(10)
    small, medium, large = (_python_calls(n) for n in (20, 40, 80))
    assert (large - medium) / (medium - small) < 2.1, (small, medium, large)


def greedy_decoder(steps: int):
    """SLANet's feedback: each step's token is ArgMax of its scores, fed back as a OneHot (through
    a Cast and a constant offset, as paddle2onnx writes it) into the next step's state."""
    rng = np.random.default_rng(2)
    body = helper.make_graph(
        [helper.make_node("Cast", ["token"], ["token64"], to=INT64),
         helper.make_node("OneHot", ["token64", "depth", "onoff"], ["emb"]),
         helper.make_node("MatMul", ["h", "W"], ["hw"]), helper.make_node("MatMul", ["emb", "E"], ["he"]),
         helper.make_node("Add", ["hw", "he"], ["pre"]), helper.make_node("Tanh", ["pre"], ["h2"]),
         helper.make_node("MatMul", ["h2", "V"], ["scores"]), helper.make_node("Add", ["total", "scores"], ["total2"]),
         helper.make_node("ArgMax", ["scores"], ["picked"], axis=1, keepdims=0),
         helper.make_node("Add", ["picked", "zero"], ["token2"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", FLOAT, None), helper.make_tensor_value_info("total", FLOAT, None),
         helper.make_tensor_value_info("token", INT64, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h2", FLOAT, None),
         helper.make_tensor_value_info("total2", FLOAT, None), helper.make_tensor_value_info("token2", INT64, None)])
    nodes = [helper.make_node("Loop", ["steps", "go", "x", "zeros", "start"], ["h_last", "total", "last"], body=body,
                              name="decoder")]
    return make_model(nodes, [("x", FLOAT, [1, 4])], [("total", FLOAT, [1, 3])],
                      initializers={"steps": np.array(steps, np.int64), "go": np.array(True),
                                    "zeros": np.zeros((1, 3), np.float32), "start": np.zeros(1, np.int64),
                                    "zero": np.array(0, np.int64), "depth": np.array(3, np.int64),
                                    "onoff": np.array([0, 1], np.float32),
                                    "W": (0.9 * rng.standard_normal((4, 4))).astype(np.float32),
                                    "E": (2 * rng.standard_normal((3, 4))).astype(np.float32),
                                    "V": (2 * rng.standard_normal((4, 3))).astype(np.float32)})


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_a_greedy_decoder_is_complete_when_its_tokens_change(scale):
    """The tokens fed back differ between the input and the zero baseline: the fused
    ArgMax-OneHot's secant carries that jump (without it, ArgMax is an index and the jump is lost)."""
    proto = greedy_decoder(60)
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = (scale * np.random.default_rng(0).standard_normal((1, 4))).astype(np.float32)
    dl = onnx_attr.DeepLift(model)
    attributions = dl.attribute(x, target=1)
    assert any("ArgMaxOneHot" in op for _name, op, _kind in dl.engine.rewrite.rewritten)
    feeds = dl.engine.model.run({"x": x})  # the unrolled forward matches onnxruntime
    np.testing.assert_allclose(feeds[0].numpy(), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)
    change = ort_run(proto, {"x": x})[0][0, 1] - ort_run(proto, {"x": 0 * x})[0][0, 1]
    np.testing.assert_allclose(attributions.sum(), change, rtol=1e-4, atol=1e-4)


def test_an_argmax_read_elsewhere_too_is_left_apart():
    """ArgMax feeding a OneHot and an output: no fusion (the index is needed as it is)."""
    nodes = [helper.make_node("ArgMax", ["x"], ["k"], axis=1, keepdims=0),
             helper.make_node("OneHot", ["k", "depth", "onoff"], ["hot"]),
             helper.make_node("Mul", ["hot", "x"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3]), ("k", INT64, [2])],
                       initializers={"depth": np.array(3, np.int64), "onoff": np.array([0, 1], np.float32)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    from onnx_attr.deeplift.rewrite import rewrite_for_deeplift

    ops = [n.meta.get("onnx_op") for n in rewrite_for_deeplift(model.module, model.inputs).module.graph.nodes]
    assert "ArgMax" in ops and "ArgMaxOneHot" not in ops


def test_the_argmax_one_hot_secant_is_complete_per_example():
    """Outside a loop, batch 3, each row its own pick: Σ attributions = Δy row by row."""
    nodes = [helper.make_node("ArgMax", ["x"], ["k"], axis=1, keepdims=0),
             helper.make_node("OneHot", ["k", "depth", "onoff"], ["hot"]),
             helper.make_node("MatMul", ["hot", "E"], ["a"]), helper.make_node("MatMul", ["x", "F"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    rng = np.random.default_rng(3)
    proto = make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 2])],
                       initializers={"depth": np.array(3, np.int64), "onoff": np.array([0, 1], np.float32),
                                     "E": (5 * rng.standard_normal((3, 2))).astype(np.float32),
                                     "F": rng.standard_normal((3, 2)).astype(np.float32)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = np.array([[0.1, 2.0, -1.0], [-3.0, -2.0, 1.0], [5.0, 0.0, 0.0]], np.float32)
    baseline = np.array([[1.0, 0.0, 0.0]], np.float32)
    attributions = onnx_attr.DeepLift(model).attribute(x, baselines=baseline, target=0)
    change = ort_run(proto, {"x": x})[0][:, 0] - ort_run(proto, {"x": np.repeat(baseline, 3, 0)})[0][:, 0]
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-5, atol=1e-5)


def _token_decoder(end_token: int, stop: bool = True, trips: int = 12):
    """A greedy decoder as SLANet-plus exports it: h = tanh(x·W + h·U + onehot(token)·P), scores =
    h·V, token = ArgMax(scores), fed back as a one-hot; the Loop goes on while the token is not
    `end_token` (the token's second use; stop=False: always, for `trips` steps: the oracle of the
    decoder held at a given length). Outputs: the last state and every step's scores [T, 1, 5]."""
    rng = np.random.default_rng(77)
    w, u, v, p = (rng.normal(0, 1.5, shape).astype(np.float32) for shape in ((4, 3), (3, 3), (3, 5), (5, 3)))
    body_nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["h_in", "U"], ["b"]),
                  helper.make_node("MatMul", ["prev_in", "P"], ["c"]), helper.make_node("Add", ["a", "b"], ["ab"]),
                  helper.make_node("Add", ["ab", "c"], ["s"]), helper.make_node("Tanh", ["s"], ["h_out"]),
                  helper.make_node("MatMul", ["h_out", "V"], ["scores"]),
                  helper.make_node("ArgMax", ["scores"], ["token"], axis=1, keepdims=0),
                  helper.make_node("OneHot", ["token", "depth", "onoff"], ["prev_out"], axis=-1)]
    if stop:
        body_nodes += [helper.make_node("Equal", ["token", "end"], ["ended"]),
                       helper.make_node("Not", ["ended"], ["going"]),
                       helper.make_node("Squeeze", ["going", "axis0"], ["cond_out"])]
    else:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("prev_in", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("prev_out", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])])
    loop = helper.make_node("Loop", ["trips", "go", "h0", "p0"], ["h", "last", "all_scores"], body=body, name="decode")
    return make_model([loop], [("x", TensorProto.FLOAT, [1, 4])],
                      [("h", TensorProto.FLOAT, [1, 3]), ("all_scores", TensorProto.FLOAT, [None, 1, 5])],
                      initializers={"W": w, "U": u, "V": v, "P": p, "end": np.array([end_token], np.int64),
                                    "axis0": np.array([0], np.int64), "trips": np.array(trips, np.int64),
                                    "go": np.array(True), "h0": np.zeros((1, 3), np.float32),
                                    "p0": np.zeros((1, 5), np.float32), "depth": np.array(5, np.int64),
                                    "onoff": np.array([0.0, 1.0], np.float32)}, opset=13)


def test_a_decoder_that_stops_on_its_end_token_is_explained_at_the_decoded_length():
    """The Loop's count follows x only through the ArgMax tokens: DeepLift holds the length at x's
    (as explanations of a decoder hold its generated sequence) and says so; the tokens fed back are
    each point's own (credited by the ArgMaxOneHot rule). Oracle: onnxruntime on the same decoder
    run for exactly that many steps, at x and at the baseline."""
    x = np.array([[0.9, -1.2, 0.4, 1.5]], np.float32)
    free = ort_run(_token_decoder(-1, stop=False), {"x": x})[1][:, 0]
    assert not np.array_equal(free.argmax(-1), ort_run(_token_decoder(-1, stop=False), {"x": 0 * x})[1][:, 0].argmax(-1))
    tokens = free.argmax(-1)
    end = next(int(t) for k, t in enumerate(tokens) if k >= 2 and t not in tokens[:k])  # first new token after 2 steps
    steps = int(np.where(tokens == end)[0][0]) + 1
    proto = _token_decoder(end)
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert ort_run(proto, {"x": x})[1].shape[0] == steps
    baseline = np.zeros_like(x)
    held = _token_decoder(end, stop=False, trips=steps)
    for output, target in ((0, 1), (1, (steps - 1, 2))):  # all_scores [T, 1, 5]: its batch is on axis 1
        dl = onnx_attr.DeepLift(model)
        attr, delta = dl.attribute(x, baselines=baseline, target=target, return_convergence_delta=True,
                                   **({"output": output} if output else {}))
        pick = (lambda y: y[0, target]) if output == 0 else (lambda y: y[target[0], 0, target[1]])
        expected = pick(ort_run(held, {"x": x})[output]) - pick(ort_run(held, {"x": baseline})[output])
        assert abs(float(attr.sum()) - float(expected)) < 1e-5 * max(1.0, abs(float(expected)))
        assert "held at this input's" in dl.last_report["specialised"] and f"{steps} iteration" in \
            dl.last_report["specialised"]


def test_a_loop_that_runs_while_a_value_is_under_a_threshold_stays_refused():
    """A count that follows x other than through a decoded token is refused by name, as before."""
    proto = _token_decoder(0)
    body = next(a.g for a in proto.graph.node[0].attribute if a.name == "body")
    argmax = next(n for n in body.node if n.op_type == "ArgMax")
    body.node.remove(argmax)
    body.node.insert(0, helper.make_node("Cast", ["a"], ["token_float"], to=TensorProto.FLOAT))
    body.node.insert(1, helper.make_node("ReduceSum", ["token_float"], ["token_sum"], keepdims=0))
    body.node.insert(2, helper.make_node("Cast", ["token_sum"], ["token"], to=TensorProto.INT64))
    model = onnx_attr.load(proto, strip_final_activation=False)
    with pytest.raises(onnx_attr.UnsupportedOpError, match=r"decode.*attributed input 'x'"):
        onnx_attr.DeepLift(model).attribute(np.ones((1, 4), np.float32), target=1)


def test_ig_integrates_the_decoder_at_the_length_deeplift_holds():
    """Every point of IG's path decodes as long as the input (the same held length as DeepLift's),
    so a target on the input's last step exists at every point; left as exported, points that
    stop later or sooner give outputs of other lengths."""
    x = np.array([[0.9, -1.2, 0.4, 1.5]], np.float32)
    tokens = ort_run(_token_decoder(-1, stop=False), {"x": x})[1][:, 0].argmax(-1)
    end = next(int(t) for k, t in enumerate(tokens) if k >= 2 and t not in tokens[:k])
    steps = int(np.where(tokens == end)[0][0]) + 1
    model = onnx_attr.load(_token_decoder(end), strip_final_activation=False)
    ig = onnx_attr.IntegratedGradients(model)
    attr = ig.attribute(x, target=(steps - 1, 2), output=1, n_steps=32)
    assert np.asarray(attr).shape == x.shape and np.isfinite(np.asarray(attr)).all()
    assert ig.active is not model and ig.active(*model.prepare({"x": 0 * x}))[1].shape[0] == steps


def _loop_with_if(condition: str, trips: int = 5):
    """h <- If(cond, tanh(h + x), h · w) for `trips` trips, h0 = x: `condition` "parity" (the trip
    number is even: a different branch each trip, known from the count alone) or "sign" (ΣH > 0: a
    float comparison on the carried value, which follows x)."""
    rng = np.random.default_rng(3)
    then_branch = helper.make_graph([helper.make_node("Add", ["h", "x"], ["hx"]), helper.make_node("Tanh", ["hx"], ["t"])],
                                    "then", [], [helper.make_tensor_value_info("t", FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("MatMul", ["h", "w"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", FLOAT, None)])
    if condition == "parity":
        test = [helper.make_node("Mod", ["i", "two"], ["r"]), helper.make_node("Equal", ["r", "zero"], ["c"])]
    else:
        test = [helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "fzero"], ["c"])]
    body = helper.make_graph(
        test + [helper.make_node("If", ["c"], ["h_next"], then_branch=then_branch, else_branch=else_branch, name="step"),
                helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_next", FLOAT, None)])
    nodes = [helper.make_node("Loop", ["steps", "go", "x"], ["y"], body=body, name="loop")]
    return make_model(nodes, [("x", FLOAT, [1, 4])], [("y", FLOAT, [1, 4])], initializers={
        "steps": np.array(trips, np.int64), "go": np.array(True), "two": np.array(2, np.int64),
        "zero": np.array(0, np.int64), "fzero": np.array(0.0, np.float32),
        "w": (rng.standard_normal((4, 4)) * 0.9).astype(np.float32)}, opset=13)


@pytest.mark.parametrize("condition", ["parity", "sign"])
def test_the_ifs_of_an_unrolled_body_are_resolved_in_the_same_build(monkeypatch, condition):
    """Each trip's If takes its own branch (parity: then, else, then, ...; sign: a BranchSelect, the
    comparison following x). Resolved with the unrolling in one build: SLANet's 500 Ifs were first
    converted as modules in the unrolled graph, then normalized and converted again (CLI 131 s ->
    45 s). Oracle: onnxruntime on the original graph, at x and at the zero baseline."""
    import onnx_attr.importing.specialize as specialize

    builds = []
    build = specialize._build
    monkeypatch.setattr(specialize, "_build", lambda *a, **k: builds.append(1) or build(*a, **k))
    proto = _loop_with_if(condition)
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = np.array([[0.9, -1.7, 0.4, 1.1]], np.float32)
    method = onnx_attr.DeepLift(model)
    attributions, delta = method.attribute(x, target=2, return_convergence_delta=True)
    assert len(builds) == 1
    specialised = method.engine.model
    assert not any(n.op_type in ("If", "Loop") for n in specialised.onnx_model.graph.node)
    np.testing.assert_allclose(specialised.run(x)[0].numpy(), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-6)
    change = ort_run(proto, {"x": x})[0][0, 2] - ort_run(proto, {"x": 0 * x})[0][0, 2]
    assert abs(change) > 1e-2
    np.testing.assert_allclose(attributions.sum(), change, rtol=1e-5, atol=1e-6)
    assert method.last_report["max_relative_delta"] <= 1e-4
