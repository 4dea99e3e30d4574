"""ONNX's backend node suite as a conformance measure: every one-node tensor case the installed
onnx package generates, imported with onnx_attr.load, run, and compared with its expected outputs.

Outcomes: "pass"; "clear" (one of our OnnxAttrError types, naming the op: a documented refusal);
"wrong" (ran, but the answer differs); "crash" (any other exception: a bug to fix).
Used by tests/test_node_suite.py (the regression guard) and benchmarks/node_suite.py (the figure).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import onnx

RTOL, ATOL = 1e-3, 1e-5


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def tensor_cases() -> Iterator[Case]:
    """The node cases whose inputs and expected outputs are all plain tensors (first data set)."""
    from onnx.backend.test.case.node import collect_testcases

    for case in collect_testcases():
        if not case.data_sets or case.model is None:
            continue
        inputs, outputs = case.data_sets[0]
        if all(isinstance(a, np.ndarray) for a in (*inputs, *outputs)):
            yield Case(case.name, case.model, list(inputs), list(outputs))


def matches(got: np.ndarray, expected: np.ndarray) -> bool:
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False
    if expected.dtype.kind in "fc":
        nan = np.isnan(expected)
        if not np.array_equal(np.isnan(got.astype(expected.dtype)), nan):
            return False
        return bool(np.allclose(got[~nan].astype(np.float64), expected[~nan].astype(np.float64), rtol=RTOL,
                                atol=ATOL, equal_nan=True))
    return bool(np.array_equal(got, expected))


def run_ours(case: Case) -> tuple[str, str]:
    import onnx_attr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx_attr.load(case.model, strip_final_activation=False)
            feeds = {spec.name: value for spec, value in zip(model.inputs, case.inputs)}
            got = model.run(feeds)
    except onnx_attr.OnnxAttrError as err:
        return "clear", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    except Exception as err:  # noqa: BLE001 - a raw exception is the outcome being measured
        return "crash", f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    if len(got) != len(case.outputs):
        return "wrong", f"{len(got)} outputs, expected {len(case.outputs)}"
    got = [_numpy(g) for g in got]
    if all(matches(g, e) for g, e in zip(got, case.outputs)):
        return "pass", ""
    low = [str(e.dtype) for e in case.outputs if str(e.dtype) in _LOW_PRECISION_EPS]
    if low:
        ours_err, ref_err = _ulps_from_exact(case, got)
        return "wrong", (f"differs; against the graph evaluated in float64 ours is within {ours_err:.2f} {low[0]} "
                         f"ulp, the expected output {ref_err:.2f}")
    return "wrong", "differs from the expected output"


#: machine epsilon of the low-precision float types, where rtol 1e-3 asks for more than they hold
_LOW_PRECISION_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def _ulps_from_exact(case: Case, got: list[np.ndarray]) -> tuple[float, float]:
    """The largest error, in units in the last place, of our outputs and of the expected ones
    against ONNX's reference evaluator run on the same graph retyped to float64: an oracle for
    which answer is right when a low-precision case differs only by rounding order."""
    from onnx import TensorProto, numpy_helper
    from onnx.reference import ReferenceEvaluator

    low = (TensorProto.BFLOAT16, TensorProto.FLOAT16)
    model = onnx.ModelProto()
    model.CopyFrom(case.model)

    def widen(t: onnx.TensorProto) -> None:
        if t.data_type in low:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    graph = model.graph
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.type.tensor_type.elem_type in low:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for t in graph.initializer:
        widen(t)
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i in low:
                a.i = TensorProto.DOUBLE
            elif a.type == onnx.AttributeProto.TENSOR:
                widen(a.t)
    feeds = {i.name: (x.astype(np.float64) if str(x.dtype) in _LOW_PRECISION_EPS else x)
             for i, x in zip(graph.input, case.inputs)}
    exact = ReferenceEvaluator(model).run(None, feeds)
    ours = ref = 0.0
    for g, e, x in zip(got, case.outputs, exact):
        eps = _LOW_PRECISION_EPS.get(str(e.dtype))
        if eps is None:
            continue
        x = np.asarray(x, np.float64)
        ulp = eps * 2.0 ** np.floor(np.log2(np.maximum(np.abs(x), np.finfo(np.float32).tiny)))
        ours = max(ours, float(np.max(np.abs(g.astype(np.float64) - x) / ulp)))
        ref = max(ref, float(np.max(np.abs(e.astype(np.float64) - x) / ulp)))
    return ours, ref


def _numpy(t) -> np.ndarray:
    from onnx_attr.importing.verify import _numpy as to_numpy

    return to_numpy(t)


def run_onnx2torch(case: Case) -> str:
    """onnx2torch as it is, for the comparison figure: "pass" or "fail"."""
    import torch
    from onnx2torch import convert

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = convert(case.model)
            with torch.no_grad():
                out = module(*[torch.from_numpy(np.array(a)) for a in case.inputs])
        out = out if isinstance(out, (tuple, list)) else [out]
        ok = len(out) == len(case.outputs) and all(matches(o.numpy(), e) for o, e in zip(out, case.outputs))
        return "pass" if ok else "fail"
    except Exception:  # noqa: BLE001
        return "fail"


def summarize(results: dict[str, tuple[str, str]], op_of: Callable[[str], str]) -> dict[str, dict[str, int]]:
    by_op: dict[str, dict[str, int]] = {}
    for name, (outcome, _) in results.items():
        counts = by_op.setdefault(op_of(name), {"pass": 0, "clear": 0, "wrong": 0, "crash": 0})
        counts[outcome] += 1
    return by_op


def onnxruntime_outputs(case: Case) -> list[np.ndarray]:
    """onnxruntime (CPU provider) on the case's inputs; raises whatever onnxruntime raises."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, case.inputs)))


def run_onnxruntime(case: Case) -> str:
    """onnxruntime on the same case, for the reference figure: "pass" or "fail"."""
    try:
        out = onnxruntime_outputs(case)
        ok = len(out) == len(case.outputs) and all(matches(o, e) for o, e in zip(out, case.outputs))
        return "pass" if ok else "fail"
    except Exception:  # noqa: BLE001
        return "fail"


def agrees_with_onnxruntime(case: Case) -> bool:
    """Whether our outputs match onnxruntime's (for a "wrong" case: the reference is the odd one out)."""
    import onnx_attr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx_attr.load(case.model, strip_final_activation=False)
            ours = model.run({spec.name: value for spec, value in zip(model.inputs, case.inputs)})
        theirs = onnxruntime_outputs(case)
    except Exception:  # noqa: BLE001
        return False
    return len(ours) == len(theirs) and all(matches(_numpy(o), t) for o, t in zip(ours, theirs))
