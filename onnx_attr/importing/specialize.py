"""Runtime `If` and `Loop` nodes resolved on the values of one call, so DeepLift sees plain ops.

An export may branch on a value that is not a constant in the file but is fixed for a call: a
sample-rate input (silero-vad's `sr`), a flag, a shape. The rewrite cannot give an opaque `If`
module a DeepLift rule, but once the call's values are known the branch taken is known too.
`specialise` records each condition in one plain forward pass, writes it into a copy of the
graph as a constant, and lets the normalization inline the taken branches (nested ones too),
then converts that graph: a model without those Ifs, cached on the original per set of
condition values. A condition that depends on an attributed input's values (not only on its
shape) changes along the path from the baseline, so it stays refused, by node and input.

A top-level `Loop` whose trip count and condition follow only held inputs, shapes or constants
runs the same number of times on every point of that path: the recording pass counts its
iterations, and the copy of the graph has its body repeated that many times (carried values
chained, scan outputs stacked by Unsqueeze + Concat), within the budget's loop iterations and
node count. A top-level `Scan` (opset 9 on) runs as many times as its scan inputs are long, a
shape: it is unrolled the same way, each copy of its body reading its slices through a Gather
(onnx-asr's wespeaker front end frames a waveform so).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import onnx
import torch
from onnx import helper
from torch import Tensor

from onnx_attr.errors import UnsupportedOpError
from onnx_attr.importing.ancestry import element_types
from onnx_attr.importing.converters.control_flow import COMPARISONS, SELECT_DOMAIN
from onnx_attr.importing.normalize import default_opset

#: Ops whose outputs depend on their input's shape only, never on its values.
SHAPE_ONLY = frozenset({"Shape", "Size"})


def runtime_control_flow(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The If, Loop and Scan nodes of the top-level graph (the normalization inlined constant Ifs).
    Scan-8 (a batch axis, a length per example) is left to its module."""
    scans = default_opset(model) >= 9
    return [n for n in model.graph.node if n.domain in ("", "ai.onnx")
            and (n.op_type in ("If", "Loop") or (n.op_type == "Scan" and scans))]


def has_runtime_control_flow(model) -> bool:
    """Whether DeepLift must specialise the model per call (runtime If, Loop or Scan nodes)."""
    return bool(runtime_control_flow(model.onnx_model))


#: Ops that choose a token (an index) from scores: a decoder's stop condition follows its input
#: through them only (TopK through its indices output).
TOKEN_CHOICES = frozenset({"ArgMax", "ArgMin", "TopK"})


def value_dependent(graph: onnx.GraphProto, sources: Iterable[str], tainted: dict[str, str] | None = None,
                    past_tokens: bool = True) -> dict[str, str]:
    """Tensor name -> the source whose values it depends on (Shape/Size cut the dependence; and
    unless `past_tokens`, so do the `TOKEN_CHOICES`' indices: what is left depends on the source
    other than through a decoded token).

    A node with subgraphs depends on what its bodies read from outside as well as on its inputs."""
    found = dict(tainted or {})
    for source in sources:
        found.setdefault(source, source)
    _taint(graph, found, past_tokens)
    return found


def _taint(graph: onnx.GraphProto, tainted: dict[str, str], past_tokens: bool) -> str | None:
    """`value_dependent`'s sweep, adding to `tainted` in place (a copy per body was quadratic on an
    unrolled decoder's 500 Ifs); returns the source of the first name it added, or None."""
    first = None
    for node in graph.node:
        if node.op_type in SHAPE_ONLY:
            continue
        source = next((tainted[r] for r in node.input if r in tainted), None)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                inner = _taint(sub, tainted, past_tokens)  # what the body reads from outside, or computes from it
                first = first or inner
                if source is None:
                    source = next((tainted[o.name] for o in sub.output if o.name in tainted), inner)
        if source is not None:
            for out in node.output if past_tokens else _past_choice(node):
                if out and out not in tainted:
                    tainted[out] = source
                    first = first or source
    return first


def _past_choice(node: onnx.NodeProto) -> Sequence[str]:
    """The outputs of a node that still carry its inputs' values once a token is chosen."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in TOKEN_CHOICES:
        return node.output
    return node.output[:1] if node.op_type == "TopK" else ()


#: Ops a condition passes through on its way from a comparison to an If (`Not` flips it).
_CONDITION_PATH = frozenset({"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Not"})
_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.BFLOAT16})


def selectable_ifs(model, attributed_names: Sequence[str]) -> dict[str, tuple[str, str, str, bool]]:
    """Top-level Ifs whose condition follows an attributed input and that DeepLift can still explain:
    If output -> (u, v, comparison, negate) for a condition `compare(u, v)` of two floating values
    (a score against a threshold), reached through casts, reshapes and `Not`, with plain branches.

    Both branches then run on every point and a `BranchSelect` node picks one (rules/branch.py):
    the jump between the branches is credited through the comparison's operands, so completeness
    holds when the input and its baseline fall on different sides of the threshold."""
    graph = model.onnx_model.graph
    tainted = value_dependent(graph, attributed_names)
    producers = {o: n for n in graph.node for o in n.output if o}
    types = element_types(graph)
    found = {}
    for node in graph.node:
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or node.input[0] not in tainted:
            continue
        if any(n.op_type in ("If", "Loop", "Scan") for a in node.attribute for n in a.g.node):
            continue
        name, negate = node.input[0], False
        while (step := producers.get(name)) is not None and step.domain in ("", "ai.onnx") \
                and step.op_type in _CONDITION_PATH:
            negate ^= step.op_type == "Not"
            name = step.input[0]
        if step is not None and step.op_type in COMPARISONS and step.domain in ("", "ai.onnx") \
                and all(types.get(i) in _FLOATS for i in step.input[:2]):
            found[node.output[0]] = (step.input[0], step.input[1], step.op_type, negate)
    return found


def refuse_attributed_conditions(model, attributed_names: Sequence[str], selected=frozenset(),
                                 scopes: Sequence[str] = (), refuse: bool = True) -> set[str]:
    """An UnsupportedOpError naming each If whose condition, and each Loop whose trip count or
    condition, follows an attributed input's values (Ifs in `selected` aside: they become
    `BranchSelect` nodes). One exception, returned by first output: a top-level Loop whose count
    follows the input only through the tokens it decodes (`TOKEN_CHOICES`: a decoder that stops
    when its ArgMax token is the end token), and the Ifs of such a Loop's unrolled body (names
    under `scopes`) likewise. Those are held at the call's values, the way explanations of a
    decoder hold the sequence it generated: the decoded length is the input's, and the baseline is
    decoded as long. Any other dependence stays refused: held, a loop that runs while a value is
    under a threshold, or an If, would explain at the baseline a computation the model does not do
    there. With `refuse` off, those are only left out (the gradient methods run them as they are)."""
    graph = model.onnx_model.graph
    tainted = value_dependent(graph, attributed_names)
    direct = value_dependent(graph, attributed_names, past_tokens=False)
    bad, held = [], set()
    for node in _all_ifs(graph):
        if node.input[0] in tainted and node.output[0] not in selected:
            if node.input[0] in direct or not any(node.output[0].lstrip("_").startswith(s) for s in scopes):
                bad.append(("If", node, node.input[0], tainted[node.input[0]], "the branch taken"))
            else:
                held.add(node.output[0])
    for node in (n for n in graph.node if n.op_type == "Loop"):
        found, direct_found = _loop_taint(node, tainted), _loop_taint(node, direct, past_tokens=False)
        body = next(a.g for a in node.attribute if a.name == "body")
        controls = [name for name in (*node.input[:2], body.output[0].name) if name and name in found]
        directly = next((name for name in controls if name in direct_found), None)
        if directly is not None:
            bad.append(("Loop", node, directly, found[directly], "the number of iterations"))
        elif controls:
            held.add(node.output[0])
    if bad and refuse:
        opset = next((o.version for o in model.onnx_model.opset_import if o.domain in ("", "ai.onnx")), 0)
        raise UnsupportedOpError(
            [(op, "ai.onnx", opset, n.name or n.output[0],
              f"its {'condition' if op == 'If' else 'trip count or condition'} {name!r} depends on the values of the "
              f"attributed input {source!r}, so {what} could change along the path from the baseline")
             for op, n, name, source, what in bad],
            hint="Attribute the other inputs and pass this one as additional_forward_args (held at its value), or "
                 "re-export the model without the data-dependent branch.",
            action="DeepLift cannot specialise")
    return held


def _loop_taint(node: onnx.NodeProto, tainted: dict[str, str], past_tokens: bool = True) -> dict[str, str]:
    """What depends on attributed values inside a Loop: its inputs, and its body's names with the
    carried values tainted from their initial values and, to a fixed point, from the last trip."""
    body = next(a.g for a in node.attribute if a.name == "body")
    seeds = {i.name: tainted[v] for i, v in zip(body.input[2:], node.input[2:]) if v in tainted}
    while True:
        found = value_dependent(body, (), {**tainted, **seeds}, past_tokens)
        more = {i.name: found[o.name] for i, o in zip(body.input[2:], body.output[1:]) if o.name in found
                and i.name not in seeds}
        if not more:
            return {**found, **{n: tainted[n] for n in node.input[:2] if n in tainted}}
        seeds.update(more)


def _all_ifs(graph: onnx.GraphProto):
    for node in graph.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _all_ifs(sub)


def record_conditions(model, tensors: Sequence[Tensor], per_trip: dict | None = None) -> dict[str, bool | int]:
    """The condition each If took (a bool) and the iterations each top-level Loop or Scan ran (an int)
    in a plain forward pass of `tensors`, keyed by the node's first output name (unique in the
    graph), nested bodies included (only those that ran). `per_trip` gets the condition of each If
    directly in a top-level Loop's or Scan's body on each trip: (its key, trip, If key) -> bool, what the Ifs
    of the unrolled body take."""
    from onnx_attr.importing.converters.control_flow import If, Loop, Scan, _as_bool

    seen: dict[str, bool | int] = {}
    top = model.module
    hooks = []
    bodies = {}  # a top-level Loop's or Scan's body graph -> its key
    for node in top.graph.nodes:
        if node.op == "call_module" and node.meta.get("onnx_outputs") and \
                isinstance(loop := top.get_submodule(node.target), (Loop, Scan)):
            bodies[id(loop.body.module)] = node.meta["onnx_outputs"][0]
    for graph_module in model.module.modules():
        graph = getattr(graph_module, "graph", None)
        if graph is None or not hasattr(graph, "nodes"):
            continue
        for node in graph.nodes:
            if node.op != "call_module" or not node.meta.get("onnx_outputs"):
                continue
            sub = graph_module.get_submodule(node.target)
            if isinstance(sub, (Loop, Scan)) and graph_module is top:
                key = node.meta["onnx_outputs"][0]
                seen[key] = 0
                hooks.append(sub.body.register_forward_pre_hook(
                    lambda _m, _args, key=key: seen.__setitem__(key, seen[key] + 1)))
            if isinstance(sub, If):
                key = node.meta["onnx_outputs"][0]
                hooks.append(sub.register_forward_pre_hook(
                    lambda _m, args, key=key: seen.__setitem__(key, _as_bool(args[0]))))
                loop = bodies.get(id(graph_module))
                if loop is not None and per_trip is not None:
                    hooks.append(sub.register_forward_pre_hook(
                        lambda _m, args, key=key, loop=loop: per_trip.__setitem__((loop, seen[loop] - 1, key),
                                                                                  _as_bool(args[0]))))
    try:
        with torch.no_grad():
            model(*tensors)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def specialise(model, tensors: Sequence[Tensor], attributed: Sequence[bool], depth: int = 0,
               scopes: Sequence[str] = (), held_only: bool = False):
    """`model` with its runtime Ifs replaced by the branches this call takes (cached per branch set).

    Returns `model` itself when it has none. Ifs inside an unrolled Loop's body are top-level Ifs
    of the unrolled copy, one per iteration: a further round resolves them. `held_only`: resolve
    only what DeepLift holds at the input's values (a decoder's length), refusing nothing: the
    model the gradient methods integrate, so that every point of their path decodes as long as the
    input, as DeepLift's baseline does (else each point's output has its own length)."""
    if not has_runtime_control_flow(model):
        return model
    names = [s.name for s, a in zip(model.inputs, attributed) if a]
    selected = {} if held_only else selectable_ifs(model, names)
    held = refuse_attributed_conditions(model, names, selected, scopes, refuse=not held_only)
    if held_only and not held:
        return model
    per_trip: dict = {}
    taken = {k: v for k, v in record_conditions(model, tensors, per_trip).items()
             if k not in selected and (k in held or not held_only)}
    unrolled_loops = {k for k, v in taken.items() if not isinstance(v, bool)}  # a count, not a branch
    per_trip = {k: v for k, v in per_trip.items() if k[0] in unrolled_loops}
    key = (held_only,) + tuple(sorted(taken.items())) + tuple(sorted(selected)) + tuple(sorted(per_trip.items()))
    cache = model.__dict__.setdefault("_specialised", {})
    if key not in cache:
        unrolled = _Trips(per_trip, names, held_only, scopes, held) if per_trip else None
        cache[key] = _build(model, taken, selected, held, unrolled)
    if depth < _ROUNDS and cache[key] is not model and has_runtime_control_flow(cache[key]):
        loops = {n.output[0] for n in runtime_control_flow(model.onnx_model) if n.op_type == "Loop"}
        inner = (*scopes, *(f"{name}/" for name in held & loops))
        return specialise(cache[key], tensors, attributed, depth + 1, inner, held_only)
    return cache[key]


#: Rounds of specialisation after the first (Ifs in an unrolled body, Loops in those Ifs' branches).
_ROUNDS = 3


class _Trips:
    """The Ifs of unrolled Loop bodies, as each trip took them (`record_conditions`' per_trip), with
    what the next round of `specialise` would judge them by: resolved in the same build, so that the
    unrolled graph is not first converted with each of its Ifs as a module (SLANet's 500) only to
    be normalized and converted again once they are known."""

    def __init__(self, per_trip: dict, names: Sequence[str], held_only: bool, scopes: Sequence[str], held):
        self.per_trip, self.names, self.held_only, self.scopes, self.held = per_trip, names, held_only, scopes, held

    def resolve(self, proto: onnx.ModelProto, bases: dict[str, str]) -> tuple[dict, dict, set]:
        """(taken, selected, held) for the unrolled Ifs of `proto`, as `specialise` would find them
        on the model built from it: selectable ones spliced, dependent ones refused or held."""
        from types import SimpleNamespace

        view = SimpleNamespace(onnx_model=proto)
        selected = {} if self.held_only else selectable_ifs(view, self.names)
        loops = set(bases) & set(self.held)
        held = refuse_attributed_conditions(view, self.names, selected, (*self.scopes, *(f"{n}/" for n in loops)),
                                            refuse=not self.held_only)
        named = {f"{bases[loop]}iteration{trip}/{key}": v for (loop, trip, key), v in self.per_trip.items()
                 if loop in bases}
        taken = {k: v for k, v in named.items() if k not in selected and (k in held or not self.held_only)}
        return taken, selected, held


def _set_conditions(proto: onnx.ModelProto, taken: dict) -> None:
    """Each If in `taken` reads its recorded condition as a constant (the normalization inlines it)."""
    constants = []
    for node in _all_ifs(proto.graph):
        if isinstance(taken.get(node.output[0]), bool):
            name = f"{node.output[0]}/specialised_condition"
            constants.append(helper.make_tensor(name, onnx.TensorProto.BOOL, [], [taken[node.output[0]]]))
            node.input[0] = name
    proto.graph.initializer.extend(constants)


def _build(model, taken: dict[str, bool], selected: dict[str, tuple[str, str, str, bool]], held=frozenset(),
           unrolled: "_Trips | None" = None):
    from onnx_attr.importing.budget import using
    from onnx_attr.importing.convert import convert, is_importable, opsets
    from onnx_attr.importing.model import AttributableModel
    from onnx_attr.importing.normalize import normalize

    proto = onnx.ModelProto()
    proto.CopyFrom(model.onnx_model)
    bases = _unroll_loops(proto, {k: v for k, v in taken.items() if not isinstance(v, bool)}, model.budget)
    _splice_selected(proto, selected)
    _set_conditions(proto, taken)
    if unrolled is not None:
        more, chosen, kept = unrolled.resolve(proto, bases)
        _splice_selected(proto, chosen)
        _set_conditions(proto, more)
        taken, selected, held = {**taken, **more}, {**selected, **chosen}, {*held, *kept}
    with using(model.budget):
        normalized = normalize(proto, importable=is_importable)
        module = convert(normalized.converted, opsets(normalized.canonical)
                         if normalized.converted is not normalized.canonical else None)
    branches = ", ".join([*(f"{k!r} {('then' if v else 'else') if isinstance(v, bool) else f'{v} iteration(s)'}"
                            + (" (held at this input's: it follows the input only through the tokens it decodes; "
                               "the baseline is decoded as long)" if k in held else "")
                            for k, v in taken.items()),
                          *(f"{k!r} both branches, picked by {c} (DeepLift credits the jump)"
                            for k, (_u, _v, c, _n) in selected.items())])
    sibling = AttributableModel(module, model.inputs, model.outputs, normalized.converted, model.reference_model,
                                (*model.notes, f"runtime If/Loop node(s) specialised for this call: {branches}"),
                                model.source)
    sibling.budget = model.budget
    sibling.eval()
    return sibling.to(model.device)


def _splice_selected(proto: onnx.ModelProto, selected: dict[str, tuple[str, str, str, bool]]) -> None:
    """Replace each selected If by both its branches and one BranchSelect per output."""
    from onnx_attr.importing.normalize import _prefixed_branch, _used_names

    if not selected:
        return
    graph = proto.graph
    names = _used_names(graph) | {t.name for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        how = selected.get(node.output[0]) if node.op_type == "If" else None
        if how is None:
            nodes.append(node)
            continue
        u, v, comparison, negate = how
        outputs = []
        for side in ("then_branch", "else_branch"):
            branch = next(a.g for a in node.attribute if a.name == side)
            copy = _prefixed_branch(branch, f"{node.output[0]}/{side}/", names)
            names |= _used_names(copy)
            graph.initializer.extend(copy.initializer)
            nodes.extend(copy.node)
            outputs.append([o.name for o in copy.output])
        for k, out in enumerate(node.output):
            nodes.append(helper.make_node("BranchSelect", [u, v, outputs[0][k], outputs[1][k]], [out],
                                          name=f"{node.name or node.output[0]}/select{k}", domain=SELECT_DOMAIN,
                                          comparison=comparison, negate=int(negate)))
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == SELECT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(SELECT_DOMAIN, 1))


def _unroll_loops(proto: onnx.ModelProto, trips: dict[str, int], budget) -> dict[str, str]:
    """Replace each top-level Loop or Scan whose iterations were counted by that many copies of its
    body; returns each one's prefix: trip k's names are `{prefix}iteration{k}/{name in the body}`."""
    from onnx_attr.importing.normalize import _used_names

    graph, opset = proto.graph, default_opset(proto)
    nodes: list[onnx.NodeProto] = []
    bases: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type not in ("Loop", "Scan") or node.output[0] not in trips:
            nodes.append(node)
            continue
        count = trips[node.output[0]]
        body = next(a.g for a in node.attribute if a.name == "body")
        label = node.name or node.output[0]
        budget.check("max_loop_iterations", count, f"{node.op_type} node {label!r} unrolled for DeepLift, running")
        budget.check("max_nodes", len(graph.node) + count * len(body.node),
                     f"{node.op_type} node {label!r} unrolled for DeepLift ({count} copies of its body), giving a "
                     "graph of")
        # one prefix checked against the graph's names, once: every copy's names then start with
        # `{base}iteration{k}/`, distinct per k (checking each copy's prefix made the unroll quadratic)
        taken = _used_names(graph) | {t.name for t in graph.initializer} | set(trips)
        base = f"{node.output[0]}/"
        while any(name.startswith(base) for name in taken):
            base = "_" + base
        bases[node.output[0]] = base
        unroll = _unrolled_loop if node.op_type == "Loop" else _unrolled_scan
        unroll(node, body, count, base, graph, nodes, opset)
    del graph.node[:]
    graph.node.extend(nodes)
    return bases


def _unrolled_loop(node, body, count: int, base: str, graph, nodes: list, opset: int) -> None:
    """A Loop's `count` trips as copies of its body: the trip number and a true condition fed as
    constants, carried values chained, scan outputs stacked on a new axis 0."""
    n_carried = len(node.input) - 2
    n_scans = len(body.output) - 1 - n_carried
    if n_scans and not count:
        raise UnsupportedOpError([("Loop", "ai.onnx", 0, node.name or node.output[0], "it runs zero iterations "
                                   "here, so its scan outputs have no shape")], action="DeepLift cannot specialise")
    carried = list(node.input[2:])
    scans: list[list[str]] = [[] for _ in range(n_scans)]
    condition_in = body.input[1].name if len(body.input) > 1 else ""
    reads_condition = bool(condition_in) and any(condition_in in n.input for n in body.node)
    for k in range(count):
        prefix = f"{base}iteration{k}/"
        number = f"{prefix}number"
        graph.initializer.append(helper.make_tensor(number, onnx.TensorProto.INT64, [], [k]))
        feeds = {0: number}
        if reads_condition:
            feeds[1] = f"{prefix}condition"
            graph.initializer.append(helper.make_tensor(feeds[1], onnx.TensorProto.BOOL, [], [True]))
        feeds.update({2 + i: name for i, name in enumerate(carried)})
        outs = _body_copy(body, prefix, feeds, graph, nodes)
        carried = outs[1:1 + n_carried]
        for items, name in zip(scans, outs[1 + n_carried:]):
            items.append(name)
    _unrolled_outputs(node, carried, scans, [0] * n_scans, [0] * n_scans, graph, nodes, opset)


def _unrolled_scan(node, body, count: int, base: str, graph, nodes: list, opset: int) -> None:
    """A Scan's `count` steps as copies of its body, step k reading slice k of each scan input (the
    last first where its direction is reversed) through a Gather; states chained, scan outputs
    stacked on their axes (in reverse where asked)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "body"}
    n_inputs = attrs["num_scan_inputs"]
    n_states = len(node.input) - n_inputs
    n_outputs = len(body.output) - n_states
    in_axes = list(attrs.get("scan_input_axes", [0] * n_inputs))
    in_reverse = list(attrs.get("scan_input_directions", [0] * n_inputs))
    out_axes = list(attrs.get("scan_output_axes", [0] * n_outputs))
    out_reverse = list(attrs.get("scan_output_directions", [0] * n_outputs))
    if n_outputs and not count:
        raise UnsupportedOpError([("Scan", "ai.onnx", opset, node.name or node.output[0], "its scan inputs are "
                                   "empty here, so its scan outputs have no shape")], action="DeepLift cannot specialise")
    states = list(node.input[:n_states])
    scans: list[list[str]] = [[] for _ in range(n_outputs)]
    for k in range(count):
        prefix = f"{base}iteration{k}/"
        feeds = dict(enumerate(states))
        for j, (source, axis, reverse) in enumerate(zip(node.input[n_states:], in_axes, in_reverse)):
            position = f"{prefix}position{j}"
            graph.initializer.append(helper.make_tensor(position, onnx.TensorProto.INT64, [],
                                                        [count - 1 - k if reverse else k]))
            feeds[n_states + j] = f"{prefix}slice{j}"
            nodes.append(helper.make_node("Gather", [source, position], [feeds[n_states + j]], axis=axis,
                                          name=feeds[n_states + j]))
        outs = _body_copy(body, prefix, feeds, graph, nodes)
        states = outs[:n_states]
        for items, name in zip(scans, outs[n_states:]):
            items.append(name)
    _unrolled_outputs(node, states, scans, out_axes, out_reverse, graph, nodes, opset)


def _unrolled_outputs(node, carried: list[str], scans: list[list[str]], axes, reverse, graph, nodes: list,
                      opset: int) -> None:
    """The node's outputs from its unrolled copies: the last carried values as they are, then each scan
    output's values stacked on its axis (the last step first where reversed)."""
    for final, source in zip(node.output[:len(carried)], carried):
        nodes.append(helper.make_node("Identity", [source], [final], name=f"{final}/unrolled"))
    for final, items, axis, backwards in zip(node.output[len(carried):], scans, axes, reverse):
        _stacked(items[::-1] if backwards else items, final, axis, graph, nodes, opset)


def _body_copy(body: onnx.GraphProto, prefix: str, feeds: dict[int, str], graph, nodes: list) -> list[str]:
    """One copy of a loop body, its names under `prefix`, its inputs at the positions in `feeds` read
    from those names: its nodes appended to `nodes`, its initializers to the graph; its outputs' names."""
    from onnx_attr.importing.normalize import _prefixed_branch, rename_all

    copy = _prefixed_branch(body, prefix, ())
    fed = {copy.input[i].name: name for i, name in feeds.items() if i < len(copy.input) and copy.input[i].name}
    rename_all(copy, fed)  # all at once: a fed name that is another input's is not renamed again
    graph.initializer.extend(copy.initializer)
    nodes.extend(copy.node)
    return [o.name for o in copy.output]


def _stacked(items: list[str], final: str, axis: int, graph, nodes: list, opset: int) -> None:
    """`final` = the values of `items` stacked on a new axis `axis` (Unsqueeze each, then Concat)."""
    if opset >= 13:
        axes = f"{final}/scan_axis"
        graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [axis]))
    stacked = []
    for k, name in enumerate(items):
        stacked.append(f"{final}/step{k}")
        nodes.append(helper.make_node("Unsqueeze", [name, axes], [stacked[-1]], name=stacked[-1]) if opset >= 13
                     else helper.make_node("Unsqueeze", [name], [stacked[-1]], axes=[axis], name=stacked[-1]))
    nodes.append(helper.make_node("Concat", stacked, [final], axis=axis, name=f"{final}/stacked"))
