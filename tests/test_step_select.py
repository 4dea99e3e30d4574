"""DeepLift through Where(compare(u, v), A, B) with the condition and the values from different
varying tensors (select_fusion.py, rules/branch.py StepSelectRule): a score masked where a computed
value crosses a threshold, a gate between two branches. Before, a comparison flipping between the
input and the reference was refused for the call.

Oracles: onnxruntime on every hybrid of the three players (the comparison's operands together, A,
B), with the Shapley formula applied by hand; completeness at logits in the hundreds with a far
reference; the fused module's forward against the plain one, bit for bit.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr


def _select_model(op: str = "Greater", two_sided: bool = False) -> onnx.ModelProto:
    """y = Where(op(u, v), A, B), elementwise over [N, 5]; v a constant unless two_sided."""
    names = ["u", "a", "b"] + (["v"] if two_sided else [])
    inits = [] if two_sided else [numpy_helper.from_array(np.float32(0.5).reshape(()), "v")]
    nodes = [helper.make_node(op, ["u", "v"], ["c"]), helper.make_node("Where", ["c", "a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 5]) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _shapley(f, players_x, players_0):
    """Exact Shapley values of the players (each a dict of inputs moved together), by enumeration."""
    n = len(players_x)
    values = []
    for p in range(n):
        others = [q for q in range(n) if q != p]
        total = 0.0
        for size in range(n):
            for s in itertools.combinations(others, size):
                w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)

                def point(subset):
                    feed = {}
                    for q in range(n):
                        feed.update(players_x[q] if q in subset else players_0[q])
                    return f(feed)

                total += w * (point(set(s) | {p}) - point(set(s)))
        values.append(total)
    return values


@pytest.mark.parametrize("op", ["Greater", "LessOrEqual", "Equal"])
def test_shares_are_shapley_values_from_onnxruntime(tmp_path, op):
    proto = _select_model(op)
    path = tmp_path / "select.onnx"
    onnx.save(proto, path)
    rng = np.random.default_rng(3)
    u = (rng.normal(size=(6, 5)) * 100).astype(np.float32)
    u[0, :2] = 0.5  # Equal holds there at the input
    a = (rng.normal(size=(6, 5)) * 300).astype(np.float32)
    b = (rng.normal(size=(6, 5)) * 300 + 200).astype(np.float32)
    u0 = np.full((1, 5), -40.0, np.float32)
    u0[0, 3] = 0.5  # and at the reference on another element
    a0 = np.full((1, 5), 250.0, np.float32)
    b0 = np.full((1, 5), -120.0, np.float32)
    model = onnx_attr.load(str(path))
    method = onnx_attr.DeepLift(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for j in range(5):
        found = method.attribute(tuple(torch.from_numpy(t) for t in (u, a, b)), target=j,
                                 baselines=tuple(torch.from_numpy(t) for t in (u0, a0, b0)))
        for row in range(6):
            def f(feed):
                full = {k: np.broadcast_to(v, (1, 5)).astype(np.float32).copy() for k, v in feed.items()}
                return float(session.run(None, full)[0][0, j])

            def player(t, name):
                return {name: t[row:row + 1] if t.shape[0] > 1 else t}

            expected = _shapley(f, [player(u, "u"), player(a, "a"), player(b, "b")],
                                      [{"u": u0}, {"a": a0}, {"b": b0}])
            got = [float(t[row, j]) for t in found]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
            others = [np.delete(t[row].numpy(), j) for t in found]  # y_j reads element j alone
            assert all(np.all(o == 0) for o in others)
    assert method.engine.rewrite.selects_fused  # fused, not refused or guarded


def _logic_model(logic: str, cast: bool) -> onnx.ModelProto:
    """y = Where(logic(u > 0.5, Not(w <= -1)), a, b) over [N, 4], or Cast(logic(...)) · 3 (no a, b)."""
    inits = [numpy_helper.from_array(np.float32(0.5).reshape(()), "half"),
             numpy_helper.from_array(np.float32(-1).reshape(()), "minus"),
             numpy_helper.from_array(np.float32(3).reshape(()), "three")]
    nodes = [helper.make_node("Greater", ["u", "half"], ["c1"]), helper.make_node("LessOrEqual", ["w", "minus"], ["c2"]),
             helper.make_node("Not", ["c2"], ["n2"]), helper.make_node(logic, ["c1", "n2"], ["c"])]
    names = ["u", "w"]
    if cast:
        nodes += [helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["cf", "three"], ["y"])]
    else:
        nodes += [helper.make_node("Where", ["c", "a", "b"], ["y"])]
        names += ["a", "b"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("cast", [False, True])
@pytest.mark.parametrize("logic", ["And", "Or", "Xor"])
def test_logic_between_comparisons_is_shapley_over_every_player(tmp_path, logic, cast):
    """Two comparisons joined by logic (one through a Not) select A or B, or are cast to a float:
    each comparison, A and B is a player; onnxruntime on all 2^4 (or 2^2) hybrids, Shapley by hand."""
    proto = _logic_model(logic, cast)
    path = tmp_path / "logic.onnx"
    onnx.save(proto, path)
    rng = np.random.default_rng(11)
    names = ["u", "w"] + ([] if cast else ["a", "b"])
    xs = {n: (rng.normal(size=(5, 4)) * 80).astype(np.float32) for n in names}
    refs = {n: (rng.normal(size=(1, 4)) * 80).astype(np.float32) for n in names}
    model = onnx_attr.load(str(path))
    method = onnx_attr.DeepLift(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    flips = 0
    for j in range(4):
        found = method.attribute(tuple(torch.from_numpy(xs[n]) for n in names), target=j,
                                 baselines=tuple(torch.from_numpy(refs[n]) for n in names))
        for row in range(5):
            def f(feed):
                return float(session.run(None, {k: np.asarray(v, np.float32) for k, v in feed.items()})[0][0, j])

            expected = _shapley(f, [{n: xs[n][row:row + 1]} for n in names], [{n: refs[n]} for n in names])
            np.testing.assert_allclose([float(t[row, j]) for t in found], expected, rtol=1e-5, atol=1e-3)
            flips += any(abs(e) > 0 for e in expected[:2])
    assert flips >= 3 and method.engine.rewrite.selects_fused


def test_a_held_mask_joined_and_broadcast(tmp_path):
    """Where(And(u > 0.5, mask), a, b): u [N, 1] decides a row, a held bool mask [N, 4] each element;
    u's share for element j is the comparison's Shapley value there (onnxruntime on the hybrids)."""
    inits = [numpy_helper.from_array(np.float32(0.5).reshape(()), "half")]
    nodes = [helper.make_node("Greater", ["u", "half"], ["c1"]), helper.make_node("And", ["c1", "mask"], ["c"]),
             helper.make_node("Where", ["c", "a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["N", 1]),
                                           helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "held.onnx"
    onnx.save(proto, path)
    rng = np.random.default_rng(2)
    u, a, b = (rng.normal(size=(3, 1)) * 50).astype(np.float32), *(rng.normal(size=(2, 3, 4)) * 50).astype(np.float32)
    mask = rng.random((3, 4)) > 0.4
    u0, a0, b0 = np.full((1, 1), -20.0, np.float32), np.ones((1, 4), np.float32), -np.ones((1, 4), np.float32)
    method = onnx_attr.DeepLift(onnx_attr.load(str(path)))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for j in range(4):
        found = method.attribute((torch.from_numpy(u), torch.from_numpy(a), torch.from_numpy(b)), target=j,
                                 baselines=(torch.from_numpy(u0), torch.from_numpy(a0), torch.from_numpy(b0)),
                                 additional_forward_args=(torch.from_numpy(mask),))
        for row in range(3):
            def f(feed):
                full = {"mask": mask[row:row + 1], **{k: np.asarray(v, np.float32) for k, v in feed.items()}}
                return float(session.run(None, full)[0][0, j])

            expected = _shapley(f, [{"u": u[row:row + 1]}, {"a": a[row:row + 1]}, {"b": b[row:row + 1]}],
                                [{"u": u0}, {"a": a0}, {"b": b0}])
            np.testing.assert_allclose([float(found[0][row, 0]), float(found[1][row, j]), float(found[2][row, j])],
                                       expected, rtol=1e-5, atol=1e-3)
    assert method.engine.rewrite.selects_fused


def test_both_operands_vary_split_by_their_changes(tmp_path):
    proto = _select_model("Less", two_sided=True)
    path = tmp_path / "select2.onnx"
    onnx.save(proto, path)
    rng = np.random.default_rng(5)
    u, a, b, v = ((rng.normal(size=(4, 5)) * 50).astype(np.float32) for _ in range(4))
    zeros = [np.zeros((1, 5), np.float32)] * 4
    model = onnx_attr.load(str(path))
    found, delta = onnx_attr.DeepLift(model).attribute(tuple(torch.from_numpy(t) for t in (u, a, b, v)), target=2,
                                                       baselines=tuple(torch.from_numpy(t) for t in zeros),
                                                       return_convergence_delta=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for row in range(4):
        def f(feed):
            return float(session.run(None, {k: np.asarray(t, np.float32) for k, t in feed.items()})[0][0, 2])

        pick = lambda t: {k: x[row:row + 1] for k, x in t.items()}  # noqa: E731
        d_x, d_0 = pick({"u": u, "v": v}), {"u": zeros[0], "v": zeros[0]}
        compare, share_a, share_b = _shapley(f, [d_x, pick({"a": a}), pick({"b": b})],
                                                   [d_0, {"a": zeros[0]}, {"b": zeros[0]}])
        du, dv = float(u[row, 2]), float(v[row, 2])
        # the comparison's share goes to u and v through d = u - v: in proportion to du and -dv
        expected_u = compare * du / (du - dv) if compare else 0.0
        expected_v = -compare * dv / (du - dv) if compare else 0.0
        np.testing.assert_allclose([float(found[i][row, 2]) for i in range(4)],
                                   [expected_u, share_a, share_b, expected_v], rtol=1e-5, atol=1e-4)
    assert float(delta.abs().max()) < 1e-3


def _masked_softmax(fill: float) -> onnx.ModelProto:
    """atspm's head: scores masked to `fill` where a computed t <= 0, the mask unsqueezed and cast on its
    way, then a softmax and a linear readout; t and the scores are different linear maps of x."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.normal(size=(8, 6)) * 3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.normal(size=(8, 6)) * 3).astype(np.float32), "V"),
             numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "R"),
             numpy_helper.from_array(np.float32(0).reshape(()), "zero"),
             numpy_helper.from_array(np.float32(fill).reshape(()), "fill"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("MatMul", ["x", "V"], ["s"]),
             helper.make_node("LessOrEqual", ["t", "zero"], ["c"]),
             helper.make_node("Unsqueeze", ["c", "ax0"], ["c1"]),
             helper.make_node("Cast", ["c1"], ["c2"], to=TensorProto.BOOL),
             helper.make_node("Not", ["c2"], ["keep"]),
             helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"]),
             helper.make_node("Where", ["keep", "s1", "fill"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "R"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_masked_softmax_complete_at_large_logits_and_forward_unchanged(tmp_path):
    path = tmp_path / "masked.onnx"
    onnx.save(_masked_softmax(-1e4), path)
    model = onnx_attr.load(str(path))
    rng = np.random.default_rng(1)
    x = torch.from_numpy((rng.normal(size=(6, 8)) * 30).astype(np.float32))  # scores in the hundreds
    baseline = torch.from_numpy((rng.normal(size=(1, 8)) * 30).astype(np.float32))  # far from x
    assert model.verify({"x": x.numpy()}).passed
    method = onnx_attr.DeepLift(model)
    for target in range(3):
        _, delta = method.attribute(x, target=(0, target), baselines=baseline, return_convergence_delta=True)
        assert method.last_report["max_relative_delta"] < 1e-5, method.last_report["max_relative_delta"]
    rewritten, plain = method.engine.rewrite.module, model.module
    method.engine.rewrite.state.mode = "off"
    assert torch.equal(rewritten(x), plain(x))
    # the masks do differ between the input and the baseline on most rows
    t = x.numpy() @ numpy_helper.to_array(model.onnx_model.graph.initializer[0])
    t0 = baseline.numpy() @ numpy_helper.to_array(model.onnx_model.graph.initializer[0])
    assert ((t <= 0) != (t0 <= 0)).any(axis=1).sum() >= 4


def test_infinite_fill_refused_when_it_flips_and_explained_when_not(tmp_path):
    path = tmp_path / "inf.onnx"
    onnx.save(_masked_softmax(-np.inf), path)
    model = onnx_attr.load(str(path))
    rng = np.random.default_rng(1)
    x = torch.from_numpy((rng.normal(size=(3, 8)) * 30).astype(np.float32))
    method = onnx_attr.DeepLift(model)
    far = torch.from_numpy((rng.normal(size=(1, 8)) * 30).astype(np.float32))
    with pytest.raises(onnx_attr.UnsupportedOpError, match="(?s)LessOrEqual#2.*infinite"):
        method.attribute(x, target=(0, 1), baselines=far)
    close = x[:1] * 0.5  # t scales with x: the same side of 0 everywhere, for the first row
    _, delta = method.attribute(x[:1], target=(0, 1), baselines=close, return_convergence_delta=True)
    assert float(delta.abs().max()) < 1e-4


def test_selection_of_indices_is_left_alone(tmp_path):
    """Where(x > 0, 1, 0) as int64 picking a Gather's row is an index, not a value: not fused."""
    inits = [numpy_helper.from_array(np.float32(0).reshape(()), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(0, np.int64), "nil"),
             numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(2, 6), "table")]
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["c"]),
             helper.make_node("Where", ["c", "one", "nil"], ["i"]),
             helper.make_node("Gather", ["table", "i"], ["row"], axis=0),
             helper.make_node("Mul", ["x", "row"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], inits)
    path = tmp_path / "index.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    method = onnx_attr.DeepLift(onnx_attr.load(str(path)))
    x = torch.arange(1.0, 7.0).reshape(1, 6)
    found = method.attribute(x, target=2)  # the baseline's sum is 0: the index flips, and the call says so
    assert not method.engine.rewrite.selects_fused
    assert torch.allclose(found, torch.tensor([[0.0, 0, 8 * 3, 0, 0, 0]]))
