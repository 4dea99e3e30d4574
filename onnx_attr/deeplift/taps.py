"""Taps: where the DeepLift engine attributes something other than a floating model input.

An `EmbeddingTap` marks a lookup of a constant table (or a one-hot) by integer ids, so token
inputs are attributed at their embedding; a `LayerTap` marks a hidden tensor attributed instead of
the inputs (layer attribution). Both make their tensor the leaf the main pass differentiates.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, fx, nn

from onnx_attr.deeplift.ops import DeepLiftState
from onnx_attr.importing.specs import TensorSpec


class EmbeddingTap(nn.Module):
    """A Gather of a constant table by token ids: where integer inputs are attributed.

    Its output is the attributed tensor: the main pass differentiates against it, the reference
    pass substitutes the embedding of the baseline ids (recorded in a `tap_baseline` pass), so
    masks and positions computed from the ids stay those of the input in both passes.
    """

    def __init__(self, original: nn.Module, state: DeepLiftState, node: str, input_name: str,
                 id_path: Optional["IdPath"] = None, per_element: bool = False):
        super().__init__()
        self.original, self._state, self.node, self.input_name = original, state, node, input_name
        #: how the ids it looks up are selected from the input (None: they are the input itself)
        self.id_path = id_path
        #: a measured input's cast to float: one value per element, no embedding axis to sum
        self.per_element = per_element

    def forward(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        state = self._state
        if id(self) not in state.active_taps:  # its ids are held in this call: a plain lookup
            return out
        if state.mode == "tap_baseline":
            state.tap_baselines[id(self)] = out.detach()
        elif state.mode == "reference":
            reference = state.tap_baselines[id(self)]
            check_paired(self.node, self.input_name, out.shape, reference.shape)
            out = reference.expand_as(out)
        elif state.mode == "deeplift":
            out = out.detach().requires_grad_(True)
            state.tap_leaves[id(self)] = out
        return out


def check_paired(node: str, input_name: str, at_input: torch.Size, at_baseline: torch.Size) -> None:
    """A lookup must read as many rows at the baseline's ids as at the input's (or one row for all):
    its rows at the baseline are the reference of those it reads at the input, row by row."""
    if len(at_input) == len(at_baseline) and all(b in (1, i) for i, b in zip(at_input, at_baseline)):
        return
    from onnx_attr.errors import InputError

    raise InputError(
        f"the embedding lookup {node!r} of {input_name!r} reads rows of shape {list(at_input)} at the input's ids "
        f"but {list(at_baseline)} at the baseline's: which rows it reads is selected by the ids' values (a Compress "
        "or NonZero on the ids, as a partitioned embedding does), so no baseline row pairs with each row read. Hold "
        f"{input_name!r} (pass it as additional_forward_args; the CLI: --hold {input_name}) and attribute the other "
        "inputs, or give a baseline whose ids select the same number of rows")


def insert_layer_taps(module: fx.GraphModule, state: DeepLiftState, layers: Sequence[str]) -> list[LayerTap]:
    """A LayerTap after each named tensor's node, between it and all of its users."""
    from onnx_attr.deeplift.layers import insert_after

    return insert_after(module, layers, lambda name: LayerTap(state, name), "layer_tap")


class LayerTap(nn.Module):
    """Marks an ONNX tensor whose attributions are wanted (layer attribution).

    The reference pass records its reference value; the main pass differentiates against it (the
    layer becomes the leaf, so the multipliers are those of the output w.r.t. this tensor). A layer
    computed from another tapped one stays on its graph, so the upstream layer's multipliers
    flow through it as through any other tensor.
    """

    def __init__(self, state: DeepLiftState, tensor: str):
        super().__init__()
        self._state, self.tensor = state, tensor

    def forward(self, x):
        state = self._state
        if state.mode == "reference":
            state.tap_baselines[id(self)] = x.detach()
        elif state.mode == "deeplift":
            x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            state.tap_leaves[id(self)] = x
        return x


#: Ops whose output depends on their input's shape only, not on its values.
SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})


def _integer_sources(module: fx.GraphModule, inputs: Sequence[TensorSpec]) -> dict[fx.Node, set[str]]:
    """For each node, the integer (non-differentiable) model inputs its *values* are computed from
    (positions made from Range(Shape(ids)) are not: they depend on the ids' shape alone)."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    sources = {n: {spec.name} for n, spec in zip(placeholders, inputs) if spec.dtype is not None
               and not spec.differentiable}
    for node in module.graph.nodes:
        if node.meta.get("onnx_op") in SHAPE_ONLY or _chosen_positions(node):
            continue
        if node.op in ("call_module", "call_function"):
            # a Where's condition picks between its values without being one (ids masked by the attention
            # mask before their lookup: Where(mask == 0, pad, ids) holds the ids' values alone); so do a
            # Gather's indices where its data are an input's values (ids reordered by a TopK of the
            # lengths, as PyTorch exports pack_padded_sequence(enforce_sorted=False))
            op = node.meta.get("onnx_op")
            operands = node.args[1:] if op == "Where" else node.args[:1] if op == "Gather" and node.args and \
                node.args[0] in sources else (*node.args, *node.kwargs.values())
            found = set().union(*(sources.get(a, set()) for a in operands if isinstance(a, fx.Node)))
            if found:
                sources[node] = found
    return sources


def _chosen_positions(node: fx.Node) -> bool:
    """Whether the node's values are positions the model chose (an ArgMax, ArgMin or a TopK's indices):
    never the ids' values, even where the scores it picks from were computed from them. An unrolled
    greedy decoder looks up its own ArgMax choices (g2p-id's tiny-pron, 17 lookups of them beside one
    of the input's ids, read as lookups of the input: hunt 33)."""
    if node.meta.get("onnx_op") in ("ArgMax", "ArgMin"):
        return True
    return node.op == "call_function" and len(node.args) == 2 and isinstance(node.args[0], fx.Node) \
        and node.args[0].meta.get("onnx_op") == "TopK" and node.args[1] == 1  # its output 1 (select_output, getitem)


#: integer inputs that hold measurements, not ids: 8-bit pixels, 16-bit pixels or PCM samples. Cast to
#: a float, each is its own value (exactly), attributed at that cast. Ids, masks and lengths are int32/int64.
MEASURED_TYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))


def embedding_taps(module: fx.GraphModule, inputs: Sequence[TensorSpec]) -> dict[fx.Node, str]:
    """Where ids derived from one integer input become floating values that carry them: a Gather
    of a constant table (an embedding), or a floating one-hot (Cast(Equal(ids, classes)), as tf2onnx
    writes it, OneHot, or scikit-learn's OneHotEncoder of a categorical column) whose last axis is
    the class axis. And where a `MEASURED_TYPES` input (a uint8 image whose normalisation is in the
    graph, as tf2onnx and many exporters ship it) is cast to a float: the cast, of the input's own
    shape, one value per element.

    A model whose inputs are all integers and none of them ids (no lookup, no one-hot) has nothing
    else to attribute: there int32/int64 inputs cast to a float are measurements too (scikit-learn
    fitted on integer features, `importing/ml_casts.py`; a table of counts). Where anything else
    is attributable, such an input stays a mask or a length, held."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    integers = [(n, spec) for n, spec in zip(placeholders, inputs) if spec.dtype is not None and not spec.differentiable]
    taps = _taps(module, inputs, {n for n, spec in integers if spec.dtype in MEASURED_TYPES})
    if not taps and len(integers) == len(placeholders):
        taps = _taps(module, inputs, {n for n, spec in integers if spec.dtype.kind in "iu"})
    return taps


def _taps(module: fx.GraphModule, inputs: Sequence[TensorSpec], measured: set[fx.Node]) -> dict[fx.Node, str]:
    """`embedding_taps` with the inputs in `measured` read as measurements."""
    sources = _integer_sources(module, inputs)
    fed = placeholder_fed(module)
    taps = {}
    for node in module.graph.nodes:
        if node.op != "call_module" or len(node.args) < 1:
            continue
        op = node.meta.get("onnx_op")
        if op == "Gather" and len(node.args) >= 2:
            table, ids = node.args[0], node.args[1]
            if not (isinstance(table, fx.Node) and table not in sources and table not in fed):
                continue
            node = _dequantized_rows(module, node, table)  # an 8-bit table: the floats its DequantizeLinear makes
        elif op == "Cast" and _cast_dtype(module.get_submodule(node.target)) in _FLOATS:
            ids = _compared_ids(node.args[0], sources)
            if ids is None and _rearranged(module, node.args[0]) in measured:
                # pixels or samples: their cast is their value, one per element (HWC -> CHW first: the
                # fold puts each back on its element, taps.IdPath)
                ids = node.args[0]
                node.meta["measured_tap"] = True
        elif op == "DequantizeLinear" and _rearranged(module, node.args[0]) in measured:
            ids = node.args[0]  # a quantized input's measurements (Qualcomm's w8a8 exports): (x - zp)·scale, its
            node.meta["measured_tap"] = True  # value per element, as a cast is
        elif op == "OneHot":
            ids = node.args[0] if not any(a in fed for a in node.args[1:] if isinstance(a, fx.Node)) else None
        elif op == "OneHotEncoder" and node.meta.get("onnx_domain") == "ai.onnx.ml":  # scikit-learn's categories
            ids = node.args[0]
        else:
            continue
        if isinstance(ids, fx.Node) and len(sources.get(ids, ())) == 1:
            taps[node] = next(iter(sources[ids]))
    return taps


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dequantized_rows(module: fx.GraphModule, gather: fx.Node, table: fx.Node) -> fx.Node:
    """Where a lookup's rows become floats: the lookup itself, or for an integer table (onnxruntime's
    quantizer on Gather) its one DequantizeLinear of constant scalar scale and zero point, which
    keeps the rows' shape (ids + the embedding axis). The DeepLift rewrite dequantizes such tables
    first (quantized_lookup.py); the gradient methods tap the rows here."""
    from onnx_attr.deeplift.quantized_lookup import _constant, _params

    value = _constant(module, table)
    if value is None or value.is_floating_point() or len(gather.users) != 1:
        return gather
    user = next(iter(gather.users))
    if user.meta.get("onnx_op") == "DequantizeLinear" and user.args and user.args[0] is gather \
            and _params(module, user) is not None:
        return user
    return gather


def _cast_dtype(cast: nn.Module) -> Optional[torch.dtype]:
    """What a Cast module casts to (ours: `dtype`; onnx2torch's: `torch_dtype`)."""
    return getattr(cast, "dtype", getattr(cast, "torch_dtype", None))


def _compared_ids(node: Any, sources: dict[fx.Node, set[str]]) -> Optional[fx.Node]:
    """The ids side of Equal(ids, classes) when the classes carry no input's values (constants,
    or built from shapes), so that its Cast is a one-hot of the ids."""
    if not isinstance(node, fx.Node) or node.meta.get("onnx_op") != "Equal" or len(node.args) != 2:
        return None
    a, b = node.args
    for ids, classes in ((a, b), (b, a)):
        if isinstance(ids, fx.Node) and ids in sources and _class_table(classes):
            return ids
    return None


_SAME_VALUES = frozenset({"Expand", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast"})


def _class_table(node: Any) -> bool:
    """A constant with several values along its last axis: the classes of a one-hot (a single
    value, as in Equal(ids, pad_id), makes a mask instead, which stays computed from the ids)."""
    while isinstance(node, fx.Node) and node.meta.get("onnx_op") in _SAME_VALUES and node.args:
        node = node.args[0]  # broadcast or reshaped: the same class values
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return False
    value = functools.reduce(getattr, node.target.split("."), node.graph.owning_module)
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[-1] > 1


def placeholder_fed(module: fx.GraphModule) -> set[fx.Node]:
    """Nodes with a placeholder among their ancestors (the others are computed from initializers
    alone), found in one sweep in graph order: asking per node walked the ancestors each time,
    quadratic on an unrolled Loop (SLANet: 2004 asks over 80k nodes, 40 s)."""
    fed: set[fx.Node] = set()
    for n in module.graph.nodes:
        if n.op == "placeholder" or any(a in fed for a in n.all_input_nodes):
            fed.add(n)
    return fed


#: Ops that only select or rearrange their input's elements (with constant other operands): the
#: ids a lookup reads through them are elements of the input, at positions they can be traced to.
_SELECTING = frozenset({"Gather", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten",
                        "Identity", "Expand", "Tile", "Cast"})


class IdPath:
    """The selection ops between an integer input and a lookup's ids (LORE, LayoutLM: each box
    coordinate, Gather(boxes, k, axis=2), indexes a position table), run on the input's element
    positions instead of its values: which input element each looked-up id is, so a lookup's
    per-id scores fold back onto the input (summed where an element is looked up twice).

    A step's other operand may be computed at run time (`runtime`: the order of a TopK of the
    lengths that a packed-sequence export gathers its ids by): its value in the call's pass is
    `recorded` there (`Recorded`, or the caller's own forward) before the path is folded."""

    def __init__(self, module: fx.GraphModule, steps: list[fx.Node], start: fx.Node):
        self.start = start
        self.ops = [module.get_submodule(n.target) for n in steps]
        self.runtime: list[fx.Node] = list(dict.fromkeys(
            a for n in steps for a in n.args[1:] if isinstance(a, fx.Node) and a.op != "get_attr"))
        self.recorded: list = [None] * len(self.runtime)
        self.args = [tuple(("path", steps.index(a) + 1 if a in steps else 0) if a is start or a in steps
                           else ("runtime", self.runtime.index(a)) if a in self.runtime
                           else ("value", _constant(module, a)) for a in n.args) for n in steps]

    def positions(self, shape: torch.Size, device) -> Tensor:
        if any(v is None for v in self.recorded):
            raise RuntimeError("an IdPath's run-time operands were not recorded in this call's pass")
        values = [torch.arange(math.prod(shape), device=device).reshape(shape)]
        for op, args in zip(self.ops, self.args):
            values.append(op(*(values[v] if kind == "path" else self.recorded[v] if kind == "runtime" else v
                               for kind, v in args)))
        return values[-1]

    def fold(self, scores: Tensor, shape: torch.Size) -> Tensor:
        """`scores` (one per looked-up id) summed onto the input's elements, in the input's shape."""
        where = self.positions(shape, scores.device).reshape(-1).long()
        return torch.zeros(math.prod(shape), dtype=scores.dtype, device=scores.device).index_add_(
            0, where, scores.reshape(-1)).reshape(shape)

    def record_in(self, module: fx.GraphModule, prefix: str) -> None:
        """Put a `Recorded` on each run-time operand's way into the path's steps (in place)."""
        for index, node in enumerate(self.runtime):
            name = f"{prefix}_{index}"
            module.add_submodule(name, Recorded(self, index))
            with module.graph.inserting_after(node):
                recorded = module.graph.call_module(name, (node,))  # no onnx_op: rewrites leave it alone
            for user in [u for u in node.users if u is not recorded]:
                user.replace_input_with(node, recorded)


class Recorded(nn.Module):
    """Passes its input through, keeping it as an `IdPath`'s run-time operand (the last pass's: the
    DeepLift pass at the input, which the path is folded for)."""

    def __init__(self, path: IdPath, index: int):
        super().__init__()
        self.path, self.index = [path], index  # in a list: not a submodule

    def forward(self, x):
        self.path[0].recorded[self.index] = x
        return x


def _rearranged(module: fx.GraphModule, node: Any) -> Any:
    """The node whose elements `node` rearranges through selecting ops with constant other operands
    (a Transpose of a uint8 HWC picture), else `node` itself."""
    path = id_path(module, None, node)
    return node if path is None else path.start


def id_path(module: fx.GraphModule, lookup: Optional[fx.Node], ids: Any = None) -> Optional[IdPath]:
    """The `IdPath` from the placeholder to `lookup`'s ids (a Gather's second operand, a Cast's or a
    OneHot's first; or `ids`), when every step on it is a selecting op reading the path as its first
    operand (the others constants, or values of the call: `IdPath.runtime`); None when the ids are
    the placeholder or the path is anything else (then only a lookup of the input's own shape can
    be folded)."""
    if ids is None and lookup is not None:
        at = 1 if lookup.meta.get("onnx_op") == "Gather" else 0
        ids = lookup.args[at] if len(lookup.args) > at else None
    steps: list[fx.Node] = []
    node = ids
    while isinstance(node, fx.Node) and node.op != "placeholder":
        op = node.meta.get("onnx_op") if node.op == "call_module" else None
        if op not in _SELECTING or node.kwargs or not node.args or not isinstance(node.args[0], fx.Node) \
                or node.args[0].op == "get_attr":
            return None
        if op == "Cast" and _cast_dtype(module.get_submodule(node.target)) in _FLOATS:
            return None  # positions past 2^24 would not survive float32
        steps.append(node)
        node = node.args[0]
    if not steps or not isinstance(node, fx.Node):
        return None
    steps.reverse()
    if any(_constant(module, a) is _MISSING for n in steps for a in n.args[1:]
           if not (isinstance(a, fx.Node) and a.op != "get_attr")):
        return None
    return IdPath(module, steps, node)


_MISSING = object()


def _constant(module: fx.GraphModule, arg):
    """A step's constant operand: a literal, or the tensor a get_attr node reads."""
    if isinstance(arg, fx.Node):
        if arg.op != "get_attr":
            return _MISSING
        value = module
        for part in arg.target.split("."):
            value = getattr(value, part, None)
        return value if isinstance(value, Tensor) else _MISSING
    return arg
