"""FeatureAblation's time budget (the CLI's fallback where DeepLift refuses): fewer blocks where
their forward passes would take longer, fitted once from the unperturbed pass and kept; a resumed
run repeats the first run's cut. The clock is faked so that a pass "takes" a known time."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from onnx import helper

import onnx_attr
import onnx_attr.methods.perturbation as perturbation
from conftest import FLOAT, make_model


class Clock:
    """perf_counter for the budget's fit: every reading `step` seconds after the last."""

    def __init__(self, step: float):
        self.now, self.step, self.readings = 0.0, step, 0

    def perf_counter(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


def _model(tmp_path, size: int = 24):
    """y = Σ (x · w) over an image [n, 3, size, size]: each block's drop is its own weighted sum."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 3, size, size)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]),
             helper.make_node("ReduceSum", ["xw"], ["y"], keepdims=0, axes=[1, 2, 3])]
    path = tmp_path / "m.onnx"
    import onnx

    onnx.save(make_model(nodes, [("x", FLOAT, ["n", 3, size, size])], [("y", FLOAT, ["n"])], {"w": w}, opset=12),
              path)
    return onnx_attr.load(str(path)), w


def test_a_slow_pass_gets_fewer_blocks_fitted_once(tmp_path, monkeypatch):
    model, w = _model(tmp_path)
    x = np.random.default_rng(1).normal(size=(1, 3, 24, 24)).astype(np.float32) * 100
    clock = Clock(step=2.0)  # the unperturbed pass "takes" 2 s
    monkeypatch.setattr(perturbation, "time", clock)
    fa = onnx_attr.FeatureAblation(model, max_features=256, time_budget_s=40)
    got = fa.attribute(x)
    assert fa.fitted_features == 20 and clock.readings == 2  # 40 s / 2 s a pass
    assert fa.last_report["blocks_per_input"] == {"x": 16}  # a 4 x 4 grid: the most blocks under 20
    # the same blocks as asked for directly, and each block's drop is its own Σ x·w (by hand)
    assert np.array_equal(got, onnx_attr.FeatureAblation(model, max_features=20).attribute(x))
    ids = perturbation.block_groups((3, 24, 24), 20)[0].numpy()
    per_block = {b: float((x[0] * w[0])[ids == b].sum()) for b in np.unique(ids)}
    np.testing.assert_allclose(got[0], np.vectorize(per_block.get)(ids), rtol=1e-4, atol=1e-3)
    fa.attribute(x)  # kept: no second fit
    assert clock.readings == 2 and fa.last_report["fitted_features"] == 20


def test_the_budget_never_cuts_below_the_minimum(tmp_path, monkeypatch):
    model, _ = _model(tmp_path)
    monkeypatch.setattr(perturbation, "time", Clock(step=1000.0))
    fa = onnx_attr.FeatureAblation(model, max_features=256, time_budget_s=1)
    fa.attribute(np.ones((1, 3, 24, 24), np.float32))
    assert fa.fitted_features == onnx_attr.FeatureAblation.MIN_BLOCKS


def test_a_budget_needs_max_features(tmp_path):
    model, _ = _model(tmp_path)
    with pytest.raises(onnx_attr.InputError, match="time_budget_s"):
        onnx_attr.FeatureAblation(model, time_budget_s=10)


def test_a_resumed_cli_run_repeats_the_first_runs_cut(tmp_path, capsys):
    """The CLI falls back to FeatureAblation where DeepLift has no rule (Mod here); a resumed folder run
    cuts its new inputs into as many blocks as a finished result records."""
    import onnx

    from onnx_attr.app.cli import main

    w = np.random.default_rng(0).normal(size=(600, 2)).astype(np.float32)
    nodes = [helper.make_node("Mod", ["x", "seven"], ["r"], fmod=1), helper.make_node("MatMul", ["r", "w"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("x", FLOAT, ["n", 600])], [("y", FLOAT, ["n", 2])],
                         {"seven": np.float32(7), "w": w}, opset=13), path)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        np.savez(folder / f"{name}.npz", x=np.random.default_rng(seed).normal(size=(1, 600)).astype(np.float32) * 3)
    assert main(["attribute", str(path), "-i", str(folder), "-o", str(out), "--target", "0", "-q"]) == 0
    first = json.loads((out / "a.npz" / "report.json").read_text())
    assert first["manifest"]["method"] == "featureablation" and first["fitted_features"] == 256
    first["fitted_features"] = 32  # as if the first run had fitted 32 blocks on a slower machine
    (out / "a.npz" / "report.json").write_text(json.dumps(first))
    shutil.rmtree(out / "b.npz")
    assert main(["attribute", str(path), "-i", str(folder), "-o", str(out), "--target", "0", "-q", "--resume"]) == 0
    again = json.loads((out / "b.npz" / "report.json").read_text())
    assert again["fitted_features"] == 32 and again["blocks_per_input"] == {"x": 32}


def test_an_input_of_few_elements_is_cut_too_where_its_passes_would_not_fit(tmp_path, monkeypatch):
    """256 token ids (no more than max_features) were ablated one pass each, past any budget (hunt 29:
    a quantized DeBERTa, 0.7 s a pass, the CLI's fallback past 300 s). Under the budget they are cut
    into blocks like any input; where the passes fit, each element stays its own feature."""
    size = 9  # 3 x 9 x 9 = 243 elements, under max_features
    model, w = _model(tmp_path, size)
    x = np.random.default_rng(2).normal(size=(1, 3, size, size)).astype(np.float32) * 100
    monkeypatch.setattr(perturbation, "time", Clock(step=2.0))
    fa = onnx_attr.FeatureAblation(model, max_features=256, time_budget_s=40)
    got = fa.attribute(x)
    ids = perturbation.block_groups((3, size, size), 20)[0].numpy()
    assert fa.fitted_features == 20 and fa.last_report["blocks_per_input"] == {"x": len(np.unique(ids))} and \
        len(np.unique(ids)) <= 20
    per_block = {b: float((x[0] * w[0])[ids == b].sum()) for b in np.unique(ids)}
    np.testing.assert_allclose(got[0], np.vectorize(per_block.get)(ids), rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(perturbation, "time", Clock(step=0.01))  # fast passes: one per element, as before
    fast = onnx_attr.FeatureAblation(model, max_features=256, time_budget_s=40)
    np.testing.assert_allclose(fast.attribute(x)[0], x[0] * w[0], rtol=1e-4, atol=1e-3)
    assert "blocks_per_input" not in fast.last_report
