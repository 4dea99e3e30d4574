"""Op kinds have one source: linear and structural ops are listed in opkinds, every other kind is
declared by the op's rule, and every op we can import is one of those or refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from onnx_attr.deeplift.opkinds import EXPANSION_STEPS, ML_EXPANDED, LINEAR, ONNX_EXPANDED, MICROSOFT_KINDS, REFUSED, STRUCTURAL, domain_op_kind, op_kind
from onnx_attr.deeplift.rules import RULES
from onnx_attr.importing.converters.registry import supported_ops

IMPORTABLE = sorted({("" if d == "ai.onnx" else d, t) for d, t, _, _ in supported_ops()})


def _kinds(domain: str, op: str) -> set[str]:
    """The op's kind with one varying input, with every input varying."""
    return {domain_op_kind(domain, op, [True]), domain_op_kind(domain, op, [True] * 4)}


@pytest.mark.parametrize("domain,op", IMPORTABLE, ids=[f"{d or 'ai.onnx'}:{o}" for d, o in IMPORTABLE])
def test_every_importable_op_has_a_kind_a_rule_or_a_refusal(domain, op):
    kinds = _kinds(domain, op)
    if "unknown" in kinds:
        assert op in REFUSED, (f"{domain or 'ai.onnx'}:{op} imports but has no DeepLift kind: list it as linear or "
                               "structural in opkinds, give it a rule (rules/), or add it to opkinds.REFUSED with why")
        return
    if domain == "com.microsoft":  # expanded into ai.onnx ops before the rewrite (converters/microsoft.py)
        assert op in MICROSOFT_KINDS or op == "FusedMatMul", op
        return
    if (domain == "ai.onnx.ml" and op in ML_EXPANDED) or (domain == "" and op in ONNX_EXPANDED):  # likewise
        return
    for kind in kinds - {"linear", "structural"}:
        assert op in RULES, (op, kind)


def test_one_source_for_each_op():
    assert not LINEAR & STRUCTURAL
    # products only when both vary; a segment max only with a max/min reduction
    overlap = (LINEAR | STRUCTURAL) & set(RULES) - {"Conv", "ConvTranspose", "ScatterElements"}
    assert not overlap, f"listed in opkinds and with a rule: {sorted(overlap)}"
    assert not set(REFUSED) & set(RULES), "a refused op has a rule"
    stale = set(REFUSED) - {op for _, op in IMPORTABLE} - EXPANSION_STEPS
    assert not stale, f"REFUSED lists ops that do not import: {sorted(stale)}"


@pytest.mark.parametrize("op", sorted(RULES))
def test_the_rule_declares_the_kind(op):
    if op in {"LogSumExpPool", "QuantizedBlock", "SelfGated"}:  # our own domains' nodes
        return
    rule_kind = RULES[op].kind
    attrs = {"reduction": "max"} if op == "ScatterElements" else None
    assert op_kind(op, [True, True, True], attrs) == rule_kind or (op in ("Conv", "ConvTranspose") and rule_kind == "bilinear")


def test_a_refused_op_is_named_with_the_reason():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="pick")], "g", [x], [y])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                           strip_final_activation=False)
    with pytest.raises(onnx_attr.UnsupportedOpError, match="Hardmax") as err:
        onnx_attr.DeepLift(model).attribute(np.ones((2, 6), np.float32), target=0)
    assert REFUSED["Hardmax"] in str(err.value) and "pick" in str(err.value)


def test_control_flow_is_shown_as_resolved_per_call_not_unknown():
    """inspect listed a silero VAD's `If` on its sample rate as `unknown` (hunt 28), beside ops DeepLift
    refuses, though specialize.py settles it on each call's values before the rewrite."""
    from onnx_attr.deeplift.opkinds import nonlinear_nodes

    branch = lambda k: helper.make_graph([helper.make_node("Mul", ["x", k], ["o"])], f"b{k}", [],  # noqa: E731
                                         [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", 2])])
    nodes = [helper.make_node("Greater", ["sr", "limit"], ["c"]),
             helper.make_node("If", ["c"], ["y"], name="rate", then_branch=branch("two"), else_branch=branch("three"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
                                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor(k, TensorProto.FLOAT, [], [v]) for k, v in (("two", 2), ("three", 3))]
                              + [helper.make_tensor("limit", TensorProto.INT64, [], [8000])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    kinds = {n["node"]: n["kind"] for n in nonlinear_nodes(model)}
    assert kinds["rate"] == "control flow, resolved per call"
