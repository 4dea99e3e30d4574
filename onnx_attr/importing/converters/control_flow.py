"""If, Loop and Scan: each body is converted on its own into a GraphModule and run from Python.

A body may read tensors of the enclosing graph by name. We list those free names, give the
body's GraphModule one extra input for each, and feed them from the enclosing graph, so a body
is an ordinary graph to every other part of the import (nested bodies included). An If whose
condition is a constant never reaches this module: `normalize.inline_constant_ifs` splices the
taken branch into the graph, so the DeepLift rules see its ops. The modules here run anything
else faithfully, for `run` and `verify`; the rewrite refuses them by name (their kind is unknown).
"""

from __future__ import annotations

from contextvars import ContextVar

import onnx
import torch
from onnx import helper
from torch import nn

from onnx_attr.importing.budget import Budget, current_budget, in_loop, loop_nest
from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register

#: The enclosing model's opsets ({domain: version}), set by `convert` while it runs, so that a
#: body is converted at the opsets its model imports.
MODEL_OPSETS: ContextVar[dict[str, int]] = ContextVar("MODEL_OPSETS")


def graph_attribute(node, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.proto.attribute if a.name == name)


def free_names(graph: onnx.GraphProto) -> list[str]:
    """Names a graph (or a graph nested in it) reads but does not define, in first-use order."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    free: dict[str, None] = {}

    def use(name: str) -> None:
        if name and name not in defined:
            free.setdefault(name)

    for node in graph.node:
        for name in node.input:
            use(name)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                for name in free_names(sub):
                    use(name)
        defined.update(node.output)
    for out in graph.output:
        use(out.name)
    return list(free)


class Body(nn.Module):
    """A converted body: `forward(*own_inputs, *outer)`, returning a list of its outputs."""

    def __init__(self, module: nn.Module, n_outputs: int, outer: list[str]):
        super().__init__()
        self.module, self.n_outputs, self.outer = module, n_outputs, outer

    def forward(self, *args: torch.Tensor) -> list[torch.Tensor]:
        out = self.module(*args)
        return list(out) if self.n_outputs > 1 else [out]


#: Outer initializers up to this many elements are copied into a body as constants (converters
#: read shapes, axes and pads from constants); larger ones, the weights, are fed in as inputs.
SHARED_ABOVE = 4096


def _is_small(tensor: onnx.TensorProto) -> bool:
    count = 1
    for d in tensor.dims:
        count *= d
    return count <= SHARED_ABOVE and tensor.data_location != onnx.TensorProto.EXTERNAL


def convert_body(body: onnx.GraphProto, outer_graph) -> Body:
    """Convert `body` as a model whose inputs are its own followed by the outer names it reads.

    Small outer initializers are copied in as initializers, so converters still see them as
    constants. Weights are fed in from the enclosing graph like any outer value: every body that
    reads one shares the enclosing graph's buffer (64 Ifs reading one 16 MiB weight hold it once).
    """
    from onnx_attr.importing.convert import convert  # a body is converted like a model; imported late (cycle)
    from onnx_attr.importing.normalize import fold_constants, infer_shapes

    free = free_names(body)
    known = outer_graph.initializers  # looked up by name: a dict of them built per body was quadratic (500 Ifs)
    inits = {n: known[n].proto for n in free if n in known}
    copied = {n for n in free if n in inits and _is_small(inits[n])}
    outer = [n for n in free if n not in copied]
    graph = onnx.GraphProto()
    graph.CopyFrom(body)
    graph.name = graph.name or "body"
    for name in free:
        if name in copied:
            graph.initializer.append(inits[name])
        elif name in inits:
            graph.input.append(helper.make_tensor_value_info(name, inits[name].data_type, list(inits[name].dims)))
        else:
            info = outer_graph.value_info.get(name)
            graph.input.append(info if info is not None else helper.make_empty_tensor_value_info(name))
    opsets = MODEL_OPSETS.get()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = onnx.IR_VERSION
    notes: list[str] = []
    model = infer_shapes(fold_constants(model, notes), notes)
    return Body(convert(model), len(body.output), outer)


def _as_bool(t: torch.Tensor) -> bool:
    return bool(t.reshape(-1)[0]) if t.numel() else False


class If(nn.Module):
    """ONNX If with a condition computed at run time: runs one branch."""

    def __init__(self, then_branch: Body, else_branch: Body):
        super().__init__()
        self.then_branch, self.else_branch = then_branch, else_branch
        self.outer = list(dict.fromkeys(then_branch.outer + else_branch.outer))

    def forward(self, cond: torch.Tensor, *outer: torch.Tensor):
        branch = self.then_branch if _as_bool(cond) else self.else_branch
        values = dict(zip(self.outer, outer))
        out = branch(*(values[n] for n in branch.outer))
        return tuple(out) if len(out) > 1 else out[0]


@register("If", 1, 11, 13, 16, 19, 21, 23, 24, 25)
def convert_if(node, graph):
    module = If(convert_body(graph_attribute(node, "then_branch"), graph),
                convert_body(graph_attribute(node, "else_branch"), graph))
    return result(node, module, inputs=(node.input_values[0], *module.outer))


def _stack(items: list[torch.Tensor], axis: int, reverse: bool) -> torch.Tensor:
    if reverse:
        items = items[::-1]
    return torch.stack(items, dim=axis if axis >= 0 else axis + items[0].dim() + 1)


def _count_iteration(budget: Budget, spent: list[int], i: int, where: str) -> None:
    """One more trip of a loop (Loop or Scan), counted against the budget of its whole nest."""
    spent[0] += 1
    budget.check("max_loop_iterations", max(spent[0], i + 1),
                 f"{where} (with the loops around and inside it) running that many iterations")


def _accumulate(budget: Budget, scanned: list[list[torch.Tensor]], totals: list[int], values, where: str) -> None:
    """Append one trip's scan outputs, refusing before the stacked output would pass the budget."""
    for k, (items, value) in enumerate(zip(scanned, values)):
        totals[k] += value.numel()
        budget.check("max_elements", totals[k], f"{where}, its scan output {k} growing to")
        items.append(value)


class Loop(nn.Module):
    """ONNX Loop (opset 1+): a trip count, a condition, or both; carried values and scan outputs.

    The budget bounds the iterations of a whole loop nest and what the loop accumulates: a trip
    count of 2^62, a condition that never turns false, or a carried value that doubles each trip
    ends in a `BudgetError` naming the node, not in a hang or exhausted memory.
    """

    def __init__(self, body: Body, has_trip_count: bool, has_cond: bool, n_carried: int,
                 budget: Budget | None = None, label: str = "Loop"):
        super().__init__()
        self.body, self.has_trip_count, self.has_cond, self.n_carried = body, has_trip_count, has_cond, n_carried
        self.budget, self.label = budget if budget is not None else Budget(), label

    def forward(self, *inputs: torch.Tensor):
        inputs = list(inputs)
        trip = int(inputs.pop(0).reshape(-1)[0]) if self.has_trip_count else None
        keep = _as_bool(inputs.pop(0)) if self.has_cond else True
        carried, outer = inputs[:self.n_carried], inputs[self.n_carried:]
        device = _device([*carried, *outer])
        scanned: list[list[torch.Tensor]] = []
        totals: list[int] = []
        i = 0
        where = f"Loop node {self.label!r}"
        with loop_nest() as spent:
            while keep and (trip is None or i < trip):
                _count_iteration(self.budget, spent, i, where)
                out = self.body(torch.tensor(i, dtype=torch.int64, device=device),
                                torch.tensor(keep, device=device), *carried, *outer)
                keep, carried = _as_bool(out[0]), out[1:1 + self.n_carried]
                scans = out[1 + self.n_carried:]
                scanned = scanned or [[] for _ in scans]
                totals = totals or [0 for _ in scans]
                for k, value in enumerate(carried):
                    self.budget.check("max_elements", _numel(value), f"{where}, its carried value {k} growing to")
                _accumulate(self.budget, scanned, totals, scans, where)
                i += 1
        n_scans = self.body.n_outputs - 1 - self.n_carried
        if n_scans and not scanned:
            raise RuntimeError("Loop ran zero iterations, so the shape of its scan outputs is unknown")
        outputs = list(carried) + [_stack(items, 0, False) for items in scanned]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


def _tensors(value) -> list:
    """The tensors in a value the body carries: a tensor, a sequence (a list of them) or None."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for t in value if isinstance(t, torch.Tensor)] if isinstance(value, (list, tuple)) else []


def _device(values) -> torch.device | None:
    found = [t for v in values for t in _tensors(v)]
    return found[0].device if found else None


def _numel(value) -> int:
    return sum(t.numel() for t in _tensors(value))


@register("Loop", 1, 11, 13, 16, 19, 21, 23, 24, 25)
def convert_loop(node, graph):
    inputs = node.input_values
    has_trip, has_cond = bool(inputs[0]), bool(inputs[1])
    body = convert_body(graph_attribute(node, "body"), graph)
    module = Loop(body, has_trip, has_cond, len(inputs) - 2, current_budget(), node.name or "Loop")
    present = [name for name, keep in zip(inputs[:2], (has_trip, has_cond)) if keep]
    return result(node, module, inputs=(*present, *inputs[2:], *body.outer))


class Scan(nn.Module):
    """ONNX Scan (opset 9+): states carried across slices of the scan inputs along their axes."""

    def __init__(self, body: Body, n_states: int, n_scan_inputs: int, attrs: dict,
                 budget: Budget | None = None, label: str = "Scan"):
        super().__init__()
        self.body, self.n_states, self.n_scan_inputs = body, n_states, n_scan_inputs
        self.budget, self.label = budget if budget is not None else Budget(), label
        n_scan_outputs = body.n_outputs - n_states
        self.in_axes = list(attrs.get("scan_input_axes", [0] * n_scan_inputs))
        self.in_reverse = [bool(d) for d in attrs.get("scan_input_directions", [0] * n_scan_inputs)]
        self.out_axes = list(attrs.get("scan_output_axes", [0] * n_scan_outputs))
        self.out_reverse = [bool(d) for d in attrs.get("scan_output_directions", [0] * n_scan_outputs)]

    def forward(self, *inputs: torch.Tensor):
        states = list(inputs[:self.n_states])
        xs = inputs[self.n_states:self.n_states + self.n_scan_inputs]
        outer = inputs[self.n_states + self.n_scan_inputs:]
        axes = [a + x.dim() if a < 0 else a for a, x in zip(self.in_axes, xs)]
        length = xs[0].shape[axes[0]]
        scanned: list[list[torch.Tensor]] = [[] for _ in self.out_axes]
        totals = [0 for _ in self.out_axes]
        where = f"Scan node {self.label!r}"
        nested = in_loop()  # a Scan's own length is its input's: counted only inside another loop
        with loop_nest() as spent:
            for t in range(length):
                if nested:
                    _count_iteration(self.budget, spent, t, where)
                slices = [x.select(a, length - 1 - t if r else t) for x, a, r in zip(xs, axes, self.in_reverse)]
                out = self.body(*states, *slices, *outer)
                states = out[:self.n_states]
                _accumulate(self.budget, scanned, totals, out[self.n_states:], where)
        if self.out_axes and not length:
            raise RuntimeError("Scan over a zero-length axis: the shape of its scan outputs is unknown")
        outputs = list(states) + [_stack(items, a, r) for items, a, r in zip(scanned, self.out_axes, self.out_reverse)]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


@register("Scan", 9, 11, 16, 19, 21, 23, 24, 25)
def convert_scan(node, graph):
    body_proto = graph_attribute(node, "body")
    n_scan_inputs = node.attributes["num_scan_inputs"]
    n_states = len(node.input_values) - n_scan_inputs
    body = convert_body(body_proto, graph)
    module = Scan(body, n_states, n_scan_inputs, node.attributes, current_budget(), node.name or "Scan")
    return result(node, module, inputs=(*node.input_values, *body.outer))


class BatchedScan(nn.Module):
    """ONNX Scan-8: axis 0 of every state and scan input is a batch, scanned one element at a
    time along axis 1, each over its own length (`sequence_lens`); scan outputs are zero-padded."""

    def __init__(self, scan: Scan, has_lengths: bool):
        super().__init__()
        self.scan, self.has_lengths = scan, has_lengths

    def forward(self, *inputs: torch.Tensor):
        inputs = list(inputs)
        lengths = inputs.pop(0) if self.has_lengths else None
        n_carried = self.scan.n_states + self.scan.n_scan_inputs
        carried, outer = inputs[:n_carried], inputs[n_carried:]
        states, xs = carried[:self.scan.n_states], carried[self.scan.n_states:]
        full = xs[0].shape[1]
        per_example = []
        for b in range(xs[0].shape[0]):
            length = int(lengths[b]) if lengths is not None else full
            out = self.scan(*(s[b] for s in states), *(x[b, :length] for x in xs), *outer)
            out = list(out) if isinstance(out, tuple) else [out]
            for k in range(self.scan.n_states, len(out)):  # pad scan outputs to the full length
                pad = out[k].new_zeros((full - length, *out[k].shape[1:]))
                out[k] = torch.cat([out[k], pad])
            per_example.append(out)
        outputs = [torch.stack(values) for values in zip(*per_example)]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


@register("Scan", 8)
def convert_scan_8(node, graph):
    n_scan_inputs = node.attributes["num_scan_inputs"]
    lengths, carried = node.input_values[0], node.input_values[1:]
    body = convert_body(graph_attribute(node, "body"), graph)
    directions = node.attributes.get("directions", [0] * n_scan_inputs)
    scan = Scan(body, len(carried) - n_scan_inputs, n_scan_inputs, {"scan_input_directions": directions},
                current_budget(), node.name or "Scan")
    module = BatchedScan(scan, bool(lengths))
    return result(node, module, inputs=(*([lengths] if lengths else []), *carried, *body.outer))


#: Domain of the node `specialize.select_branches` puts in place of an If whose condition follows an
#: attributed input: both branches run, the comparison picks one (rules/branch.py explains it).
SELECT_DOMAIN = "onnx_attr.control"
COMPARISONS = {"Greater": torch.gt, "GreaterOrEqual": torch.ge, "Less": torch.lt, "LessOrEqual": torch.le}


class BranchSelect(nn.Module):
    """`then if compare(u, v) else other` (negated when `negate`), with both branch values given:
    what the If computed, bit for bit, with the comparison's operands visible to DeepLift."""

    def __init__(self, comparison: str, negate: bool):
        super().__init__()
        self.comparison, self.negate = comparison, negate

    def taken(self, u: torch.Tensor, v: torch.Tensor) -> bool:
        """The If's own reading of its condition (its first element), on these operands."""
        return _as_bool(COMPARISONS[self.comparison](u, v)) != self.negate

    def forward(self, u: torch.Tensor, v: torch.Tensor, then: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return then if self.taken(u, v) else other


@register("BranchSelect", 1, domain=SELECT_DOMAIN)
def convert_branch_select(node, graph):
    return result(node, BranchSelect(text_attribute(node, "comparison", ""), bool(node.attributes.get("negate", 0))))
