"""Axes known only at run time are checked against the rank, as onnxruntime checks them (the
reductions' `axes` input, CenterCropPad on an input whose rank inference lost); an Einsum whose
output is huge from tiny operands is refused by the element budget before it allocates."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize("op,opset", [("ReduceSum", 13), ("ReduceMean", 18), ("ReduceMax", 18), ("ReduceL2", 18),
                                      ("ReduceLogSumExp", 18)])
def test_reduction_axes_given_at_run_time_outside_the_rank_are_refused(op, opset):
    model = make_model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=0, name="fold")],
                       [("x", FLOAT, [2, 3]), ("axes", INT64, [1])], [("y", FLOAT, ["a"])], opset=opset)
    imported = onnx_attr.load(model, strip_final_activation=False)
    feeds = {"x": X, "axes": np.array([-1])}
    np.testing.assert_allclose(imported.run(feeds)[0].numpy(), _ort(model, feeds)[0], rtol=1e-6)
    bad = {"x": X, "axes": np.array([3])}
    with pytest.raises(Exception):
        _ort(model, bad)
    with pytest.raises(onnx_attr.OnnxAttrError, match=rf"'fold' \(op {op}, opset {opset}\).*axis 3.*2 axes"):
        imported.run(bad)


def test_center_crop_pad_axes_on_an_input_of_unknown_rank_are_refused_at_run_time():
    """The rank is lost (a Reshape to a shape fed at run time), so the load cannot check the axes
    attribute; the call does, where the converter would have taken it modulo the rank."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("CenterCropPad", ["r", "size"], ["y"], axes=[3], name="crop")]
    model = make_model(nodes, [("x", FLOAT, [2, 3]), ("shape", INT64, ["k"]), ("size", INT64, [1])],
                       [("y", FLOAT, ["a", "b"])], opset=18)
    feeds = {"x": X, "shape": np.array([3, 2]), "size": np.array([1])}
    with pytest.raises(Exception):
        _ort(model, feeds)
    with pytest.raises(onnx_attr.OnnxAttrError, match=r"'crop' \(op CenterCropPad, opset 18\).*axis 3.*2 axes"):
        onnx_attr.load(model).run(feeds)


def _einsum(equation, shapes, out_rank):
    names = [f"x{i}" for i in range(len(shapes))]
    return make_model([helper.make_node("Einsum", names, ["y"], equation=equation, name="outer")],
                      [(n, FLOAT, s) for n, s in zip(names, shapes)], [("y", FLOAT, [f"o{i}" for i in range(out_rank)])],
                      opset=13)


def test_an_einsum_outer_product_over_the_budget_is_refused_before_it_allocates():
    model = onnx_attr.load(_einsum("i,j,k->ijk", [["a"], ["b"], ["c"]], 3))
    small = [np.arange(1, 5, dtype=np.float32)] * 3
    np.testing.assert_allclose(model.run(small)[0].numpy(), _ort(model.reference_model, dict(zip(
        ["x0", "x1", "x2"], small)))[0])
    with pytest.raises(onnx_attr.BudgetError, match=r"'outer' \(op Einsum.*1,000,000,000.*max_elements"):
        model.run([np.ones(1000, np.float32)] * 3)
    model.budget.max_elements = 10**9
    assert model.budget.max_elements == 10**9  # raising it lets it through (not run here: 4 GB)


@pytest.mark.parametrize("equation,shapes,out", [
    ("...i,...j", [(2, 3), (2, 4)], (2, 3, 4)),  # implicit output, ellipsis broadcast
    ("bij,bjk->bik", [(2, 3, 4), (1, 4, 5)], (2, 3, 5)),
    ("ii->i", [(3, 3)], (3,)),
])
def test_einsum_sizes_are_estimated_from_the_equation(equation, shapes, out):
    from onnx_attr.importing.budget import ESTIMATORS

    tensors = [np.zeros(s, np.float32) for s in shapes]
    import torch

    get = lambda i: torch.from_numpy(tensors[i]) if i < len(tensors) else None  # noqa: E731
    assert ESTIMATORS["Einsum"](get, {"equation": equation.encode()}, 13) == int(np.prod(out))
    model = _einsum(equation, [[f"d{i}{j}" for j in range(len(s))] for i, s in enumerate(shapes)], len(out))
    feeds = {f"x{i}": t for i, t in enumerate(tensors)}
    assert onnx_attr.load(model).run(feeds)[0].shape == out == _ort(model, feeds)[0].shape
