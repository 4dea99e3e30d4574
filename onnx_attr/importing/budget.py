"""Resource budgets: what an untrusted model may make onnx-attr allocate or repeat.

An ONNX file of a few hundred bytes can ask for any amount of memory or time through values
computed at run time (Expand to a shape read from the data, a Loop with trip count 2^62).
One `Budget` bounds every such request, checked *before* the allocation or the repetition,
so exceeding it is a clear `BudgetError` naming the node, the limit and how to raise it,
reached in bounded time and memory.

Defaults fit real models with room to spare; raise one with
``onnx_attr.load(path, budget=onnx_attr.Budget(max_elements=2**30))``, by assigning
``model.budget.max_elements = ...`` after loading, or on the command line with
``--budget max_elements=1073741824``.
"""

from __future__ import annotations

import functools
import itertools
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from onnx_attr.errors import BudgetError, ModelLoadError

GiB = 2**30


@dataclass
class Budget:
    """Limits on what a model may make us allocate or repeat (see the module docstring)."""

    #: Elements of any one tensor whose size is computed from data at run time (Expand, Tile,
    #: ConstantOfShape, Range, Pad, Resize, Upsample, ConvTranspose, DFT, OneHot, MaxUnpool,
    #: AffineGrid, CenterCropPad, Col2Im, STFT, ImageDecoder, Einsum, the window generators,
    #: MelWeightMatrix, RoiAlign, Loop and Scan outputs), the padded input of a convolution or pool whose
    #: pads or window reach past `WIDE_WINDOW` (attributes, so a small file can ask for any size), and the
    #: output of a node that may outgrow its inputs (a broadcast, MatMul, Gemm, Gather, a convolution
    #: that widens the channels: `may_grow`).
    #: 2^28 is 1 GiB of float32.
    max_elements: int = 2**28
    #: Iterations of one Loop run, and of a whole nest of loops together (inner trips count, a
    #: Scan's too; a top-level Scan is as long as its input, so its own trips are not counted);
    #: an iteration costs ~0.1-0.3 ms of Python, so this bounds a runaway loop to seconds.
    max_loop_iterations: int = 10_000
    #: How deeply If/Loop/Scan bodies may nest.
    max_subgraph_depth: int = 32
    #: Nodes in the model, bodies of If/Loop/Scan included.
    max_nodes: int = 1_000_000
    #: Bytes of weights read from external data files, all files together.
    max_external_bytes: int = 256 * GiB
    #: Elements of a tensor computed while folding constants at load; a larger one is left to run
    #: time (where `max_elements` applies) rather than materialized in the file.
    max_folded_elements: int = 2**24

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BudgetError(f"budget {f.name} must be a non-negative integer, got {value!r}")

    def __deepcopy__(self, memo: dict) -> "Budget":
        """Shared, not copied: a rewritten copy of the module keeps following `model.budget`."""
        return self

    @classmethod
    def parse(cls, items: Sequence[str]) -> "Budget":
        """A budget from 'name=value' strings (the CLI's --budget), the rest at their defaults."""
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for item in items:
            name, sep, text = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in known:
                raise BudgetError(f"--budget {item!r}: expected NAME=INTEGER with NAME one of {', '.join(sorted(known))}")
            try:
                values[name] = int(text.replace("_", ""), 0)
            except ValueError as err:
                raise BudgetError(f"--budget {item!r}: {text!r} is not an integer") from err
        return cls(**values)

    def exceeded(self, name: str, asked: int, where: str) -> BudgetError:
        """The error for `asked` over the limit `name`, saying where and how to raise it."""
        limit = getattr(self, name)
        return BudgetError(
            f"{where} needs {asked:,} against the budget {name}={limit:,}; the model (or its inputs) asks for more "
            f"than onnx-attr allows by default. If that is intended, raise it: "
            f"onnx_attr.load(..., budget=onnx_attr.Budget({name}=...)) or --budget {name}=N")

    def check(self, name: str, asked: int, where: str) -> None:
        if asked > getattr(self, name):
            raise self.exceeded(name, asked, where)


_ACTIVE: ContextVar[Optional[Budget]] = ContextVar("_ACTIVE", default=None)


def current_budget() -> Budget:
    """The budget of the load in progress (the defaults outside one)."""
    active = _ACTIVE.get()
    return active if active is not None else Budget()


@contextmanager
def using(budget: Budget) -> Iterator[Budget]:
    """Make `budget` the one `current_budget` returns while the block runs."""
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)


def elements(shape: Sequence[int]) -> int:
    """Exact element count of a shape (Python ints: no overflow), 0 when a dim is 0 or negative."""
    count = 1
    for d in shape:
        count *= max(int(d), 0)
    return count


# -- run-time size of data-sized ops, computed from their inputs before they run --------------

Get = Callable[[int], Optional[torch.Tensor]]


def _values(t: Optional[torch.Tensor]) -> Optional[list]:
    if t is None or t.device.type == "meta" or t.numel() > 4096:
        return None
    return t.reshape(-1).tolist()


def _broadcast(a: Sequence[int], b: Sequence[int]) -> list[int]:
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + list(a), [1] * (n - len(b)) + list(b)
    return [y if x == 1 else x if y == 1 else max(x, y) for x, y in zip(a, b)]


def _expand(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, shape = get(0), _values(get(1))
    return None if x is None or shape is None else elements(_broadcast(x.shape, [int(s) for s in shape]))


def _tile(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, reps = get(0), _values(get(1))
    if x is None or reps is None:
        return None
    return elements(x.shape) * elements(int(r) for r in reps)


def _constant_of_shape(get: Get, attrs: dict, opset: int) -> Optional[int]:
    shape = _values(get(0))
    return None if shape is None else elements(int(s) for s in shape)


def _range(get: Get, attrs: dict, opset: int) -> Optional[int]:
    vals = [_values(get(i)) for i in range(3)]
    if any(not v for v in vals):
        return None
    start, limit, delta = (float(v[0]) for v in vals)
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        return None if delta == 0 else 2**63  # infinite bounds: refuse; zero step: the op's own error
    return max(math.ceil((limit - start) / delta), 0)


def _pad(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x = get(0)
    if x is None:
        return None
    pads = attrs.get("pads", attrs.get("paddings")) if opset < 11 else _values(get(1))
    if pads is None:
        return None
    rank = x.dim()
    axes = _values(get(3)) if opset >= 18 else None
    axes = [int(a) % max(rank, 1) for a in axes] if axes else list(range(rank))
    if len(pads) != 2 * len(axes):
        return None
    shape = list(x.shape)
    for i, a in enumerate(axes):
        shape[a] += int(pads[i]) + int(pads[i + len(axes)])
    return elements(shape)


def _resize(get: Get, attrs: dict, opset: int, scales_at: int, sizes_at: Optional[int]) -> Optional[int]:
    x = get(0)
    if x is None:
        return None
    rank = x.dim()
    scales = _values(get(scales_at)) if scales_at >= 0 else attrs.get("scales")
    sizes = _values(get(sizes_at)) if sizes_at is not None else None
    axes = [int(a) % max(rank, 1) for a in attrs.get("axes", range(rank))]
    out = list(x.shape)
    if sizes:
        if len(sizes) != len(axes):
            return None
        if attrs.get("keep_aspect_ratio_policy", b"stretch") in (b"not_smaller", "not_smaller"):
            scale = max(int(s) / max(x.shape[a], 1) for a, s in zip(axes, sizes))
            sizes = [math.ceil(x.shape[a] * scale) + 1 for a in axes]
        for a, s in zip(axes, sizes):
            out[a] = int(s)
    elif scales:
        if len(scales) != len(axes) or not all(math.isfinite(float(s)) for s in scales):
            return None if len(scales) != len(axes) else 2**63
        for a, s in zip(axes, scales):
            out[a] = math.floor(x.shape[a] * float(s))
    else:
        return None
    # the interpolation matrix of each axis holds out x in entries
    return max(elements(out), *(out[a] * x.shape[a] for a in axes)) if axes else elements(out)


def _conv_transpose(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, w = get(0), get(1)
    if x is None or w is None or x.dim() < 3 or w.dim() != x.dim():
        return None
    spatial = x.dim() - 2
    channels = w.shape[1] * int(attrs.get("group", 1))
    if attrs.get("output_shape"):
        dims = list(attrs["output_shape"])[-spatial:]
    else:
        strides = list(attrs.get("strides", [1] * spatial))
        dilations = list(attrs.get("dilations", [1] * spatial))
        extra = list(attrs.get("output_padding", [0] * spatial))
        if not len(strides) == len(dilations) == len(extra) == spatial:
            return None
        dims = [s * (n - 1) + e + (k - 1) * d + 1 for n, k, s, d, e in
                zip(x.shape[2:], w.shape[2:], strides, dilations, extra)]
    return elements([x.shape[0], channels, *dims])


def _dft(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x = get(0)
    if x is None or x.dim() < 2:
        return None
    length = _values(get(1))
    if opset >= 20:
        axis_value = _values(get(2))
        axis = int(axis_value[0]) if axis_value else -2
    else:
        axis = int(attrs.get("axis", 1))
    if not -x.dim() <= axis < x.dim():
        return None
    n = int(length[0]) if length else x.shape[axis]
    per = elements(x.shape) // max(x.shape[axis], 1) // max(x.shape[-1], 1)
    return per * max(n, 1) * 2


def _one_hot(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, depth = get(0), _values(get(1))
    return None if x is None or not depth else elements(x.shape) * max(int(float(depth[0])), 0)


def _max_unpool(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, shape = get(0), _values(get(2))
    if shape:
        return elements(int(d) for d in shape)
    kernel = list(attrs.get("kernel_shape", []))
    if x is None or not kernel or x.dim() != len(kernel) + 2:
        return None
    rank = len(kernel)
    strides, pads = list(attrs.get("strides", [1] * rank)), list(attrs.get("pads", [0] * 2 * rank))
    return elements([*x.shape[:2], *((n - 1) * s + k - b - e for n, s, k, b, e in
                                     zip(x.shape[2:], strides, kernel, pads[:rank], pads[rank:]))])


def _affine_grid(get: Get, attrs: dict, opset: int) -> Optional[int]:
    size = _values(get(1))
    if not size or len(size) < 3:
        return None
    spatial = [int(d) for d in size[2:]]
    return elements([int(size[0]), *spatial]) * len(spatial)


def _center_crop_pad(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, shape = get(0), _values(get(1))
    if x is None or shape is None or x.dim() == 0:
        return None
    out = list(x.shape)
    axes = [int(a) % x.dim() for a in attrs.get("axes", range(x.dim()))]
    for a, size in zip(axes, shape):
        out[a] = int(size)
    return elements(out)


def _col2im(get: Get, attrs: dict, opset: int) -> Optional[int]:
    cols, image, block = get(0), _values(get(1)), _values(get(2))
    if cols is None or cols.dim() != 3 or not image or not block:
        return None
    size = elements(int(b) for b in block)
    channels = cols.shape[1] // max(size, 1)
    pads = list(attrs.get("pads", [0] * 2 * len(image)))
    padded = [int(n) + int(b) + int(e) for n, b, e in zip(image, pads[:len(image)], pads[len(image):])]
    # the one-hot kernel holds size x size entries per channel; the output, the padded image
    return max(max(channels, 1) * size * size, cols.shape[0] * channels * elements(padded))


def _stft(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, step, window, frame = get(0), _values(get(1)), get(2), _values(get(3))
    if x is None or x.dim() != 3 or not step or int(step[0]) <= 0:
        return None
    length = int(frame[0]) if frame else (window.shape[0] if window is not None and window.dim() else x.shape[-2])
    if not 0 < length <= x.shape[-2]:
        return None  # the op's own error
    frames = (x.shape[-2] - length) // int(step[0]) + 1
    return x.shape[0] * frames * length * 2  # every frame is transformed in full, then cut to one side


def _image_decoder(get: Get, attrs: dict, opset: int) -> Optional[int]:
    """The decoded size from the image's header, read without decoding (Pillow opens lazily)."""
    import io

    from PIL import Image

    encoded = get(0)
    if encoded is None or encoded.device.type == "meta":
        return None
    try:
        with Image.open(io.BytesIO(encoded.detach().cpu().numpy().tobytes())) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the op's own error says so
        return None
    return width * height * (1 if attrs.get("pixel_format") in ("Grayscale", b"Grayscale") else 3)


def _einsum(get: Get, attrs: dict, opset: int) -> Optional[int]:
    """The output's size from the equation and the operands' shapes: an outer product of small
    operands ('i,j,k->ijk') is huge while every input is tiny."""
    equation = attrs.get("equation", "")
    equation = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    left, arrow, right = equation.partition("->")
    terms = left.split(",")
    sizes: dict[str, int] = {}
    ellipsis: list[int] = []
    for i, term in enumerate(terms):
        x = get(i)
        if x is None:
            return None
        letters = term.replace("...", "")
        extra = x.dim() - len(letters)
        if extra < 0 or (extra and "..." not in term):
            return None  # the op's own error
        head = term.index("...") if "..." in term else len(term)
        dims = [*x.shape[:head], *x.shape[head + extra:]] if extra else list(x.shape)
        ellipsis = _broadcast(ellipsis, list(x.shape[head:head + extra])) if extra else ellipsis
        for letter, d in zip(letters, dims):
            sizes[letter] = max(sizes.get(letter, 1), int(d)) if d != 1 or letter not in sizes else sizes[letter]
    if not arrow:  # implicit output: the letters used once, in alphabetical order
        right = "".join(sorted(c for c in sizes if left.count(c) == 1))
    return elements([*ellipsis, *(sizes.get(c, 1) for c in right.replace("...", ""))])


def _scalar_input(get: Get, index: int) -> Optional[int]:
    values = _values(get(index))
    return int(values[0]) if values and len(values) == 1 else None


def _mel_weight_matrix(get: Get, attrs: dict, opset: int) -> Optional[int]:
    mels, length = _scalar_input(get, 0), _scalar_input(get, 1)
    return None if mels is None or length is None else max(length // 2 + 1, 0) * max(mels, 0)


def _windowed(op: str, get: Get, attrs: dict, opset: int) -> Optional[int]:
    """A convolution's or pool's padded input, or its output where larger: its pads and the reach of its
    window (an input shorter than one window is padded out to it) are attributes of any size."""
    from onnx_attr.importing.converters.pooling import window_padding

    x, w = get(0), get(3 if op == "QLinearConv" else 1)
    kernel = attrs.get("kernel_shape") or (list(w.shape[2:]) if w is not None and w.dim() > 2 else None)
    if x is None or not kernel or x.dim() != len(kernel) + 2:
        return None
    plan = window_padding({**attrs, "kernel_shape": list(kernel)}, tuple(x.shape[2:]), pool="Pool" in op)
    rank = len(kernel)
    padded = [n + plan.pads[2 * (rank - 1 - i)] + plan.pads[2 * (rank - 1 - i) + 1] for i, n in enumerate(x.shape[2:])]
    channels = max(x.shape[1], w.shape[0] if w is not None and w.dim() > 2 else 0)
    return max(elements([*x.shape[:2], *padded]), elements([x.shape[0], channels, *plan.sizes]))


def _given(get: Get) -> Iterator[torch.Tensor]:
    """A variadic node's inputs (Sum, Concat), up to the first one not given."""
    for i in itertools.count():
        x = get(i)
        if x is None:
            return
        yield x


def _broadcasting(get: Get, attrs: dict, opset: int) -> Optional[int]:
    """The broadcast of every input: an outer sum of two small vectors ([n, 1] + [1, n]) is n²."""
    return elements(functools.reduce(lambda shape, x: _broadcast(shape, list(x.shape)), _given(get), []))


def _matmul(get: Get, attrs: dict, opset: int) -> Optional[int]:
    """[..., M, K] @ [..., K, N]: M x N per batch, an outer product where K is 1."""
    a, b = get(0), get(1)
    if a is None or b is None or not a.dim() or not b.dim():
        return None
    a_shape, b_shape = list(a.shape) if a.dim() > 1 else [1, *a.shape], list(b.shape) if b.dim() > 1 else [*b.shape, 1]
    return elements([*_broadcast(a_shape[:-2], b_shape[:-2]), a_shape[-2], b_shape[-1]])


def _gemm(get: Get, attrs: dict, opset: int) -> Optional[int]:
    a, b = get(0), get(1)
    if a is None or b is None or a.dim() != 2 or b.dim() != 2:
        return None
    return a.shape[1 if attrs.get("transA") else 0] * b.shape[0 if attrs.get("transB") else 1]


def _gather(get: Get, attrs: dict, opset: int) -> Optional[int]:
    """Every index takes a whole slice of the data: [n] ids into a table of wide rows."""
    data, ids = get(0), get(1)
    axis = int(attrs.get("axis", 0))
    if data is None or ids is None or not -data.dim() <= axis < data.dim():
        return None
    return elements(ids.shape) * elements(d for i, d in enumerate(data.shape) if i != axis % data.dim())


def _concat(get: Get, attrs: dict, opset: int) -> Optional[int]:
    """The inputs together: one tensor listed n times is n copies of it."""
    return sum(elements(x.shape) for x in _given(get))


def _roi_align(get: Get, attrs: dict, opset: int) -> Optional[int]:
    x, rois = get(0), get(1)
    if x is None or rois is None or x.dim() < 2:
        return None
    return elements([rois.shape[0], x.shape[1], attrs.get("output_height", 1), attrs.get("output_width", 1)])


WINDOWED = frozenset({"Conv", "ConvInteger", "QLinearConv", "AveragePool", "MaxPool", "LpPool", "DeformConv"})
#: Window ops (`_windowed`) are guarded where an attribute reaches this far: a pad, a kernel or a
#: dilated extent of real models is a few dozen elements (else, see `may_grow`).
WIDE_WINDOW = 1024
#: Elementwise ops whose inputs broadcast against each other (multidirectional broadcasting).
BROADCASTING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "And", "Or", "Xor", "Equal", "Greater", "GreaterOrEqual",
    "Less", "LessOrEqual", "Where", "Max", "Min", "Sum", "Mean", "BitwiseAnd", "BitwiseOr", "BitwiseXor"})

#: op type -> (ONNX inputs by position -> elements of the largest tensor it will create)
ESTIMATORS: dict[str, Callable[[Get, dict, int], Optional[int]]] = {
    "Expand": _expand,
    "Tile": _tile,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Pad": _pad,
    "Resize": lambda g, a, o: _resize(g, a, o, 1 if o < 11 else 2, None if o < 11 else 3),
    "Upsample": lambda g, a, o: _resize(g, a, o, -1 if o < 9 else 1, None),
    "ConvTranspose": _conv_transpose,
    "DFT": _dft,
    "OneHot": _one_hot,
    "MaxUnpool": _max_unpool,
    "AffineGrid": _affine_grid,
    "CenterCropPad": _center_crop_pad,
    "Col2Im": _col2im,
    "STFT": _stft,
    "ImageDecoder": _image_decoder,
    "Einsum": _einsum,
    **{op: (lambda g, a, o: _scalar_input(g, 0)) for op in ("HannWindow", "HammingWindow", "BlackmanWindow")},
    "MelWeightMatrix": _mel_weight_matrix,
    "RoiAlign": _roi_align,
    **{op: functools.partial(_windowed, op) for op in WINDOWED},
    **{op: _broadcasting for op in BROADCASTING},
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "Gemm": _gemm,
    "Gather": _gather,
    "Concat": _concat,
}
#: Ops guarded only where their shapes, as shape inference found them, do not rule out that the
#: output outgrows the inputs (`may_grow`): every model has hundreds of them, and a hook costs.
SHAPED = WINDOWED | BROADCASTING | {"MatMul", "MatMulInteger", "Gemm", "Concat"}


def _slice_axes(get: Get, attrs: dict, opset: int) -> Optional[list]:
    return attrs.get("axes") if opset < 10 else _values(get(3))


def _gather_axes(get: Get, attrs: dict, opset: int) -> Optional[list]:
    return [attrs.get("axis", 0)]


#: op type -> the axes a node addresses, for ops whose converter does Python work for every axis
#: up to the value (onnx2torch's Slice lists `range(max(axes) + 1)`: axes=[2^62] never ends; its
#: Gather builds a list of `axis` slices) or takes axes given as inputs modulo the rank (Pad-18,
#: DFT-20, the reductions' `axes` input, CenterCropPad's axes on an input of unknown rank: a
#: result where onnxruntime refuses the file). An axis outside the input's rank is
#: refused first; axes given as attributes are checked at load where the rank is known
#: (`convert._check_axis_attributes`).
AXES: dict[str, Callable[[Get, dict, int], Optional[list]]] = {
    "Slice": _slice_axes,
    "Gather": _gather_axes,
    "Pad": lambda get, attrs, opset: _values(get(3)) if opset >= 18 else None,
    "DFT": lambda get, attrs, opset: _values(get(2)) if opset >= 20 else None,
    "ReduceSum": lambda get, attrs, opset: _values(get(1)) if opset >= 13 else None,
    **{op: (lambda get, attrs, opset: _values(get(1)) if opset >= 18 else None) for op in (
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceSumSquare")},
    "CenterCropPad": lambda get, attrs, opset: attrs.get("axes"),  # checked at load where the rank is known
    "Squeeze": lambda get, attrs, opset: _values(get(1)) if opset >= 13 else attrs.get("axes"),
}

#: the ops `NodeGuard` is installed on (those in `SHAPED` only where `guarded` finds they may grow)
GUARDED = (frozenset(ESTIMATORS) - SHAPED) | frozenset(AXES)

#: A tensor's static shape as shape inference left it: a size, a symbol (str) or unknown (None) per
#: axis; None for an unknown rank.
Shape = Optional[Sequence[Union[int, str, None]]]


def guarded(op_type: str, attrs: dict, inputs: Sequence[Shape] = (), output: Shape = None,
            budget: Optional[Budget] = None, names: Sequence[str] = ()) -> bool:
    """Whether a node of this op, these attributes and these static shapes (of the inputs `names`)
    gets a `NodeGuard`."""
    if op_type == "Concat":  # no larger than the inputs held already, unless one is listed twice
        fixed = _static(output)
        return len(set(names)) < len(names) and (fixed is None or elements(fixed) > (budget or current_budget()).max_elements)
    if op_type in SHAPED:
        return may_grow(op_type, attrs, inputs, output, budget or current_budget())
    return op_type in GUARDED


def may_grow(op_type: str, attrs: dict, inputs: Sequence[Shape], output: Shape, budget: Budget) -> bool:
    """Whether the static shapes leave open an output larger than both the budget and the node's
    largest input. An output whose size shape inference fixed within the budget is safe; so is one
    no larger than an input (a bias broadcast over a feature map, a layer that narrows, a window
    padded by less than its extent). Anything else (an outer product, a layer that widens, a
    window wider than `WIDE_WINDOW`) is checked on its actual inputs before each call."""
    if op_type in WINDOWED and _wide(attrs):
        return True
    fixed = _static(output)
    if fixed is not None and elements(fixed) <= budget.max_elements:
        return False
    if op_type in BROADCASTING:
        return not any(_dominates(big, [s for j, s in enumerate(inputs) if j != i]) for i, big in enumerate(inputs))
    x, w = (inputs[0] if inputs else None), (inputs[1] if len(inputs) > 1 else None)
    if op_type in ("MatMul", "MatMulInteger", "Gemm"):
        return not _product_narrows(op_type, attrs, x, w)
    if op_type == "QLinearConv":
        w = inputs[3] if len(inputs) > 3 else None
    return not _window_narrows(op_type, attrs, x, w)


def _wide(attrs: dict) -> bool:
    """A window whose extent or padding, over all its axes together, reaches past `WIDE_WINDOW`
    elements (a pool pads an input shorter than its window out to it)."""
    kernel = attrs.get("kernel_shape") or []
    dilations = attrs.get("dilations") or [1] * len(kernel)
    pads = [int(p) for p in attrs.get("pads", [])]
    rank = max(len(kernel), len(dilations), len(pads) // 2)
    kernel, dilations = [*kernel, *[1] * (rank - len(kernel))], [*dilations, *[1] * (rank - len(dilations))]
    pads = [*pads, *[0] * (2 * rank - len(pads))]
    reach = 1
    for i, (k, d) in enumerate(zip(kernel, dilations)):
        reach *= max((int(k) - 1) * int(d) + 1, pads[i] + pads[i + rank] + 1, 2 * int(d))
    return reach > WIDE_WINDOW


def _static(shape: Shape) -> Optional[list[int]]:
    return None if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape) else list(shape)


def _dominates(big: Shape, shapes: Sequence[Shape]) -> bool:
    """Whether `big` is its broadcast with `shapes`: each of them is 1 or the same size (the same
    number, or the same symbol) on each of its axes."""
    if big is None or any(s is None or len(s) > len(big) for s in shapes):
        return False
    return all(d == 1 or (d is not None and d == big[len(big) - len(s) + i]) for s in shapes for i, d in enumerate(s))


def _product_narrows(op_type: str, attrs: dict, a: Shape, b: Shape) -> bool:
    """A product no larger than one factor: [.., M, K] @ [K, N] with N <= K, or M <= K."""
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return False
    m, k = (a[-1], a[-2]) if attrs.get("transA") else (a[-2], a[-1])
    n = b[-2] if attrs.get("transB") else b[-1]
    if not isinstance(k, int):
        return False
    batch_a, batch_b = list(a[:-2]), list(b[:-2])
    return (isinstance(n, int) and n <= k and _dominates(batch_a, [batch_b])) or \
        (isinstance(m, int) and m <= k and _dominates(batch_b, [batch_a]))


def _window_narrows(op_type: str, attrs: dict, x: Shape, w: Shape) -> bool:
    """A convolution or pool no larger than its input: no more output channels than input channels,
    and on each axis pads that add up to less than the window's extent (so no longer output)."""
    pool = "Pool" in op_type
    if not pool:
        if x is None or w is None or len(x) < 2 or not w or not isinstance(w[0], int) or not isinstance(x[1], int):
            return False
        if w[0] > x[1]:
            return False
    if attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER", b"SAME_UPPER", b"SAME_LOWER", "VALID", b"VALID"):
        return True  # SAME pads the extent less one: the output is the input's size over the stride
    kernel = attrs.get("kernel_shape") or (list(w[2:]) if w is not None and not pool else None)
    if not kernel or not all(isinstance(k, int) for k in kernel):
        return False
    dilations = attrs.get("dilations") or [1] * len(kernel)
    pads = attrs.get("pads") or [0] * (2 * len(kernel))
    return all(int(pads[i]) + int(pads[i + len(kernel)]) < (k - 1) * d + 1
               for i, (k, d) in enumerate(zip(kernel, dilations)))


class NodeGuard:
    """A forward pre-hook that refuses a node's call before it runs when its inputs ask for too
    much: an output over the `max_elements` budget (ops in `ESTIMATORS`), or an axis outside the
    input's rank (ops in `AXES`, whose converters would loop up to it).

    Installed by `convert` on every node of a `GUARDED` op. It sees the call's arguments as fx
    passes them and maps them back to ONNX input positions; constant inputs that the converter
    baked into the module are kept here (small ones by value, large ones by shape only).
    `where` names the node, its op and the file's opset, for the messages.
    """

    def __init__(self, budget: Budget, where: str, op_type: str, attrs: dict, opset: int,
                 onnx_inputs: Sequence[str], positional: Sequence[str], keywords: dict[str, str],
                 constants: dict[str, torch.Tensor]):
        self.budget, self.where, self.op_type, self.attrs, self.opset = budget, where, op_type, attrs, opset
        self.onnx_inputs, self.positional, self.keywords = list(onnx_inputs), list(positional), dict(keywords)
        self.constants = constants

    def __call__(self, module, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return  # traced, its size checks would be guards that fix every symbolic dim to the example's
        given = dict(self.constants)
        given.update((n, a) for n, a in zip(self.positional, args) if isinstance(a, torch.Tensor))
        given.update((self.keywords[k], v) for k, v in kwargs.items()
                     if k in self.keywords and isinstance(v, torch.Tensor))

        def get(i: int) -> Optional[torch.Tensor]:
            return given.get(self.onnx_inputs[i]) if i < len(self.onnx_inputs) and self.onnx_inputs[i] else None

        if self.op_type in AXES:
            self._check_axes(get)
        if self.op_type not in ESTIMATORS:
            return
        try:
            asked = ESTIMATORS[self.op_type](get, self.attrs, self.opset)
        except (ValueError, TypeError, IndexError, OverflowError, RuntimeError):
            asked = None  # inputs the op itself will refuse: its own error says more
        if asked is not None and asked > self.budget.max_elements:
            raise self.budget.exceeded("max_elements", asked, f"{self.where} creating a tensor of that many elements")

    def _check_axes(self, get: Get) -> None:
        x = get(0)
        try:
            axes = AXES[self.op_type](get, self.attrs, self.opset)
        except (ValueError, TypeError, IndexError, OverflowError, RuntimeError):
            axes = None
        if x is None or not axes:
            return
        rank = x.dim()
        wrong = [int(a) for a in axes if not -rank <= int(a) < rank]
        if wrong:
            raise ModelLoadError(
                f"{self.where} addresses axis {wrong[0]:,}, but its input has {rank} axes (ONNX requires "
                f"-{rank} <= axis < {rank}); the file is corrupted or not meant for this input")
        wide = [int(a) % rank for a in axes if self.op_type == "Squeeze" and x.shape[int(a)] != 1]
        if wide:  # torch's squeeze leaves such an axis as it is; onnxruntime refuses it
            from onnx_attr.errors import InputError

            raise InputError(f"{self.where} removes axis {wide[0]}, which has size {x.shape[wide[0]]} here, not 1 "
                             f"(its input is {list(x.shape)}): the input does not fit the model, e.g. a batch of "
                             "several where the export fixed one; feed one example at a time")


def guard_constants(names: Sequence[str], initializers: dict) -> dict[str, torch.Tensor]:
    """The inputs a converter may have baked in: small ones by value, large ones as shapes."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        init = initializers.get(name)
        if init is None:
            continue
        proto = init.proto if hasattr(init, "proto") else init
        dims = list(proto.dims)
        if elements(dims) <= 4096:
            out[name] = init.to_torch()
        else:
            out[name] = torch.empty(dims, device="meta")
    return out


# -- loops ----------------------------------------------------------------------------------

_LOOP_SPENT: ContextVar[Optional[list[int]]] = ContextVar("_LOOP_SPENT", default=None)


def in_loop() -> bool:
    """True inside the body of a Loop or Scan (whose trips count against `max_loop_iterations`)."""
    return _LOOP_SPENT.get() is not None


@contextmanager
def loop_nest() -> Iterator[list[int]]:
    """The iteration counter shared by a loop and every loop run inside it (one per outermost loop)."""
    spent = _LOOP_SPENT.get()
    if spent is not None:
        yield spent
        return
    spent = [0]
    token = _LOOP_SPENT.set(spent)
    try:
        yield spent
    finally:
        _LOOP_SPENT.reset(token)
