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

    @property
    def differentiable(self) -> bool:
        """Attribution flows through floating inputs; integer ones (token ids) need an embedding."""
        return self.dtype is not None and np.issubdtype(self.dtype, np.floating)

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.name}: {self.dtype if self.dtype is not None else 'non-tensor'} {dims}"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "dtype": None if self.dtype is None else str(self.dtype),
                "differentiable": self.differentiable}


@dataclass(frozen=True)
class FinalActivation:
    """A Softmax/LogSoftmax/Sigmoid found at the end of an output, and what was done with it."""

    op_type: str
    node_name: str
    stripped: bool
    through: tuple[str, ...] = ()  # pass-through ops between it and the output
    reason: str = ""  # why it was kept, when it was

    def describe(self) -> str:
        via = f" (through {', '.join(self.through)})" if self.through else ""
        done = "stripped: logits are attributed" if self.stripped else f"kept{': ' + self.reason if self.reason else ''}"
        return f"{self.op_type} node {self.node_name!r}{via}, {done}"

    def to_dict(self) -> dict:
        return {"op_type": self.op_type, "node": self.node_name, "stripped": self.stripped,
                "through": list(self.through), "reason": self.reason}


@dataclass(frozen=True)
class OutputSpec(TensorSpec):
    final_activation: Optional[FinalActivation] = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["final_activation"] = None if self.final_activation is None else self.final_activation.to_dict()
        return out


def value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    return TensorSpec(value.name, *_shape_and_dtype(value))


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


def output_spec(value: onnx.ValueInfoProto, final: Optional[FinalActivation]) -> OutputSpec:
    return OutputSpec(value.name, *_shape_and_dtype(value), final_activation=final)


def _zipmap_value_type(t: onnx.TypeProto) -> Optional[int]:
    """The value type of a sequence of maps of tensors (ZipMap's output), else None."""
    if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("map_type"):
        value = t.sequence_type.elem_type.map_type.value_type
        if value.HasField("tensor_type"):
            return value.tensor_type.elem_type
    return None
