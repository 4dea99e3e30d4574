"""The CLI's attribute pipeline runs the plain model once for what it needs of its outputs: the
default target, the verification and the pictures share that forward pass (a 640x640 detector
pays seconds per pass). The oracle for the verification: the same report computed on its own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import onnx_attr
from onnx import helper

from onnx_attr.app.attribute_job import run_attribute
from onnx_attr.app.visualize import PictureOptions
from onnx_attr.importing.model import AttributableModel
from onnx_attr.importing.verify import plain_run, verify

from conftest import FLOAT, make_model


def _model(tmp_path, walkable: bool = False):
    """Gemm + Relu. The graph walk (`batch_graph`) proves its rows apart, so no probe runs; written
    with an Einsum, an op the walk does not follow, the probe runs its rows."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1)] if walkable else [helper.make_node("Einsum", ["x", "w"], ["p"], equation="nk,jk->nj"),
                                        helper.make_node("Add", ["p", "b"], ["h"])]
    nodes.append(helper.make_node("Relu", ["h"], ["y"]))
    onnx_model = make_model(nodes, [("x", FLOAT, ["n", 6])], [("y", FLOAT, ["n", 3])],
                            {"w": rng.standard_normal((3, 6)).astype(np.float32),
                             "b": rng.standard_normal(3).astype(np.float32)})
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=rng.standard_normal((2, 6)).astype(np.float32))
    return onnx_attr.load(str(path)), inputs


def _count_forwards(monkeypatch) -> list:
    calls: list = []
    guarded = AttributableModel._guarded  # every forward of the plain model goes through it,
    unexplained = AttributableModel.run_unexplained  # or through this (the batch probe's trial rows)

    def counted(self, call, args):
        calls.append([tuple(a.shape) for a in args])
        return guarded(self, call, args)

    def counted_unexplained(self, *args):
        calls.append([tuple(a.shape) for a in args])
        return unexplained(self, *args)

    monkeypatch.setattr(AttributableModel, "_guarded", counted)
    monkeypatch.setattr(AttributableModel, "run_unexplained", counted_unexplained)
    return calls


def test_verify_reuses_the_plain_run(tmp_path, monkeypatch):
    model, inputs = _model(tmp_path)
    x = dict(np.load(inputs))
    alone = verify(model, x)
    run = plain_run(model, x)
    calls = _count_forwards(monkeypatch)
    shared = verify(model, x, run=run)
    assert calls == []  # onnxruntime only
    assert shared.to_dict() == alone.to_dict()


def test_a_run_of_another_model_is_not_reused(tmp_path, monkeypatch):
    model, inputs = _model(tmp_path)
    other, _ = _model(tmp_path)
    x = dict(np.load(inputs))
    run = plain_run(other, x)
    calls = _count_forwards(monkeypatch)
    verify(model, x, run=run)
    assert len(calls) == 1


def test_attribute_runs_the_plain_forward_once_beside_the_batch_probe(tmp_path, monkeypatch):
    model, inputs = _model(tmp_path)
    calls = _count_forwards(monkeypatch)
    report = run_attribute(model, input_path=str(inputs), target=None, baseline=None, method="deeplift",
                           output_name=None, out=str(tmp_path / "out"), pictures=PictureOptions(enabled=True),
                           quiet=True)
    # the probe's one row and its three rows [x, x', x] (first, so that a batch of 1 baked into the graph's
    # reshapes is known before any run: test_fixed_batch_rows), then one plain forward at the call's batch
    assert [c[0][0] for c in calls] == [1, 3, 2]
    assert report["verify"]["passed"]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["verify"] == verify(model, dict(np.load(inputs))).to_dict()


def test_one_example_is_run_once_for_target_verify_and_the_batch_probe(tmp_path, monkeypatch):
    """With one example, the plain forward is the probe's one-row run too: then only [x, x', x]."""
    model, inputs = _model(tmp_path)
    np.savez(inputs, x=np.random.default_rng(3).standard_normal((1, 6)).astype(np.float32))
    calls = _count_forwards(monkeypatch)
    report = run_attribute(model, input_path=str(inputs), target=None, baseline=None, method="deeplift",
                           output_name=None, out=str(tmp_path / "out"), pictures=PictureOptions(enabled=False),
                           quiet=True)
    assert [c[0][0] for c in calls] == [1, 3]
    assert report["verify"]["passed"] and abs(report["convergence_delta"][0]) < 1e-5


def test_a_graph_that_keeps_its_rows_apart_is_not_probed(tmp_path, monkeypatch):
    """The walk proves the Gemm's rows apart: the CLI runs the plain model once, for the target and
    the verification, and DeepLift's passes are all that follow (the rewritten module's)."""
    model, inputs = _model(tmp_path, walkable=True)
    calls = _count_forwards(monkeypatch)
    report = run_attribute(model, input_path=str(inputs), target=None, baseline=None, method="deeplift",
                           output_name=None, out=str(tmp_path / "out"), pictures=PictureOptions(enabled=False),
                           quiet=True)
    assert [c[0][0] for c in calls] == [2]
    assert report["verify"]["passed"] and max(abs(d) for d in report["convergence_delta"]) < 1e-5


@pytest.mark.parametrize("budget,four_rows", [("PASS_INPUT_ELEMENTS", 6 * 4), ("PASS_VALUE_BYTES", 36 * 4)])
def test_ig_steps_go_in_passes_under_each_budget(tmp_path, monkeypatch, budget, four_rows):
    """IG's stacked steps stay under `PASS_INPUT_ELEMENTS` per pass (the budget that keeps a large
    picture's 16 steps from filling the memory) and under `PASS_VALUE_BYTES` of forward values, measured
    on one row (a small input may compute large values: a diffusion U-Net, 64 KiB in, 0.5 GB per row;
    here by hand: the Einsum's, the Add's and the Relu's [1, 3] float32 outputs, 36 bytes), and give
    what one pass gives. `four_rows`: two steps of both examples a pass."""
    import torch

    import onnx_attr.methods.base as base

    model, inputs = _model(tmp_path)
    x = dict(np.load(inputs))["x"]  # 2 examples of 6 elements
    assert base.value_bytes_per_row(model, [torch.from_numpy(x)], [0]) == 36
    whole = onnx_attr.IntegratedGradients(model).attribute(x, target=1, n_steps=10)
    monkeypatch.setattr(base, budget, four_rows)
    calls = _count_forwards(monkeypatch)
    parts = onnx_attr.IntegratedGradients(model).attribute(x, target=1, n_steps=10)
    rows = [c[0][0] for c in calls]
    assert max(rows) == 4 and sum(r for r in rows if r == 4) == 20
    np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=1e-5, atol=1e-7)
