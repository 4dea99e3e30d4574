"""ONNX's first opsets (1-6) rewritten as opset 7, and its experimental ops written out as standard ones.

The old Caffe2 model zoo and early exporters wrote opsets 1-6: binary ops that broadcast only when
told (`broadcast=1`), aligning the second input at an `axis` of the first; `consumed_inputs` and
`is_test` attributes; Reshape's shape, Cast's type and Upsample's scales as attributes of other
names. onnxruntime runs none of it (it starts at opset 7), and onnx.version_converter, which the
loader uses for later upgrades, gets it wrong: its 6 -> 7 broadcast adapter needs every input's
shape (old files rarely carry them, so the upgrade fails) and, given an axis, appends one axis too
many (a bias [C] added at axis 1 of a [N, C, H, W] map became [C, 1, 1, 1], which broadcasts to a
wrong [C, C, H, W] without an error). So `modernize_legacy` rewrites every form whose meaning changed
before opset 7 into its opset-7 form and sets the opset to 7; onnxruntime runs the result, which is
what `verify` then checks against (and the tests check this pass against hand-written opset-7
graphs). A form with no rule here is refused by name, never passed on with a meaning it lost.

Opsets 1-9 also had experimental ops, never standard, which onnx no longer knows but onnxruntime
still runs: ImageScaler (the tiny-YOLOv2 zoo models), Affine, Scale, ScaledTanh,
ParametricSoftplus, Crop, ThresholdedRelu before it became standard at opset 10,
MeanVarianceNormalization before opset 9, ConstantFill and DynamicSlice.
`write_out_experimental` writes each as the standard ops it computes (in the converted model
only: `verify` runs onnxruntime on the graph as written), so every method and DeepLift rule
applies to them unchanged.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_attr.errors import UnsupportedOpError
from onnx_attr.importing.read import _graphs, skeleton

#: the opset the legacy forms are rewritten to: the first onnxruntime runs
MODERN = 7
#: binary ops whose inputs broadcast only with `broadcast=1` (at `axis` of the first) before opset 7
_LEGACY_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Greater", "Less"})
#: attributes opset 7 dropped without a change of meaning at inference
_DROPPED = {"consumed_inputs": None, "is_test": None, "output_sequence": {"LSTM", "GRU", "RNN"}}
#: the experimental ops (onnx opsets 1-9, onnxruntime's kernels) with the opset that made each standard
#: (None: never); the ONNX checker knows none of them, so `read` checks them as custom ops
EXPERIMENTAL_OPS = {"ImageScaler": None, "Affine": None, "Scale": None, "ScaledTanh": None,
                    "ParametricSoftplus": None, "Crop": None, "ConstantFill": None, "ThresholdedRelu": 10,
                    "MeanVarianceNormalization": 9, "DynamicSlice": None}
#: the experimental ops onnxruntime has no kernel for: written out in the graph `verify` runs too
WITHOUT_KERNEL = frozenset({"ConstantFill"})


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def modernize_legacy(model: onnx.ModelProto, notes: list[str], *, in_place: bool = False) -> onnx.ModelProto:
    """A copy of `model` (`model` itself with `in_place`) at opset 7 with its legacy forms rewritten, or
    `model` untouched when its opset is 7 or later. Raises UnsupportedOpError naming every node whose
    legacy form has no rule here."""
    source = default_opset(model)
    if not 0 < source < MODERN:
        return model
    out = model if in_place else onnx.ModelProto()
    if not in_place:
        out.CopyFrom(model)
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = MODERN
    ranks = _ranks(out)
    refused: list[tuple[str, str, int, str, str]] = []

    def rewrite(node: onnx.NodeProto, index: int, scope: _Scope) -> list[onnx.NodeProto]:
        try:
            return _modern(node, scope, ranks) if node.domain in ("", "ai.onnx") else [node]
        except _NoRule as why:
            refused.append((node.op_type, node.domain, source, node.name or f"{node.op_type}#{index}", str(why)))
            return [node]

    _rewrite_graphs(out.graph, rewrite)
    if refused:
        raise UnsupportedOpError(refused, hint=f"These opset-{source} forms have no opset-{MODERN} rewrite here; "
                                 "re-export the model at opset 7 or later.")
    out.ir_version = max(out.ir_version, 4)
    notes.append(f"rewrote ai.onnx opset {source}'s legacy forms as opset {MODERN} (onnxruntime runs opset 7 and "
                 "later only, so verify checks the rewritten graph)")
    return out


class _NoRule(Exception):
    """A legacy form this pass cannot rewrite faithfully (the reason is the message)."""


def _modern(node: onnx.NodeProto, scope: "_Scope", ranks: dict[str, int]) -> list[onnx.NodeProto]:
    """The opset-7 node(s) computing what `node` computed under its legacy opset."""
    attrs = {a.name: a for a in node.attribute}
    keep = [a for name, a in attrs.items()
            if not (name in _DROPPED and (_DROPPED[name] is None or node.op_type in _DROPPED[name]))]
    op, before = node.op_type, []
    if op in _LEGACY_BROADCAST or op == "Gemm":
        keep = [a for a in keep if a.name not in ("broadcast", "axis")]
        if op != "Gemm" and _int(attrs, "broadcast", 0) and "axis" in attrs and len(node.input) == 2:
            before, second = _aligned(node, attrs["axis"].i, ranks, scope)
            node = _rewired(node, [node.input[0], second])
    elif op == "PRelu":
        before, slope = _per_channel_slope(node, ranks, scope)
        node = _rewired(node, [node.input[0], slope])
    elif op == "Reshape" and "shape" in attrs:
        shape = scope.constant(f"{_label(node)}_shape", np.array(attrs["shape"].ints, np.int64))
        keep = [a for a in keep if a.name != "shape"]
        node = _rewired(node, [node.input[0], shape])
    elif op == "Concat" and "axis" not in attrs:
        keep.append(helper.make_attribute("axis", 1))  # Concat-1's default
    elif op == "Cast" and attrs.get("to") is not None and attrs["to"].type == onnx.AttributeProto.STRING:
        name = attrs["to"].s.decode().upper()
        if name not in onnx.TensorProto.DataType.keys():
            raise _NoRule(f"Cast to {name!r}, a type ONNX does not name")
        keep = [a for a in keep if a.name != "to"] + [helper.make_attribute("to", onnx.TensorProto.DataType.Value(name))]
    elif op == "Pad" and "paddings" in attrs:
        keep = [a for a in keep if a.name != "paddings"] + [helper.make_attribute("pads", list(attrs["paddings"].ints))]
    elif op in ("LpPool", "GlobalLpPool") and "p" in attrs and attrs["p"].type == onnx.AttributeProto.FLOAT:
        p = attrs["p"].f
        if p != int(p):
            raise _NoRule(f"p = {p}, a power opset 2 and later cannot hold (an integer)")
        keep = [a for a in keep if a.name != "p"] + [helper.make_attribute("p", int(p))]
    elif op == "Split" and len(node.input) > 1 and node.input[1]:
        sizes = scope.value(node.input[1])
        if sizes is None:
            raise _NoRule("its split sizes are computed in the graph, not constant")
        keep.append(helper.make_attribute("split", [int(v) for v in sizes.reshape(-1)]))
        node = _rewired(node, [node.input[0]])
    elif op == "Tile" and len(node.input) == 3:
        before, repeats = _tile_repeats(node, ranks, scope)
        node = _rewired(node, [node.input[0], repeats])
    elif op == "Upsample" and ("height_scale" in attrs or "width_scale" in attrs):
        scales = [1.0, 1.0, _float(attrs, "height_scale", 1.0), _float(attrs, "width_scale", 1.0)]
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        keep = [a for a in keep if a.name not in ("height_scale", "width_scale", "mode")]
        keep += [helper.make_attribute("scales", scales),
                 helper.make_attribute("mode", "linear" if mode == "bilinear" else mode)]
    elif op == "BatchNormalization":  # test mode: the running mean and variance outputs are never computed
        if any(o in scope.used for o in node.output[1:]):
            raise _NoRule("an output other than Y (training statistics) is used")
        node = _rewired(node, outputs=node.output[:1])
    rewritten = onnx.NodeProto()
    rewritten.CopyFrom(node)
    del rewritten.attribute[:]
    rewritten.attribute.extend(keep)
    return before + [rewritten]


def _aligned(node: onnx.NodeProto, axis: int, ranks: dict[str, int], scope: "_Scope"):
    """B of a legacy broadcast at `axis` of A, as numpy's broadcasting reads it: trailing axes of
    size 1 added, so that B's last axis lines up with A's axis `axis + rank(B) - 1`."""
    a, b = node.input
    rank_a, rank_b = ranks.get(a), ranks.get(b)
    if rank_a is None or rank_b is None:
        raise _NoRule(f"it broadcasts its second input at axis {axis} of the first, and the rank of "
                      f"{a if rank_a is None else b!r} is unknown (declare the graph inputs' shapes)")
    axis = axis + rank_a if axis < 0 else axis
    pad = rank_a - axis - rank_b
    if pad < 0 or axis < 0:
        raise _NoRule(f"a second input of rank {rank_b} cannot sit at axis {axis} of a rank-{rank_a} first input")
    return _unsqueezed(node, b, list(range(rank_b, rank_b + pad)), scope)


def _per_channel_slope(node: onnx.NodeProto, ranks: dict[str, int], scope: "_Scope"):
    """PRelu's slope before opset 7 is one value, or one per channel (axis 1): [C] becomes [C, 1, ...]
    so that numpy's broadcasting (opset 7) reads it the same way."""
    x, slope = node.input[0], node.input[1]
    rank_x, rank_s = ranks.get(x), ranks.get(slope)
    if rank_s != 1 or (rank_x is not None and rank_x <= 2):
        return [], slope
    if rank_x is None:
        raise _NoRule(f"its slope is one value per channel, and the rank of {x!r} is unknown")
    return _unsqueezed(node, slope, list(range(1, rank_x - 1)), scope)


def _tile_repeats(node: onnx.NodeProto, ranks: dict[str, int], scope: "_Scope"):
    """Tile-1 (tiles copies along one axis) as Tile-6's repeats, one per axis."""
    tiles, axis = (scope.value(name) for name in node.input[1:])
    rank = ranks.get(node.input[0])
    if tiles is None or axis is None or rank is None:
        raise _NoRule("its tiles and axis must be constants and its input's rank known")
    repeats = np.ones(rank, np.int64)
    repeats[int(axis.reshape(-1)[0])] = int(tiles.reshape(-1)[0])
    return [], scope.constant(f"{_label(node)}_repeats", repeats)


def _unsqueezed(node: onnx.NodeProto, name: str, axes: list[int], scope: "_Scope"):
    """(nodes to add, the name holding `name` with size-1 `axes` inserted); a constant is reshaped in place of a node."""
    if not axes:
        return [], name
    value = scope.value(name)
    if value is not None:
        shape = list(value.shape)
        for axis in axes:
            shape.insert(axis, 1)
        return [], scope.constant(f"{_label(node)}_{name}_aligned", value.reshape(shape))
    out = scope.fresh(f"{_label(node)}_{name}_aligned")
    return [helper.make_node("Unsqueeze", [name], [out], name=out, axes=axes)], out


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value shape inference finds in the main graph. Inference runs on a copy where
    the attribute-only legacy forms are already modern and each axis broadcast is an Identity of its
    first input (its output has that input's shape), so ranks flow through the whole graph."""
    from onnx_attr.importing import isolated

    light, _ = skeleton(model, lambda tensor, stub: stub.dims.extend(tensor.dims))
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    for _ in range(2):  # the second round: Unsqueeze/Tile/PRelu rewrites read ranks the first round found
        probe = onnx.ModelProto()
        probe.CopyFrom(light)
        nodes, scope = [], _Scope(probe.graph)
        for node in probe.graph.node:
            attrs = {a.name: a for a in node.attribute}
            if node.domain in ("", "ai.onnx") and node.op_type in _LEGACY_BROADCAST and "axis" in attrs:
                nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]]))
                continue
            try:
                nodes.extend(_modern(node, scope, ranks) if node.domain in ("", "ai.onnx") else [node])
            except Exception:  # noqa: BLE001 - no rule, or a weight the skeleton left out: refused later if needed
                nodes.append(node)
        del probe.graph.node[:]
        probe.graph.node.extend(nodes)
        try:
            inferred = isolated.infer_shapes(probe, strict_mode=False, data_prop=True)
        except Exception:  # ranks stay unknown: the rewrites that need one refuse by name
            return ranks
        for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            if info.type.tensor_type.HasField("shape"):
                ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def write_out_experimental(model: onnx.ModelProto, notes: list[str], ops=None) -> onnx.ModelProto:
    """A copy of `model` with each experimental op of its main graph (and bodies) written out as the
    standard ops it computes (only `ops`, when given), or `model` itself when it has none."""
    opset = default_opset(model)
    ops = EXPERIMENTAL_OPS if ops is None else ops

    def chosen(node: onnx.NodeProto) -> bool:
        return node.op_type in ops and _experimental(node, opset)

    if not any(chosen(n) for g in _graphs(model.graph) for n in g.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found: dict[str, int] = {}

    def rewrite(node: onnx.NodeProto, index: int, scope: _Scope) -> list[onnx.NodeProto]:
        if not chosen(node):
            return [node]
        found[node.op_type] = found.get(node.op_type, 0) + 1
        return _standard(node, scope, opset)

    _rewrite_graphs(out.graph, rewrite)
    listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items()))
    checked = "verify compares against the graph as written" if ops is EXPERIMENTAL_OPS else \
        "onnxruntime has no kernel for them either, so verify runs the written-out ops"
    notes.append(f"wrote out experimental op(s) as standard ones ({listed}); {checked}")
    return out


def _experimental(node: onnx.NodeProto, opset: int) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in EXPERIMENTAL_OPS:
        return False
    standard_since = EXPERIMENTAL_OPS[node.op_type]
    return standard_since is None or opset < standard_since


def _standard(node: onnx.NodeProto, scope: "_Scope", opset: int) -> list[onnx.NodeProto]:
    """The standard ops (valid at opsets 7-9) an experimental node computes, as onnxruntime's kernels do."""
    attrs = {a.name: a for a in node.attribute}
    x, y, label = (node.input[0] if node.input else ""), node.output[0], _label(node)
    steps: list[onnx.NodeProto] = []

    def step(op: str, inputs: list[str], out: Optional[str] = None, **kwargs) -> str:
        out = out or scope.fresh(f"{label}_{op.lower()}")
        steps.append(helper.make_node(op, inputs, [out], name=f"{label}/{op}{len(steps)}", **kwargs))
        return out

    def const(suffix: str, value) -> str:
        return scope.constant(f"{label}_{suffix}", np.asarray(value, np.float32))

    op = node.op_type
    if op == "ImageScaler":  # scale * x + bias[c] over [N, C, H, W]
        bias = np.asarray(attrs["bias"].floats if "bias" in attrs else [0.0], np.float32)
        scaled = step("Mul", [x, const("scale", _float(attrs, "scale", 1.0))])
        step("Add", [scaled, const("bias", bias.reshape(-1, 1, 1))], y)
    elif op == "Affine":
        scaled = step("Mul", [x, const("alpha", _float(attrs, "alpha", 1.0))])
        step("Add", [scaled, const("beta", _float(attrs, "beta", 0.0))], y)
    elif op == "Scale":
        step("Mul", [x, const("scale", _float(attrs, "scale", 1.0))], y)
    elif op in ("ScaledTanh", "ParametricSoftplus"):  # alpha * f(beta * x)
        inner = step("Mul", [x, const("beta", _float(attrs, "beta", 1.0))])
        curve = step("Tanh" if op == "ScaledTanh" else "Softplus", [inner])
        step("Mul", [curve, const("alpha", _float(attrs, "alpha", 1.0))], y)
    elif op == "ThresholdedRelu":  # x where x > alpha, else 0
        above = step("Greater", [x, const("alpha", _float(attrs, "alpha", 1.0))])
        mask = step("Cast", [above], to=onnx.TensorProto.FLOAT)
        step("Mul", [x, mask], y)
    elif op == "MeanVarianceNormalization":  # as onnxruntime's kernel below opset 9: over N, H, W per channel
        if _int(attrs, "across_channels", 0):
            raise UnsupportedOpError([(op, node.domain, opset, label, "across_channels=1 (onnxruntime's kernel and "
                                       "the experimental op's text disagree on its axes)")])
        mean = step("ReduceMean", [x], axes=[0, 2, 3], keepdims=1)
        centred = step("Sub", [x, mean], None if _int(attrs, "normalize_variance", 1) else y)
        if _int(attrs, "normalize_variance", 1):
            spread = step("Sqrt", [step("ReduceMean", [step("Mul", [centred, centred])], axes=[0, 2, 3], keepdims=1)])
            step("Div", [centred, step("Add", [spread, const("epsilon", 1e-9)])], y)
    elif op == "ConstantFill":
        steps.extend(_filled(node, attrs, scope, opset))
    elif op == "DynamicSlice":  # Slice-10 before opset 10 (PyTorch 1.0's slices of computed bounds): the same
        # inputs, which our Slice converter reads at any opset (it tells the two forms by the attributes)
        steps.append(helper.make_node("Slice", list(node.input), [y], name=label))
    elif op == "Crop":  # border [left, top, right, bottom], or a [height, width] window from (top, left)
        left, top, right, bottom = (list(attrs["border"].ints) + [0, 0, 0, 0])[:4]
        big = np.iinfo(np.int64).max
        if "scale" in attrs:
            height, width = list(attrs["scale"].ints)[:2]
            ends = [top + height, left + width]
        else:
            ends = [-bottom if bottom else big, -right if right else big]
        step("Slice", [x], y, axes=[2, 3], starts=[top, left], ends=ends)
    return steps


def _filled(node: onnx.NodeProto, attrs: dict, scope: "_Scope", opset: int) -> list[onnx.NodeProto]:
    """ConstantFill (Caffe2's; PyTorch 0.3-0.4 exported an LSTM's zero initial state with it): `value` of
    `dtype` in the shape its input holds (input_as_shape), or its input's shape, or the `shape`
    attribute, with `extra_shape` appended. ConstantOfShape from opset 9; before, Tile of a
    one-element constant, which needs the shape's length known."""
    label, y = _label(node), node.output[0]
    dtype = attrs["dtype"].i if "dtype" in attrs else onnx.TensorProto.FLOAT
    value = np.array([_float(attrs, "value", 0.0)], helper.tensor_dtype_to_np_dtype(dtype))
    extra = list(attrs["extra_shape"].ints) if "extra_shape" in attrs else []
    source = node.input[0] if node.input and node.input[0] else ""
    if not source:
        shape = list(attrs["shape"].ints) if "shape" in attrs else []
        filled = np.full(shape + extra, value[0], value.dtype)
        return [helper.make_node("Identity", [scope.constant(f"{label}_value", filled)], [y], name=label)]
    steps, length = [], None
    if _int(attrs, "input_as_shape", 0):
        shape, dims = source, scope.dims(source)
        length = dims[0] if dims and len(dims) == 1 else None
    else:
        shape = scope.fresh(f"{label}_shape")
        steps.append(helper.make_node("Shape", [source], [shape], name=shape))
        dims = scope.dims(source)
        length = None if dims is None else len(dims)
    if extra:
        whole = scope.fresh(f"{label}_whole_shape")
        steps.append(helper.make_node("Concat", [shape, scope.constant(f"{label}_extra", np.array(extra, np.int64))],
                                      [whole], name=whole, axis=0))
        shape, length = whole, None if length is None else length + len(extra)
    if opset >= 9:
        steps.append(helper.make_node("ConstantOfShape", [shape], [y], name=label,
                                      value=numpy_helper.from_array(value, "value")))
    elif length is None:
        raise UnsupportedOpError([(node.op_type, node.domain, opset, label, "the length of the shape it fills is "
                                   "unknown at this opset (ConstantOfShape came at opset 9)")])
    else:
        one = scope.constant(f"{label}_one", value.reshape([1] * length))
        steps.append(helper.make_node("Tile", [one, shape], [y], name=label))
    return steps


def _rewrite_graphs(root: onnx.GraphProto, rewrite) -> None:
    """Each node of `root` and of its bodies replaced by the nodes `rewrite(node, index, scope)` returns."""
    for graph in _graphs(root):
        scope = _Scope(graph)
        nodes = [new for index, node in enumerate(graph.node) for new in rewrite(node, index, scope)]
        del graph.node[:]
        graph.node.extend(nodes)


class _Scope:
    """One graph being rewritten: its initializers by name and every name taken, kept up to date, so
    that adding a constant costs no scan of the graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.taken = set(self.initializers) | {o for n in graph.node for o in n.output} | \
            {i.name for i in graph.input}
        self.used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        self._dims: Optional[dict[str, list[Optional[int]]]] = None

    def dims(self, name: str) -> Optional[list[Optional[int]]]:
        """The shape inference found for `name` (None per unknown dim), or None when its rank is unknown."""
        if self._dims is None:
            graph, self._dims = self.graph, {}
            for info in (*graph.input, *graph.value_info, *graph.output):
                if info.type.tensor_type.HasField("shape"):
                    self._dims[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                             for d in info.type.tensor_type.shape.dim]
            for tensor in graph.initializer:
                self._dims[tensor.name] = list(tensor.dims)
        return self._dims.get(name)

    def fresh(self, stem: str) -> str:
        """A name no value of the graph has, now taken."""
        name, k = stem, 1
        while name in self.taken:
            name, k = f"{stem}_{k}", k + 1
        self.taken.add(name)
        return name

    def constant(self, stem: str, value: np.ndarray) -> str:
        """A new initializer holding `value`, under a fresh name."""
        tensor = numpy_helper.from_array(value, self.fresh(stem))
        self.graph.initializer.append(tensor)
        self.initializers[tensor.name] = tensor
        return tensor.name

    def value(self, name: str) -> Optional[np.ndarray]:
        found = self.initializers.get(name)
        return None if found is None else numpy_helper.to_array(found)


def _rewired(node: onnx.NodeProto, inputs: Optional[list[str]] = None,
             outputs: Optional[list[str]] = None) -> onnx.NodeProto:
    """A copy of `node` reading `inputs` and writing `outputs` (its own where not given)."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    for field, names in ((out.input, inputs), (out.output, outputs)):
        if names is not None:
            del field[:]
            field.extend(names)
    return out


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}_{node.output[0]}"


def _int(attrs: dict, name: str, default: int) -> int:
    return attrs[name].i if name in attrs else default


def _float(attrs: dict, name: str, default: float) -> float:
    return attrs[name].f if name in attrs else default
