"""NaN as a missing value: the inputs whose NaN entries the graph itself reads as "missing".

Tabular models are made for rows with gaps. A LightGBM or XGBoost export routes a NaN feature down
each split's missing-value track, and scikit-learn's SimpleImputer (ONNX's Imputer) fills it with
the fitted value, so onnxruntime gives a finite prediction for such a row, and explaining it is a
fair question: what did this feature being missing do to the prediction, against the reference?

An input qualifies when every path from it reaches such a reader through data movement alone (a
Cast, a Reshape, a Concat, a Gather of its entries), where the NaN is still the very entry the
user gave. Any arithmetic on the way (a Scaler, a Mul) would carry the NaN into values no one can
read as missing, and those paths are refused, as before, with "clean or impute them first".

DeepLift takes such an input's NaN as one unit of change: the difference between a missing entry
and its (finite) reference is 1 (`deeplift.differences.difference`), so the multiplier there is the
entry's whole contribution. The readers' rules honour it: the trees' Shapley values divided by
that 1, the Imputer's secant (fill − reference) / 1; data movement passes multipliers unchanged.
Completeness is then exact as everywhere else: the contributions sum to f(x) − f(reference).
The perturbation methods need no such convention: they only run the model, so they take NaN in
any input for which the model's outputs stay finite (`check_outputs_finite`).
"""

from __future__ import annotations

import math
from typing import Sequence

import onnx
import torch
from torch import Tensor

from onnx_attr.errors import InputError

#: (domain, op) reading a NaN at input 0 as a missing value: the trees' missing-value tracks, the Imputer's fill
MISSING_READERS = frozenset({("ai.onnx.ml", "TreeEnsembleClassifier"), ("ai.onnx.ml", "TreeEnsembleRegressor"),
                             ("ai.onnx.ml", "TreeEnsemble"), ("ai.onnx.ml", "Imputer")})
#: data movement: each output entry is one input entry (at the positions named; None: any input)
_MOVES: dict[str, tuple[int, ...] | None] = {
    "Identity": (0,), "Cast": (0,), "Reshape": (0,), "Flatten": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Transpose": (0,), "Slice": (0,), "Gather": (0,), "Split": (0,), "Expand": (0,),
    "Concat": None,
}


def missing_value_inputs(model) -> frozenset[str]:
    """The names of the model's inputs whose NaN entries reach only readers of missing values
    (`MISSING_READERS`) through data movement alone; cached on the model."""
    found = model.__dict__.get("_missing_value_inputs")
    if found is None:
        found = model.__dict__["_missing_value_inputs"] = _read_as_missing(model.onnx_model.graph)
    return found


def _read_as_missing(graph) -> frozenset[str]:
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return frozenset()  # a subgraph reads outer values by name, not through node inputs: not followed
    consumers: dict[str, list] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, position))
    outputs = {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}

    def only_read(start: str) -> bool:
        seen, stack, readers = set(), [start], 0
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in outputs:  # the NaN itself would be an output
                return False
            for node, position in consumers.get(name, []):
                domain = node.domain or "ai.onnx"
                if (domain, node.op_type) in MISSING_READERS and position == 0 and _fills_nan(node):
                    readers += 1
                    continue
                if domain != "ai.onnx" or node.op_type not in _MOVES or not _keeps_nan(node):
                    return False  # arithmetic, a comparison, a custom op, a cast to an integer
                moves = _MOVES[node.op_type]
                if moves is not None and position not in moves:
                    return False  # a moving op's shape, axes or indices
                stack.extend(o for o in node.output if o)
        return readers > 0

    return frozenset(v.name for v in graph.input if v.name not in initializers and only_read(v.name))


#: the end of DeepLift's refusal of a NaN the graph does not read as a missing value
READ_AS_MISSING = ("; DeepLift takes NaN as a missing value only in an input the graph reads it from as one (a tree "
                   "ensemble's missing-value track or an imputer, reached through data movement alone, not through "
                   "arithmetic such as a Scaler); the perturbation methods (FeatureAblation, KernelShap) take it "
                   "wherever the model's output stays finite")


def _keeps_nan(node) -> bool:
    """A Cast keeps a NaN only to a floating type (to an integer it becomes some number)."""
    if node.op_type != "Cast":
        return True
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                  onnx.TensorProto.BFLOAT16)


def _fills_nan(node) -> bool:
    """A tree reads NaN always; an Imputer only where NaN is the value it replaces (its float default
    is 0, and an integer Imputer never sees one)."""
    if node.op_type != "Imputer":
        return True
    attrs = {a.name: a for a in node.attribute}
    return "replaced_value_float" in attrs and math.isnan(attrs["replaced_value_float"].f)


def has_missing(t: Tensor) -> bool:
    """Whether a floating tensor holds a NaN."""
    return t.is_floating_point() and bool(torch.isnan(t).any())


def missing_hint(model, names: Sequence[str]) -> str:
    """A sentence for the NaN refusal of a method that cannot take missing values, where the model
    reads them in some of `names`."""
    read = [n for n in names if n in missing_value_inputs(model)]
    if not read:
        return ""
    return (f"; the model reads NaN in {read} as a missing value (its trees or imputer take it): DeepLift, "
            "DeepLiftShap and the perturbation methods (FeatureAblation, ShapleyValueSampling, KernelShap, "
            "Occlusion) explain such rows; this method does not (a gradient has no value at a missing entry, "
            "and Lime weighs its samples by distances, which a missing entry has none of)")


def check_outputs_finite(model, tensors: Sequence[Tensor], attributed: Sequence[bool], what: str = "input") -> None:
    """For a call with NaN in an attributed input (taken as missing values by a method that only runs
    the model): the model's floating outputs at the input must be finite, or the graph does not read
    those NaN as missing values, and a clear error says so. One forward, only on such calls."""
    carriers = [t for t, a in zip(tensors, attributed) if a and has_missing(t)]
    if not carriers:
        return
    try:
        with torch.no_grad():
            out = getattr(model, "run_unexplained", model)(*tensors)
    except Exception:  # noqa: BLE001  (all rows at once where an export fixes its batch: the method's own
        return  # passes feed them in its size, and any NaN they bring back is in the attributions to see)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for spec, value in zip(model.outputs, outs):
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            names = [s.name for s, t, a in zip(model.inputs, tensors, attributed) if a and has_missing(t)]
            raise InputError(f"{what}(s) {names} hold NaN, and the model's output {spec.name!r} is not finite "
                             "there: the graph does not read those NaN as missing values (a tree ensemble's "
                             "missing-value track or an imputer would), so there is nothing to explain; clean or "
                             "impute them first")
