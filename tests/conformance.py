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
    for g, e in zip(got, case.outputs):
        if not matches(_numpy(g), e):
            return "wrong", "differs from the expected output"
    return "pass", ""


def _numpy(t) -> np.ndarray:
    from onnx_attr.verify import _numpy as to_numpy

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


def run_onnxruntime(case: Case) -> str:
    """onnxruntime (CPU provider) on the same case, for the reference figure: "pass" or "fail"."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        out = session.run(None, dict(zip(names, case.inputs)))
        ok = len(out) == len(case.outputs) and all(matches(o, e) for o, e in zip(out, case.outputs))
        return "pass" if ok else "fail"
    except Exception:  # noqa: BLE001
        return "fail"
