"""Rows proven independent from the graph itself, so that the first call of a method need not run
the batch probe (`batch.probe`: the plain model on one row and on three, several forwards of a
large detector before any attribution starts).

The walk follows the batch through the ONNX graph on the call's shapes: which axis of each
tensor holds the examples, and the shape values made from it (`Shape` -> `Gather` -> `Concat` ->
`Reshape`, the way exporters keep a batch dynamic). Every op it knows maps the batch axis of its
inputs to its outputs without mixing rows; any other op, or a doubt (a reshape whose target bakes
the batch in, a reduction or a normalisation over the batch axis, a recurrence along it, a
quantization scale taken over the whole tensor), ends the walk with no answer, and the probe
runs as before. So an answer here is the probe's answer for a graph whose rows run apart, and the
tests hold the two to each other.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_attr.importing import isolated

SHAPE_OPS = frozenset({"Cast", "Identity", "Squeeze", "Unsqueeze", "Gather", "Slice", "Concat"})
B = "B"  # a shape value's entry that is the number of examples
FREE = "?"  # an entry of one example's shape that the walk does not know (a dynamic height)

#: elementwise ops: outputs broadcast from the inputs, each output element from the same position
ELEMENTWISE = frozenset("""Abs Acos Acosh Add And Asin Asinh Atan Atanh BitShift BitwiseAnd BitwiseNot BitwiseOr
BitwiseXor Cast CastLike Ceil Celu Clip Cos Cosh Div Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid
HardSwish Identity IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or PRelu Pow
Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Swish Tan Tanh
ThresholdedRelu Where Xor Dropout""".split())

#: ops over [N, C, spatial...] that treat each example apart, their other inputs constant
PER_EXAMPLE = frozenset("""Conv ConvTranspose ConvInteger MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool
GlobalLpPool BatchNormalization InstanceNormalization GroupNormalization LRN DepthToSpace SpaceToDepth""".split())


class _Unknown(Exception):
    """The walk cannot tell: the probe decides."""


def traced_output_axes(model, tensors: Sequence, axes: Sequence[Optional[int]], per_pass: bool = False
                       ) -> Optional[tuple]:
    """Each output's batch axis (None: it has none) when the graph keeps the examples' rows apart
    on these inputs; None when the walk cannot prove it. `per_pass`: each example runs in a pass of
    its own (`batch.pass_batch` is 1 for a dynamic quantization), so a statistic of the whole
    tensor (DynamicQuantizeLinear's scale) is that one example's: the walk then follows the
    quantized ops too, and its answer is where each output holds that example."""
    try:
        return _Walk(model, tensors, axes, per_pass).outputs()
    except (_Unknown, IndexError, KeyError, ValueError, TypeError, ArithmeticError):  # any doubt: the probe runs
        return None


class _Walk:
    def __init__(self, model, tensors, axes, per_pass: bool = False):
        self.per_pass = per_pass
        if model.__dict__.get("batch_parent") is not None:
            raise _Unknown  # a model cut inside another: its outputs are not the graph's
        proto = model.onnx_model
        if any(node.domain not in ("", "ai.onnx") for node in proto.graph.node):
            raise _Unknown  # before the shape inference: its copies of a 194 MB tree ensemble took 3 GB
        self.graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.model = model
        ran = getattr(model, "ran_on", None)
        self.shapes = _inferred_shapes(proto, tensors, model.inputs, trusted=bool(ran and ran(tensors)))
        self.consts = {t.name: t for t in self.graph.initializer}
        self.state: dict[str, object] = {}  # tensor -> batch axis (int), or a shape value (list)
        for spec, t, a in zip(model.inputs, tensors, axes):
            if a is not None:
                self.state[spec.name] = a

    def outputs(self) -> Optional[tuple]:
        if not any(isinstance(v, int) for v in self.state.values()):
            raise _Unknown
        for node in self.graph.node:
            found = self.step(node)
            for name, value in zip(node.output, found):
                if name and value is not None:
                    self.state[name] = value
        result = []
        for spec in self.model.outputs:
            value = self.state.get(spec.name)
            if spec.name not in self.shapes or not isinstance(value, (int, type(None))):
                raise _Unknown  # not a tensor of the graph, or a shape value
            result.append(value)
        return tuple(result)

    # -- what the walk knows of a tensor -------------------------------------------------------------
    def shape(self, name: str) -> list:
        found = self.shapes.get(name)
        if found is None:
            raise _Unknown
        return found

    def constant(self, name: str) -> Optional[np.ndarray]:
        """A small constant's value (an initializer of the graph), else None."""
        t = self.consts.get(name)
        if t is None or math.prod(t.dims) > 4096:
            return None
        return numpy_helper.to_array(t)

    def ints(self, node, position: int, attribute: str) -> Optional[list]:
        """An op's int list, given as an attribute (older opsets) or a constant input."""
        for a in node.attribute:
            if a.name == attribute:  # an empty list stays empty (Squeeze: every size-1 axis)
                return list(a.ints) if a.type == onnx.AttributeProto.INTS else [a.i]
        if len(node.input) > position and node.input[position]:
            value = self.constant(node.input[position])
            if value is None:
                raise _Unknown
            return [int(v) for v in value.reshape(-1)]
        return None

    def attr(self, node, name: str, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    # -- one node ---------------------------------------------------------------------------------
    def step(self, node) -> list:
        ins = [self.state.get(n) if n else None for n in node.input]
        op = node.op_type
        if all(v is None for v in ins):  # nothing of the examples flows in (sizes may still be folded)
            return [self.shape_value(node, ins) if op in SHAPE_OPS else None] + [None] * (len(node.output) - 1)
        if (op in ELEMENTWISE or op in ("TopK", "CumSum")) and op not in SHAPE_OPS and not any(
                isinstance(v, list) and B in v for v in ins):
            ins = [None if isinstance(v, list) else v for v in ins]  # sizes of one example: constants here
            if all(v is None for v in ins):  # arithmetic on those sizes alone (H * 2 for a Resize)
                return [None] * len(node.output)
        if any(isinstance(v, list) for v in ins):
            return [self.shape_value(node, ins)] + [None] * (len(node.output) - 1)
        if op == "CastLike":  # the second input names a type: the output is the first's shape
            return [ins[0]]
        if op in ELEMENTWISE:
            return [self.broadcast(node)] * len(node.output)  # Dropout's mask has the input's shape
        if op in PER_EXAMPLE:
            if ins[0] != 0 or any(v is not None for v in ins[1:]) or (op == "MaxPool" and len(node.output) > 1
                                                                     and node.output[1]):
                raise _Unknown  # indices of MaxPool count across the batch; training BatchNorm mixes
            if op == "BatchNormalization" and (len([o for o in node.output if o]) > 1
                                               or self.attr(node, "training_mode", 0)):
                raise _Unknown
            return [0] + [None] * (len(node.output) - 1)
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise _Unknown
        return handler(node, ins)

    def broadcast(self, node) -> Optional[int]:
        rank = max(len(self.shape(n)) for n in node.input if n)
        found = None
        for name in node.input:
            if not name:
                continue
            value, shape = self.state.get(name), self.shape(name)
            if isinstance(value, int):
                axis = value + rank - len(shape)
                if found not in (None, axis):
                    raise _Unknown
                found = axis
        if found is None:
            return None
        for name in node.input:  # an operand without the batch (a folded shape value too) must broadcast along it
            if name and not isinstance(self.state.get(name), int):
                shape = self.shape(name)
                at = found - (rank - len(shape))
                if at >= 0 and shape[at] != 1:
                    raise _Unknown
        return found

    def op_Transpose(self, node, ins):
        perm = self.attr(node, "perm", None)
        perm = list(range(len(self.shape(node.input[0])))[::-1]) if perm is None else list(perm)
        return [perm.index(ins[0])]

    def op_Reshape(self, node, ins):
        if ins[0] is None or isinstance(ins[1], int):
            raise _Unknown
        target = ins[1]
        if target is None:  # a constant target: the batch kept only where it copies the axis (0)
            value = self.constant(node.input[1])
            if value is None:
                raise _Unknown
            target = [int(d) for d in value.reshape(-1)]
        return [self._reshaped(node.input[0], ins[0], target, node.output[0], copy_zero=not self.attr(
            node, "allowzero", 0))]

    def _reshaped(self, source: str, axis: int, target: list, out: str, copy_zero: bool) -> int:
        where = [i for i, d in enumerate(target) if d == B or (copy_zero and d == 0 and i == axis)]
        if not where and target.count(-1) == 1:  # [-1, 2048, 1] (tf2onnx): the -1 is the number of
            # examples when the other entries hold exactly one example's elements
            shape = self.shape(source)
            sizes = [shape[i] if copy_zero and d == 0 and i < len(shape) else d for i, d in enumerate(target) if d != -1]
            if None not in shape and all(isinstance(d, int) and d > 0 for d in sizes) and \
                    math.prod(sizes) * shape[axis] == math.prod(shape):
                where = [target.index(-1)]
        if len(where) != 1 or any(d == B for i, d in enumerate(target) if i != where[0]):
            raise _Unknown
        before_in = self.shape(source)[:axis]
        before_out = self.shape(out)[:where[0]] if where[0] else []
        if not all(isinstance(d, int) for d in before_in + before_out) or math.prod(before_in) != math.prod(before_out):
            raise _Unknown  # the examples would not stay whole blocks
        return where[0]

    def op_Flatten(self, node, ins):
        axis = self.attr(node, "axis", 1)
        rank = len(self.shape(node.input[0]))
        axis = axis + rank if axis < 0 else axis
        shape = self.shape(node.input[0])
        if ins[0] >= axis:  # the batch in the second block ([1, n * C] for axis 0): whole rows only
            if not all(d == 1 for d in shape[axis:ins[0]]):
                raise _Unknown
            return [1]
        if not all(d == 1 for d in shape[:ins[0]]):
            raise _Unknown
        return [0]

    def op_Squeeze(self, node, ins):
        rank = len(self.shape(node.input[0]))
        axes = self.ints(node, 1, "axes")
        if not axes:
            raise _Unknown  # every size-1 axis: the batch of one too
        axes = [a + rank if a < 0 else a for a in axes]
        if ins[0] in axes:
            raise _Unknown
        return [ins[0] - sum(a < ins[0] for a in axes)]

    def op_Unsqueeze(self, node, ins):
        axes = self.ints(node, 1, "axes")
        rank = len(self.shape(node.input[0])) + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        axis = ins[0]
        for a in axes:
            if a <= axis:
                axis += 1
        return [axis]

    def _along(self, node, ins, axis_attr="axis", default=0):
        axis = self.attr(node, axis_attr, default)
        rank = len(self.shape(node.input[0]))
        return axis + rank if axis < 0 else axis

    def op_Concat(self, node, ins):
        axis = self._along(node, ins)
        if any(v is None for v in ins) or len(set(ins)) != 1 or ins[0] == axis:
            raise _Unknown  # a constant joined in would need the batch size
        return [ins[0]]

    def op_Split(self, node, ins):
        if ins[0] == self._along(node, ins) or any(v is not None for v in ins[1:]):
            raise _Unknown
        return [ins[0]] * len(node.output)

    def op_Slice(self, node, ins):
        rank = len(self.shape(node.input[0]))
        axes = self.ints(node, 3, "axes")
        starts = self.ints(node, 1, "starts")
        axes = list(range(len(starts))) if axes is None else [a + rank if a < 0 else a for a in axes]
        if any(v is not None for v in ins[1:]):
            raise _Unknown
        if ins[0] in axes:  # only the whole batch axis, forward (tf2onnx's strided_slice names every axis)
            at = axes.index(ins[0])
            ends = self.ints(node, 2, "ends")
            steps = self.ints(node, 4, "steps") or [1] * len(starts)
            if starts[at] != 0 or ends[at] < 10**9 or steps[at] != 1:  # tf2onnx writes 1e9 for "to the end"
                raise _Unknown
        return [ins[0]]

    def op_OneHot(self, node, ins):
        """Batched indices: the new axis at `axis` (default last), depth and values constant."""
        if any(v is not None for v in ins[1:]):
            raise _Unknown
        rank = len(self.shape(node.input[0])) + 1
        axis = self.attr(node, "axis", -1)
        axis = axis + rank if axis < 0 else axis
        return [ins[0] + 1 if axis <= ins[0] else ins[0]]

    def op_Gather(self, node, ins):
        if ins[1] is not None:  # a lookup of the examples' ids in a table that has no batch
            if ins[0] is not None:
                raise _Unknown
            return [self._along(node, ins) + ins[1]]
        axis = self._along(node, ins)
        if axis == ins[0]:
            raise _Unknown
        return [ins[0] if ins[0] < axis else ins[0] + len(self.shape(node.input[1])) - 1]

    def op_QuantizeLinear(self, node, ins):
        """Elementwise with constant scales: per tensor, or per channel on an axis other than the batch's."""
        if any(v is not None for v in ins[1:]) or self.attr(node, "block_size", 0):
            raise _Unknown
        scale = self.shape(node.input[1])
        if math.prod(d or 0 for d in scale) != 1 and not scale == []:
            if len(scale) != 1 or self._along(node, ins, default=1) == ins[0]:
                raise _Unknown
        return [ins[0]]

    op_DequantizeLinear = op_QuantizeLinear

    def op_DynamicQuantizeLinear(self, node, ins):
        """The quantized tensor keeps x's axis; its scale and zero point are one example's (per pass
        only: stacked rows would share them)."""
        if not self.per_pass:
            raise _Unknown
        return [ins[0], None, None]

    def op_MatMulInteger(self, node, ins):
        """MatMul of the zero-point-centred operands: the zero points have no batch."""
        if any(v is not None for v in ins[2:]):
            raise _Unknown
        return self.op_MatMul(node, ins[:2])

    def op_Tile(self, node, ins):
        if ins[1] is not None:
            raise _Unknown
        repeats = self.value(node.input[1], None)
        if repeats is None or repeats[ins[0]] != 1:
            raise _Unknown
        return [ins[0]]

    def op_TopK(self, node, ins):
        """Along an axis other than the batch's, k the same for every example."""
        k = ins[1] if len(ins) > 1 else None
        if isinstance(k, int) or (isinstance(k, list) and B in k) or self._along(node, ins, default=-1) == ins[0]:
            raise _Unknown
        return [ins[0], ins[0]]

    def op_CumSum(self, node, ins):
        axis = self.value(node.input[1], ins[1])
        rank = len(self.shape(node.input[0]))
        if axis is None or len(axis) != 1 or axis[0] == FREE or axis[0] % rank == ins[0]:
            raise _Unknown
        return [ins[0]]

    def op_Pad(self, node, ins):
        pads = self.ints(node, 1, "pads")
        rank = len(self.shape(node.input[0]))
        axes = self.ints(node, 3, "axes") if self.opset >= 18 else None
        axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
        if pads is None or any(v is not None for v in ins[1:]):
            raise _Unknown
        k = len(axes)
        if ins[0] in axes and (pads[axes.index(ins[0])] or pads[k + axes.index(ins[0])]):
            raise _Unknown
        return [ins[0]]

    def op_Resize(self, node, ins):
        """The batch's axis kept: not among the resized axes (`axes`, opset 18), or sized `B`, or scaled by 1."""
        if not isinstance(ins[0], int) or any(isinstance(v, int) for v in ins[1:]):
            raise _Unknown
        if _text(self.attr(node, "coordinate_transformation_mode", "")) == "tf_crop_and_resize":
            raise _Unknown  # the region of interest may crop the batch's axis
        rank = len(self.shape(node.input[0]))
        axes = self.attr(node, "axes", None)
        axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
        sizes = ins[3] if len(ins) > 3 else None
        if isinstance(sizes, list):
            if _text(self.attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
                raise _Unknown  # one scale for every axis in `axes`, the batch's among them
            if len(sizes) != len(axes) or sizes.count(B) > 1 or (
                    ins[0] in axes and sizes[axes.index(ins[0])] != B) or (B in sizes and ins[0] not in axes):
                raise _Unknown
            return [ins[0]]
        if ins[0] not in axes:
            return [ins[0]]
        scales = self.ints_or_floats(node, 2 if self.opset >= 11 else 1)
        if scales is None or len(scales) != len(axes) or scales[axes.index(ins[0])] != 1:
            raise _Unknown
        return [ins[0]]

    op_Upsample = op_Resize

    def ints_or_floats(self, node, position: int) -> Optional[list]:
        if len(node.input) <= position or not node.input[position]:
            return self.attr(node, "scales", None)
        value = self.constant(node.input[position])
        return None if value is None else [float(v) for v in value.reshape(-1)]

    def _reduced(self, node, ins, axes: Optional[list], keepdims: bool) -> list:
        rank = len(self.shape(node.input[0]))
        if not axes:
            raise _Unknown  # every axis, the batch's too
        axes = [a + rank if a < 0 else a for a in axes]
        if ins[0] in axes or any(v is not None for v in ins[1:]):
            raise _Unknown
        return [ins[0] if keepdims else ins[0] - sum(a < ins[0] for a in axes)]

    def op_reduce(self, node, ins):
        new_form = node.op_type == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        axes = self.ints(node, 1, "axes") if new_form else self.attr(node, "axes", None)
        return self._reduced(node, ins, list(axes) if axes is not None else None, bool(self.attr(node, "keepdims", 1)))

    op_ReduceMean = op_ReduceSum = op_ReduceMax = op_ReduceMin = op_ReduceProd = op_ReduceL1 = op_ReduceL2 = op_reduce
    op_ReduceSumSquare = op_ReduceLogSum = op_ReduceLogSumExp = op_reduce

    def op_ArgMax(self, node, ins):
        return self._reduced(node, ins, [self.attr(node, "axis", 0)], bool(self.attr(node, "keepdims", 1)))

    op_ArgMin = op_ArgMax

    def op_Softmax(self, node, ins):
        axis = self._along(node, ins, default=-1 if self.opset >= 13 else 1)
        if (self.opset >= 13 and ins[0] == axis) or (self.opset < 13 and ins[0] >= axis):
            raise _Unknown  # over the batch, or (before opset 13) over a block holding it
        return [ins[0]]

    op_LogSoftmax = op_Hardmax = op_Softmax

    def op_LayerNormalization(self, node, ins):
        if ins[0] >= self._along(node, ins, default=-1) or any(v is not None for v in ins[1:]):
            raise _Unknown
        return [ins[0]] * len(node.output)  # its mean and 1/std keep the leading axes

    def op_MatMul(self, node, ins):
        a, b = (len(self.shape(n)) for n in node.input[:2])
        if a < 2 or b < 2 or (ins[0] is not None and ins[0] == a - 1) or (ins[1] is not None and ins[1] >= b - 2):
            raise _Unknown  # the batch on an axis the product sums over, or on B's own matrix axes
        rank = max(a, b)
        found = {v + rank - r for v, r in ((ins[0], a), (ins[1], b)) if v is not None}
        if len(found) != 1:
            raise _Unknown
        axis = found.pop()
        if axis < rank - 2:  # a stacked-matrix axis: the other operand must broadcast along it
            other, r = (node.input[1], b) if ins[1] is None else (node.input[0], a)
            at = axis - (rank - r)
            if (ins[0] is None or ins[1] is None) and at >= 0 and self.shape(other)[at] != 1:
                raise _Unknown
        elif ins[1] is not None:
            raise _Unknown
        return [axis]

    def op_Gemm(self, node, ins):
        if ins[0] != (1 if self.attr(node, "transA", 0) else 0) or any(v is not None for v in ins[1:]):
            raise _Unknown
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if c and len(self.shape(c)) == 2 and self.shape(c)[0] != 1:
            raise _Unknown
        return [0]

    def op_LSTM(self, node, ins):
        layout = self.attr(node, "layout", 0)
        if ins[0] != (0 if layout else 1) or any(v not in (None, 0 if layout else 1) for v in ins[1:]):
            raise _Unknown  # the recurrence runs along the batch's axis, or a state mixes it
        if any(v is not None for v in ins[1:4]):
            raise _Unknown  # weights that vary with the examples
        if len(node.input) > 4 and node.input[4]:
            raise _Unknown  # lengths per example: a constant one bakes the export's batch size in
        if any(name and v is None for name, v in zip(node.input[5:], ins[5:])):
            raise _Unknown  # an initial state of fixed batch: the export's batch size baked in
        if layout:
            return [0, 0, 0][:len(node.output)]
        return [2, 1, 1][:len(node.output)]

    op_GRU = op_RNN = op_LSTM

    def op_Shape(self, node, ins):
        shape = [B if i == ins[0] else (d if isinstance(d, int) else FREE)
                 for i, d in enumerate(self.shape(node.input[0]))]
        start, end = self.attr(node, "start", 0), self.attr(node, "end", None)
        return [shape[start:end]]

    # -- shape values ---------------------------------------------------------------------------------
    def value(self, name: str, state) -> Optional[list]:
        """A small int tensor's entries: followed (`state`), or a constant of the graph."""
        if isinstance(state, list):
            return state
        if state is None and name:
            found = self.constant(name)
            if found is not None and found.ndim <= 1 and np.issubdtype(found.dtype, np.integer):
                return [int(v) for v in found.reshape(-1)]
        return None

    def _folded(self, node, values: list) -> Optional[list]:
        op = node.op_type
        if op == "Concat":
            joined = []
            for name, v in zip(node.input, values):
                shape = self.shape(name)
                if v is None and len(shape) <= 1 and None not in shape:
                    v = [FREE] * math.prod(shape)  # sizes of one example the walk does not know
                if v is None:
                    raise _Unknown
                joined += v
            if len(joined) > 64:
                raise _Unknown  # not a shape
            return joined
        if values[0] is None or len(self.shape(node.input[0])) > 1:
            raise _Unknown
        if op == "Gather":
            if values[1] is None or len(self.shape(node.input[1])) > 1:
                raise _Unknown
            return [values[0][i] for i in values[1]]
        if op == "Slice":
            if len(node.input) < 3:  # Slice-1: attributes
                starts, ends = self.attr(node, "starts", None), self.attr(node, "ends", None)
                steps = [1]
            else:
                starts, ends = values[1], values[2]
                steps = values[4] if len(values) > 4 and node.input[4] else [1]
            if not starts or not ends or not steps or len(starts) != 1 or not all(
                    isinstance(v, int) for v in (starts[0], ends[0], steps[0])):
                raise _Unknown
            return values[0][slice(starts[0], ends[0], steps[0])]
        return values[0]  # Cast, Identity, Squeeze, Unsqueeze of a 0-d or 1-d value: the same entries

    def shape_value(self, node, ins) -> Optional[list]:
        """Ops on the small 1-D int tensors exporters build shapes from, folded entry by entry (an
        entry is a size, `B` or `FREE`); an entry computed from the number of examples (B * 3) is
        not followed. A value computed from one example's sizes alone is independent of the
        examples (None) where it is not folded."""
        op = node.op_type
        batched = any(isinstance(v, int) for v in ins)
        if not batched and op in SHAPE_OPS:
            try:
                return self._folded(node, [self.value(n, v) for n, v in zip(node.input, ins)])
            except (_Unknown, IndexError, ValueError, TypeError):
                pass
        if not batched and not any(isinstance(v, list) and B in v for v in ins):
            return None
        if op in ("Reshape", "Expand") and isinstance(ins[1], list) and ins[0] is None:
            # a constant spread to a shape holding the batch (initial states, masks)
            if op == "Expand":
                at = [i for i, d in enumerate(ins[1]) if d == B]
                shape = self.shape(node.input[0])
                if len(at) != 1 or (len(ins[1]) - len(shape) <= at[0] and shape[at[0] - len(ins[1]) + len(shape)] != 1):
                    raise _Unknown
                return at[0] + max(0, len(shape) - len(ins[1]))  # a constant of higher rank adds leading axes
            raise _Unknown
        if op == "Reshape" and isinstance(ins[0], int) and isinstance(ins[1], list):
            return self.op_Reshape(node, ins)[0]
        if op == "Resize":
            return self.op_Resize(node, ins)[0]
        if op == "Tile" and ins[0] is None and isinstance(ins[1], list):  # a constant repeated per example
            at = [i for i, d in enumerate(ins[1]) if d == B]
            if len(at) != 1 or self.shape(node.input[0])[at[0]] != 1:
                raise _Unknown
            return at[0]
        if op == "ConstantOfShape":
            at = [i for i, d in enumerate(ins[0]) if d == B]
            if len(at) != 1:
                raise _Unknown
            return at[0]
        if op == "Expand" and isinstance(ins[0], int) and isinstance(ins[1], list):
            shape = self.shape(node.input[0])
            rank = max(len(shape), len(ins[1]))
            axis = ins[0] + rank - len(shape)
            at = axis - (rank - len(ins[1]))  # the target's entry on the batch's axis, if it reaches it
            if (at >= 0 and ins[1][at] not in (B, 1)) or any(d == B for i, d in enumerate(ins[1]) if i != at):
                raise _Unknown  # the batch's axis resized, or examples copied along another axis
            return axis
        raise _Unknown


def _onnx_shapes(light: onnx.ModelProto, trusted: bool = False) -> onnx.ModelProto | None:
    """ONNX's inference on the call's shapes; None where it refuses the graph. On shapes no forward
    has run on yet it runs in a child process (`importing/isolated.py`: ~45 ms a fork on a large
    process, against 3 ms in this one): where it aborts there (dims gone negative: an input too
    short for a kernel), the walk has no answer and the probe's forward names the node that
    cannot run. `trusted`: the model has run on these shapes, so no dim can go negative."""
    try:
        if trusted:
            return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
        return isolated.infer_shapes(light, strict_mode=False, data_prop=True)
    except isolated.InferenceAborted:
        raise _Unknown from None
    except Exception:
        return None


def _stand_in_for_fused(light: onnx.ModelProto) -> None:
    """The LayerNormalization nodes the import fuses (fusions.py) into a graph whose opset predates
    LayerNormalization (17) are unknown to ONNX's inference there, and every shape after them with
    them (a recogniser's encoder): in this copy, read for shapes only, each is an Identity of its
    input, whose shape its one output has."""
    opset = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 17:
        return
    for node in light.graph.node:
        if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            node.op_type = "Identity"
            del node.input[1:]
            del node.attribute[:]


def _upgraded_shapes(light: onnx.ModelProto, first: "_Inferred", trusted: bool = False) -> Optional["_Inferred"]:
    """ONNX's inference on the graph converted to opset 14, where it settles what it could not at an
    older opset: before Reshape-14, Reshape's inference reads only a constant target, so every
    shape after a reshape to a computed shape (Shape -> Slice -> Concat, the way paddle2onnx keeps
    a dim dynamic) is lost. ONNX's version converter and its inference are C++, a fraction of
    onnxruntime's symbolic inference (in Python) on a recogniser. Trusted only where complete and
    equal to the first inference on every dim that one knew; None otherwise."""
    from onnx import version_converter

    opset = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 7 <= opset < 14 or first.first_lost() != "Reshape":
        return None
    try:
        second = _Inferred.of(_onnx_shapes(version_converter.convert_version(light, 14), trusted))
    except Exception:  # an adapter that reads a stubbed weight, a node it has no adapter for
        return None
    if second is None or not second.complete:
        return None
    for name, dims in first.dims.items():
        found = second.dims.get(name, dims)
        if len(found) != len(dims) or any(d is not None and d != f for d, f in zip(dims, found)):
            return None
    return second


class _Inferred:
    """One inference's graph with each value's dims read once (a dim it could not tell as None):
    the checks below read them several times, ~1 ms a read on a 400-node graph."""

    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        self.dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                     for v in (*proto.graph.value_info, *proto.graph.output)
                     if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
        #: the values whose every dim the inference knows
        self.settled = {name for name, dims in self.dims.items() if None not in dims}
        #: every node output has a shape with every dim known
        self.complete = all(o in self.settled for n in proto.graph.node for o in n.output if o)

    @classmethod
    def of(cls, proto: Optional[onnx.ModelProto]) -> Optional["_Inferred"]:
        return None if proto is None else cls(proto)

    def first_lost(self) -> Optional[str]:
        """The op type of the first node (in graph order) whose inputs' shapes are all known but one
        of whose outputs' is not: where the inference lost the trail."""
        graph = self.proto.graph
        known = set(self.settled)
        known.update(v.name for v in graph.input)
        known.update(t.name for t in graph.initializer)
        for node in graph.node:
            if all(not i or i in known for i in node.input) and any(o and o not in known for o in node.output):
                return node.op_type
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _inferred_shapes(proto: onnx.ModelProto, tensors, specs, trusted: bool = False) -> dict[str, list]:
    """Every tensor's shape with the inputs at the call's shapes, on the graph's skeleton: ONNX's own
    inference with data propagation where it settles every node's output (in C++, 10-50x faster),
    else onnxruntime's symbolic shape inference (it follows the shape computations of exports where
    ONNX's stops: a recogniser's reshapes to computed shapes); dims neither can tell are None."""
    from onnx_attr.importing.normalize import _dims_only
    from onnx_attr.importing.read import skeleton

    if any(a.type == onnx.AttributeProto.GRAPH or a.graphs for n in proto.graph.node for a in n.attribute):
        raise _Unknown  # control flow: the specialisation decides what runs
    light, copied = skeleton(proto, _dims_only)
    if not copied:
        light = onnx.ModelProto()
        light.CopyFrom(proto)
    del light.graph.value_info[:]
    for value, t in zip(light.graph.input, tensors):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in t.shape:
            dims.add().dim_value = int(d)
    _stand_in_for_fused(light)
    found = _Inferred.of(_onnx_shapes(light, trusted))
    if found is not None and not found.complete:
        found = _upgraded_shapes(light, found, trusted) or found
    if (found is None or not found.complete) and not trusted:
        raise _Unknown  # onnxruntime's inference runs ONNX's in this process: on shapes known to run only
    inferred = None if found is None else found.proto
    if found is None or not found.complete:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # 3.5 ms to import: only here

        log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
        level = log.level
        log.setLevel(logging.ERROR)  # its warnings ("unsupported broadcast between Reshape_59_o0__d0 ...") are
        try:  # about its own symbols, on the user's stderr. Its `infer_shapes` saves the graph into the working
            # directory when it cannot finish: its loop, without that; what it did infer is kept
            inference = SymbolicShapeInference(2**31 - 1, False, False, 0)
            inference._preprocess(light)
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
            inferred = inference.out_mp_
        except Exception:  # it asserts on some graphs (a 1-D Concat on axis -1): ONNX's, as far as it goes
            pass
        finally:
            log.setLevel(level)
    if inferred is None:
        raise _Unknown
    shapes = {}
    # what the import's own inference knew (symbolic dims as None) where this one lost the trail
    for v in (*proto.graph.value_info, *inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    shapes.update({t.name: list(t.dims) for t in proto.graph.initializer})
    return shapes
