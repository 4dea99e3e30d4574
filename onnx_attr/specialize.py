"""Runtime `If` nodes resolved on the values of one call, so DeepLift sees the taken branch's ops.

An export may branch on a value that is not a constant in the file but is fixed for a call: a
sample-rate input (silero-vad's `sr`), a flag, a shape. The rewrite cannot give an opaque `If`
module a DeepLift rule, but once the call's values are known the branch taken is known too.
`specialise` records each condition in one plain forward pass, writes it into a copy of the
graph as a constant, and lets the normalization inline the taken branches (nested ones too),
then converts that graph: a model without those Ifs, cached on the original per set of
condition values. A condition that depends on an attributed input's values (not only on its
shape) changes along the path from the baseline, so it stays refused, by node and input.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import onnx
import torch
from onnx import helper
from torch import Tensor

from .errors import UnsupportedOpError

#: Ops whose outputs depend on their input's shape only, never on its values.
SHAPE_ONLY = frozenset({"Shape", "Size"})


def runtime_ifs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The If nodes of the top-level graph (the normalization already inlined constant ones)."""
    return [n for n in model.graph.node if n.op_type == "If" and n.domain in ("", "ai.onnx")]


def has_runtime_if(model) -> bool:
    return bool(runtime_ifs(model.onnx_model))


def value_dependent(graph: onnx.GraphProto, sources: Iterable[str], tainted: dict[str, str] | None = None
                    ) -> dict[str, str]:
    """Tensor name -> the source whose values it depends on (Shape/Size cut the dependence).

    A node with subgraphs depends on what its bodies read from outside as well as on its inputs."""
    tainted = dict(tainted or {}) | {s: s for s in sources if s not in (tainted or {})}
    for node in graph.node:
        if node.op_type in SHAPE_ONLY:
            continue
        reads = list(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                inner = value_dependent(sub, (), tainted)
                reads += [o.name for o in sub.output] + [k for k in inner if k not in tainted]
                tainted.update({k: v for k, v in inner.items() if k not in tainted})
        source = next((tainted[r] for r in reads if r in tainted), None)
        if source is not None:
            for out in node.output:
                if out:
                    tainted.setdefault(out, source)
    return tainted


def refuse_attributed_conditions(model, attributed_names: Sequence[str]) -> None:
    """An UnsupportedOpError naming each If whose condition follows an attributed input's values."""
    tainted = value_dependent(model.onnx_model.graph, attributed_names)
    bad = [(n, tainted[n.input[0]]) for n in _all_ifs(model.onnx_model.graph) if n.input[0] in tainted]
    if bad:
        raise UnsupportedOpError(
            [("If", "ai.onnx", 0, n.name or n.output[0],
              f"its condition {n.input[0]!r} depends on the values of the attributed input {source!r}, so the branch "
              "taken could change along the path from the baseline") for n, source in bad],
            hint="Attribute the other inputs and pass this one as additional_forward_args (held at its value), or "
                 "re-export the model without the data-dependent branch.",
            action="DeepLift cannot specialise")


def _all_ifs(graph: onnx.GraphProto):
    for node in graph.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _all_ifs(sub)


def record_conditions(model, tensors: Sequence[Tensor]) -> dict[str, bool]:
    """The condition each If took in a plain forward pass of `tensors`, keyed by its first output's
    name (unique in the graph), nested bodies included (only those that ran)."""
    from .converters.control_flow import If, _as_bool

    seen: dict[str, bool] = {}
    hooks = []
    for graph_module in model.module.modules():
        graph = getattr(graph_module, "graph", None)
        if graph is None or not hasattr(graph, "nodes"):
            continue
        for node in graph.nodes:
            if node.op != "call_module" or not node.meta.get("onnx_outputs"):
                continue
            sub = graph_module.get_submodule(node.target)
            if isinstance(sub, If):
                key = node.meta["onnx_outputs"][0]
                hooks.append(sub.register_forward_pre_hook(
                    lambda _m, args, key=key: seen.__setitem__(key, _as_bool(args[0]))))
    try:
        with torch.no_grad():
            model(*tensors)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def specialise(model, tensors: Sequence[Tensor], attributed: Sequence[bool]):
    """`model` with its runtime Ifs replaced by the branches this call takes (cached per branch set).

    Returns `model` itself when it has none."""
    if not has_runtime_if(model):
        return model
    refuse_attributed_conditions(model, [s.name for s, a in zip(model.inputs, attributed) if a])
    taken = record_conditions(model, tensors)
    key = tuple(sorted(taken.items()))
    cache = model.__dict__.setdefault("_specialised", {})
    if key not in cache:
        cache[key] = _build(model, taken)
    return cache[key]


def _build(model, taken: dict[str, bool]):
    from .budget import using
    from .convert import convert, is_importable, opsets
    from .model import AttributableModel
    from .normalize import normalize

    proto = onnx.ModelProto()
    proto.CopyFrom(model.onnx_model)
    constants = []
    for node in _all_ifs(proto.graph):
        if node.output[0] in taken:
            name = f"{node.output[0]}/specialised_condition"
            constants.append(helper.make_tensor(name, onnx.TensorProto.BOOL, [], [taken[node.output[0]]]))
            node.input[0] = name
    proto.graph.initializer.extend(constants)
    with using(model.budget):
        normalized = normalize(proto, importable=is_importable)
        module = convert(normalized.converted, opsets(normalized.canonical)
                         if normalized.converted is not normalized.canonical else None)
    branches = ", ".join(f"{k!r} {'then' if v else 'else'}" for k, v in taken.items())
    sibling = AttributableModel(module, model.inputs, model.outputs, normalized.converted, model.reference_model,
                                (*model.notes, f"runtime If(s) specialised for this call: {branches}"), model.source)
    sibling.budget = model.budget
    sibling.eval()
    return sibling.to(model.device)
