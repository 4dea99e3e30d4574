"""Hostile model files (issue 17): every one ends in a result or a clear `OnnxAttrError`,
never a signal, a hang, unbounded memory or a raw traceback. onnxruntime is the oracle
where it can run the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_attr
from onnx_attr.errors import OnnxAttrError, ReferenceRuntimeError


def _model(nodes, inputs, outputs, initializers=(), opset=13, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _binary(op: str, dtype: int, **attrs) -> onnx.ModelProto:
    return _model([helper.make_node(op, ["a", "b"], ["c"], **attrs)],
                  [helper.make_tensor_value_info(n, dtype, [5]) for n in "ab"],
                  [helper.make_tensor_value_info("c", dtype, [5])])


# -- 1. INT_MIN / -1 -------------------------------------------------------------------------

def test_int_min_by_minus_one_runs_in_a_child_process_without_a_signal():
    """The kernel trap is a signal: only a separate process can see it without dying of it."""
    script = textwrap.dedent("""
        import numpy as np, onnx, onnx_attr
        from onnx import helper, TensorProto as T
        from onnx_attr.errors import ReferenceRuntimeError
        for dt, npd in ((T.INT64, np.int64), (T.INT32, np.int32)):
            low = np.iinfo(npd).min
            # in the constants only: nothing but the model file is needed to reach it
            consts = [helper.make_tensor("a", dt, [2], [int(low), 6]), helper.make_tensor("b", dt, [2], [-1, -1])]
            g = helper.make_graph([helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Add", ["q", "x"], ["y"])],
                                  "g", [helper.make_tensor_value_info("x", dt, [2])],
                                  [helper.make_tensor_value_info("y", dt, [2])], consts)
            m = onnx_attr.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
            print(dt, m.run({"x": np.zeros(2, npd)})[0].tolist())
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert f"{TensorProto.INT64} [{-2**63}, -6]" in done.stdout
    assert f"{TensorProto.INT32} [{-2**31}, -6]" in done.stdout


@pytest.mark.parametrize("dtype,npd", [(TensorProto.INT32, np.int32), (TensorProto.INT16, np.int16)])
def test_integer_div_matches_onnxruntime_at_the_overflow(dtype, npd):
    low = np.iinfo(npd).min
    a = np.array([low, low, 7, -7, low + 1], npd)
    b = np.array([-1, 1, -2, 2, -1], npd)
    model = _binary("Div", dtype)
    if dtype == TensorProto.INT16:  # onnxruntime has no int16 Div kernel: the ONNX definition is the oracle
        expected = np.array([low, low, -3, -3, -(low + 1)], npd)
    else:
        expected = _ort(model, {"a": a, "b": b})[0]
    ours = onnx_attr.load(model).run({"a": a, "b": b})[0].numpy()
    np.testing.assert_array_equal(ours, expected)
    assert ours[0] == low  # two's complement wrap, what onnxruntime gives for int32


def test_int64_overflow_in_inputs_runs_and_verify_refuses_the_crashing_reference():
    a = np.array([-2**63, 9, -9, 5, 0], np.int64)
    b = np.array([-1, -1, 4, -3, -1], np.int64)
    model = onnx_attr.load(_binary("Div", TensorProto.INT64))
    assert model.run({"a": a, "b": b})[0].tolist() == [-2**63, -9, -2, -1, 0]
    with pytest.raises(ReferenceRuntimeError, match="INT64_MIN"):
        model.verify({"a": a, "b": b})
    assert model.verify({"a": a, "b": np.array([3, -1, 4, -3, -1], np.int64)}).passed


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype,npd", [(TensorProto.INT64, np.int64), (TensorProto.INT32, np.int32)])
def test_integer_mod_matches_onnxruntime_at_the_overflow(fmod, dtype, npd):
    low = np.iinfo(npd).min
    a = np.array([low, low, 7, -7, low + 3], npd)
    b = np.array([-1, 1, -2, 2, -2], npd)
    model = _binary("Mod", dtype, fmod=fmod)
    expected = _ort(model, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(onnx_attr.load(model).run({"a": a, "b": b})[0].numpy(), expected)
    assert onnx_attr.load(model).verify({"a": a, "b": b}).passed


def test_integer_division_by_zero_is_a_clear_error():
    model = onnx_attr.load(_binary("Div", TensorProto.INT32))
    with pytest.raises(OnnxAttrError, match="Div"):
        model.run({"a": np.ones(5, np.int32), "b": np.zeros(5, np.int32)})
