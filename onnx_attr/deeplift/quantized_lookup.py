"""A quantized embedding table, dequantized for the rewrite, so token ids are attributed at its lookup.

onnxruntime's quantizer stores an embedding table in 8 bits: the lookup (Gather) reads integer
rows, which rearrangements (Transpose, Reshape, ...) carry to a DequantizeLinear with one scale and
zero point (text2tashkeel's diacritizer). An integer tensor carries no attribution, so the lookup
was no tap (taps.py) and DeepLift refused the DequantizeLinear. Dequantizing is elementwise with
those two constants, so it commutes with the lookup and the rearrangements: the rewrite
dequantizes the table once, with the graph's own DequantizeLinear module (the same arithmetic),
and drops the DequantizeLinears after it. Every value downstream is the graph's, bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, fx

#: ops that carry the looked-up rows to the dequantizer unchanged but for their arrangement
_CARRY = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"})
#: ops that read only the shape of what they are given (the same for the integer and float rows)
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def dequantize_lookups(module: fx.GraphModule) -> int:
    """Dequantize each integer table whose lookup reaches DequantizeLinears with one scalar scale and
    zero point along every path (rearrangements and shape reads only); returns how many."""
    count = 0
    for gather in [n for n in module.graph.nodes if n.op == "call_module" and n.meta.get("onnx_op") == "Gather"]:
        table = gather.args[0] if gather.args else None
        value = _constant(module, table)
        if value is None or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            continue
        ends = _dequantizers(gather)
        if not ends:
            continue
        params = [_params(module, d) for d in ends]
        first = params[0]
        if first is None or any(p is None or not _same(p, first) for p in params[1:]):
            continue
        floats = module.get_submodule(ends[0].target)(value, *first)
        name = f"dequantized_table_{count}"
        module.register_buffer(name, floats)
        with module.graph.inserting_before(gather):
            gather.args = (module.graph.get_attr(name), *gather.args[1:])
        for dq in ends:
            dq.replace_all_uses_with(dq.args[0])
            module.graph.erase_node(dq)
        count += 1
    return count


def dequantized_view(model, lookups: Sequence[str]):
    """The model with its 8-bit embedding tables dequantized as the DeepLift rewrite does it, for the
    gradient methods: they attribute token ids at the `lookups` (ONNX tensors), which must be floating
    (an integer lookup's output was refused by name). The model itself where every lookup is floating
    already: a lookup that feeds its DequantizeLinear directly is tapped at that DequantizeLinear,
    which the pass would remove (T5's quantized encoder). Found once per model."""
    from onnx_attr.deeplift.layers import _spec

    if all(_floating(_spec(model, name).dtype) for name in lookups):
        return model
    found = model.__dict__.get("_dequantized_view")
    if found is None:
        import copy

        module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
        found = model.with_module(module) if dequantize_lookups(module) else model
        if found is not model:
            module.recompile()
        model.__dict__["_dequantized_view"] = found
    return found


def _floating(dtype) -> bool:
    """A declared dtype that is a float (None: not declared, taken as one: nothing to change)."""
    import numpy as np

    return dtype is None or np.issubdtype(dtype, np.floating)


def _dequantizers(gather: fx.Node) -> list[fx.Node]:
    """The DequantizeLinears every path from the lookup ends in, through rearrangements and shape
    reads; empty where a path does anything else with the integer rows."""
    ends, stack, seen = [], [gather], set()
    while stack:
        node = stack.pop()
        for user in node.users:
            op = user.meta.get("onnx_op")
            if op in _SHAPE_ONLY:
                continue
            if not user.args or user.args[0] is not node or user in seen:
                return []
            seen.add(user)
            if op == "DequantizeLinear":
                ends.append(user)
            elif op in _CARRY:
                stack.append(user)
            else:
                return []
    return ends


def _params(module: fx.GraphModule, dq: fx.Node) -> Optional[tuple[Tensor, ...]]:
    """A DequantizeLinear's scale and zero point, where both are constants of one element."""
    if dq.kwargs or len(dq.args) not in (2, 3):
        return None
    found = [_constant(module, a) for a in dq.args[1:]]
    if any(v is None or v.numel() != 1 for v in found):
        return None
    return tuple(found)


def _same(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def _constant(module: fx.GraphModule, node: Any) -> Optional[Tensor]:
    """The tensor a get_attr node reads, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = functools.reduce(getattr, node.target.split("."), module)
    return value if isinstance(value, Tensor) else None
