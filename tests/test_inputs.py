"""Inputs that do not fit the model are refused before any compute, naming the ONNX input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_attr
from onnx_attr import InputError
from onnx_attr.importing.inputs import all_finite, read_npz

from conftest import FLOAT, INT64, make_model
from onnx import helper


@pytest.fixture
def model(tiny_mlp):
    return onnx_attr.load(tiny_mlp)


def test_wrong_rank(model):
    with pytest.raises(InputError, match=r"'x' expects rank 2 \[batch, 4\], got shape \[4\]"):
        model.run(np.zeros(4, np.float32))


def test_wrong_fixed_dim(model):
    with pytest.raises(InputError, match="axis 1 must be 4"):
        model.run(np.zeros((2, 5), np.float32))


def test_wrong_dtype_kind(model):
    with pytest.raises(InputError, match="expects float32 values"):
        model.run(np.zeros((2, 4), np.int64))


def test_float64_is_accepted_as_float32(model):
    assert model.run(np.zeros((2, 4), np.float64))[0].dtype == torch.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_for_attribution_but_runs(model, bad):
    x = np.zeros((2, 4), np.float32)
    x[1, 2] = bad
    with pytest.raises(InputError, match="1 NaN or infinite"):
        onnx_attr.DeepLift(model).attribute(x, target=0)
    out = model.run(x)[0]  # the forward computes what the graph computes, as onnxruntime does
    assert bool(torch.isfinite(out[0]).all()) and not bool(torch.isfinite(out[1]).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_is_exact_even_where_the_sum_overflows(dtype):
    big = torch.full((1000,), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not bool(torch.isfinite(big.sum()))  # the one-pass test overflows: the exact one decides
    assert all_finite(big) and all_finite(-big) and all_finite(torch.zeros(0, dtype=dtype))
    for bad in (float("nan"), float("inf"), -float("inf")):
        for values in (big.clone(), torch.ones(1000, dtype=dtype)):
            values[617] = bad
            assert not all_finite(values)
    mixed = torch.ones(6, dtype=dtype)
    mixed[1], mixed[4] = float("inf"), -float("inf")  # inf - inf is NaN: still not finite
    assert not all_finite(mixed)


def test_non_finite_value_in_an_unattributed_input_is_accepted():
    """An additive attention mask of -inf rides along as an additional forward arg."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "mask"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)],
        "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
                   helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    masked = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                            strip_final_activation=False)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    mask = np.array([[0.0, 0.0, -np.inf]], np.float32)
    attributions, delta = onnx_attr.DeepLift(masked).attribute(
        x, target=1, additional_forward_args=(mask,), return_convergence_delta=True)
    assert attributions[0, 2] == 0 and abs(float(delta[0])) < 1e-5


def test_empty_batch_is_refused_for_attribution_but_runs(model):
    assert model.run(np.zeros((0, 4), np.float32))[0].shape == (0, 3)  # a legal tensor for the graph
    with pytest.raises(InputError, match="no examples"):
        onnx_attr.DeepLift(model).attribute(np.zeros((0, 4), np.float32), target=0)


def test_missing_and_extra_names(model):
    with pytest.raises(InputError, match=r"missing \['x'\]; unexpected \['y'\]"):
        model.run({"y": np.zeros((1, 4), np.float32)})


def test_wrong_count(model):
    with pytest.raises(InputError, match="takes 1 input"):
        model.run([np.zeros((1, 4), np.float32)] * 2)


def test_shared_symbolic_dim_must_agree():
    node = helper.make_node("Add", ["a", "b"], ["y"])
    m = onnx_attr.load(make_model([node], [("a", FLOAT, ["n", 2]), ("b", FLOAT, ["n", 2])], [("y", FLOAT, ["n", 2])]))
    with pytest.raises(InputError, match="'n'"):
        m.run({"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 2), np.float32)})


def test_token_ids_must_be_integers():
    node = helper.make_node("Gather", ["table", "ids"], ["y"])
    m = onnx_attr.load(make_model([node], [("ids", INT64, [3])], [("y", FLOAT, [3, 2])],
                                  {"table": np.ones((5, 2), np.float32)}))
    assert not m.inputs[0].differentiable
    with pytest.raises(InputError, match="token ids must be integers"):
        m.run(np.array([0.0, 1.0, 2.0]))


def test_npz_with_pickled_objects_is_refused(tmp_path, model):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="cannot read"):
        read_npz(path, model.inputs)


def test_npz_not_a_zip(tmp_path, model):
    path = tmp_path / "x.npz"
    path.write_text("nope")
    with pytest.raises(InputError, match="cannot read"):
        read_npz(path, model.inputs)


def test_npz_single_unnamed_array(tmp_path, model):
    path = tmp_path / "x.npz"
    np.savez(path, np.ones((2, 4), np.float32))
    assert set(read_npz(path, model.inputs)) == {"x"}


def test_bad_baselines_are_refused_before_any_compute(model):
    dl = onnx_attr.DeepLift(model)
    x = np.ones((2, 4), np.float32)
    with pytest.raises(InputError, match="baseline 'x' has 1 NaN"):
        dl.attribute(x, np.array([[0.0, np.nan, 0.0, 0.0]], np.float32), target=0)
    with pytest.raises(InputError, match="baseline for 'x' has shape \\[3, 4\\]"):
        dl.attribute(x, np.zeros((3, 4), np.float32), target=0)  # neither a batch of 1 nor of 2
    with pytest.raises(InputError, match="does not broadcast to the input.s shape \\[2, 4\\]: give \\[4\\]"):
        dl.attribute(x, np.zeros((1, 5), np.float32), target=0)
