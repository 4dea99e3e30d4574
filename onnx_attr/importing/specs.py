"""What the model declares about its inputs and outputs, in ONNX terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx
from onnx import helper

Dim = Union[int, str, None]  # fixed size, symbolic name (e.g. "batch"), or unknown


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ONNX name, shape with symbolic dims kept, numpy dtype."""

    name: str
    shape: Optional[tuple[Dim, ...]]  # None when even the rank is unknown
    dtype: Optional[np.dtype]  # None for non-tensor values (sequences, maps)
    #: floating values the graph only casts to an integer type (ids stored as floats): no gradient
    #: reaches them, so they are treated as integer ids everywhere (see `cast_id_inputs`)
    ids: bool = False

    @property
    def differentiable(self) -> bool:
        """Attribution flows through floating inputs; integer ones (token ids) need an embedding."""
        return self.dtype is not None and np.issubdtype(self.dtype, np.floating) and not self.ids

    @property
    def integer_ids(self) -> bool:
        """Ids held in a floating dtype: fed to the methods as int64 (the value the graph's Cast makes)."""
        return self.ids and self.dtype is not None and np.issubdtype(self.dtype, np.floating)

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        kind = " (ids: cast to integers in the graph)" if self.integer_ids else ""
        return f"{self.name}: {self.dtype if self.dtype is not None else 'non-tensor'} {dims}{kind}"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "dtype": None if self.dtype is None else str(self.dtype),
                "differentiable": self.differentiable, "ids": self.integer_ids}


#: what an output's name adds to its input's for a state's next value (`stateN`, `h_out`, `hidden_next`)
NEXT_STATE = frozenset({"n", "out", "new", "next", "t"})


def names_next_state(input_name: str, output_name: str) -> bool:
    """Whether an output's name says it is the next value of a streaming model's state input
    (`state` in, `stateN` out; `h0` in, `hn` out; not an image's `x` -> `x_hat`)."""
    stem = input_name.rstrip("0123456789_").lower()
    name = output_name.lower()
    rest = name[len(stem):].lstrip("_")
    return bool(stem) and name != input_name.lower() and name.startswith(stem) and (rest.isdigit() or rest in NEXT_STATE)


def attributed_after(op_type: str) -> str:
    """What stripping `op_type` off an output leaves to attribute."""
    return "the float values it rounds" if op_type == "QuantizeLinear" else "logits"


@dataclass(frozen=True)
class FinalActivation:
    """A Softmax/LogSoftmax/Sigmoid found at the end of an output, and what was done with it."""

    op_type: str
    node_name: str
    stripped: bool
    through: tuple[str, ...] = ()  # pass-through ops between it and the output
    reason: str = ""  # why it was kept, when it was
    axis: Optional[int] = None  # a Softmax/LogSoftmax node's axis as the file gives it (its opset's default filled in)

    def describe(self) -> str:
        via = f" (through {', '.join(self.through)})" if self.through else ""
        done = f"stripped: {self.attributed()} are attributed" if self.stripped else \
            f"kept{': ' + self.reason if self.reason else ''}"
        return f"{self.op_type} node {self.node_name!r}{via}, {done}"

    def attributed(self) -> str:
        """What a strip leaves to attribute: logits, or a quantized output's floats before rounding."""
        return attributed_after(self.op_type)

    def to_dict(self) -> dict:
        return {"op_type": self.op_type, "node": self.node_name, "stripped": self.stripped,
                "through": list(self.through), "reason": self.reason}


@dataclass(frozen=True)
class OutputSpec(TensorSpec):
    final_activation: Optional[FinalActivation] = None
    #: what a NonMaxSuppression makes of it (`final_activation.expose_selection_scores`): the rows it
    #: kept (which rows changes with the input: explained only when asked for by name), or the
    #: class scores [N, C, A] it reads (their layout known: the CLI's default is the top anchor)
    role: Optional[str] = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["final_activation"] = None if self.final_activation is None else self.final_activation.to_dict()
        return out


def value_spec(value: onnx.ValueInfoProto, ids: bool = False) -> TensorSpec:
    return TensorSpec(value.name, *_shape_and_dtype(value), ids=ids)


#: ops that pass their first input's values on unchanged (only rearranged): followed to the Cast
_SAME_VALUES = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
#: ops whose output depends on their input's shape only
_SHAPE_ONLY = frozenset({"Shape", "Size"})
#: ops whose output is booleans: no gradient flows back through them
_COMPARISONS = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN", "IsInf"})
_INTEGERS = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                       onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                       onnx.TensorProto.UINT32, onnx.TensorProto.UINT64})


def cast_id_inputs(graph: onnx.GraphProto) -> set[str]:
    """Floating graph inputs whose values reach the outputs only through a Cast to an integer type
    (after ops that only rearrange them; shape reads and comparisons aside): ids stored as floats
    (tf2onnx's float bytes into a OneHot; a Keras Embedding on Keras' default float input, its
    padding mask an Equal of the ids). No gradient flows through the Cast, so they are attributed as ids,
    at their one-hot or embedding. An input used anywhere as a float (or read inside a subgraph,
    or returned) stays a float input: nothing is guessed."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    in_subgraphs = _subgraph_reads(graph)
    outputs = {o.name for o in graph.output}
    found = set()
    for value in graph.input:
        elem = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
        if not elem or not np.issubdtype(helper.tensor_dtype_to_np_dtype(elem), np.floating):
            continue
        if _only_cast(value.name, consumers, in_subgraphs, outputs):
            found.add(value.name)
    return found


def _only_cast(name: str, consumers: dict, in_subgraphs: set[str], outputs: set[str]) -> bool:
    stack, seen, casts = [name], set(), 0
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in outputs or tensor in in_subgraphs:
            return False
        for node in consumers.get(tensor, ()):
            if node.domain in ("", "ai.onnx") and (node.op_type in _SHAPE_ONLY or node.op_type in _COMPARISONS):
                continue  # a shape, or a mask of booleans (Keras' padding mask, ids != 0): no gradient
            if node.domain not in ("", "ai.onnx") or node.op_type not in _SAME_VALUES | {"Cast"}:
                return False
            if list(node.input).index(tensor) != 0 or list(node.input).count(tensor) != 1:
                return False  # used as a shape or axes operand: not an id path
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to not in _INTEGERS:
                    return False
                casts += 1
            else:
                stack.extend(node.output[:1])
    return casts > 0


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside subgraphs (If/Loop/Scan bodies), at any depth."""
    found: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                for inner in sub.node:
                    found.update(inner.input)
                found |= _subgraph_reads(sub)
    return found


def _shape_and_dtype(value: onnx.ValueInfoProto) -> tuple[Optional[tuple[Dim, ...]], Optional[np.dtype]]:
    zipped = _zipmap_value_type(value.type)
    if zipped is not None:  # imported as the [N, classes] tensor of the maps' values
        return None, np.dtype(helper.tensor_dtype_to_np_dtype(zipped))
    if not value.type.HasField("tensor_type"):
        return None, None
    tensor = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else None
    if not tensor.HasField("shape"):
        return None, dtype
    return tuple(_dim(d) for d in tensor.shape.dim), dtype


#: dim_param values exporters write for "any size", each its own unknown: never a shared symbol
ANONYMOUS_DIMS = frozenset({"", "?"})


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    """A fixed size, a symbol shared by every axis that names it, or None (anonymous: '?', an
    empty dim_param, a negative dim_value, or nothing)."""
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value >= 0 else None
    return None if d.dim_param.strip() in ANONYMOUS_DIMS else d.dim_param


def output_spec(value: onnx.ValueInfoProto, final: Optional[FinalActivation], role: Optional[str] = None
                ) -> OutputSpec:
    return OutputSpec(value.name, *_shape_and_dtype(value), final_activation=final, role=role)


def _zipmap_value_type(t: onnx.TypeProto) -> Optional[int]:
    """The value type of a sequence of maps of tensors (ZipMap's output), else None."""
    if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("map_type"):
        value = t.sequence_type.elem_type.map_type.value_type
        if value.HasField("tensor_type"):
            return value.tensor_type.elem_type
    return None
