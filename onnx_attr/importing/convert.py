"""Build a `torch.fx.GraphModule` from an ONNX graph with onnx2torch's and our converters.

We build the fx graph ourselves rather than calling `onnx2torch.convert` so that:
every unsupported node is reported at once, by op/domain/opset/name, before anything is built;
a converter's failure names its node; every ONNX tensor maps to an fx node (`meta["onnx_tensor"]`,
used by `verify` to find the first divergent node and by layer attribution); graph outputs may
be graph inputs, initializers, or any output of a multi-output node.
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import re
import unicodedata
from contextvars import ContextVar
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
from onnx2torch.onnx_graph import OnnxGraph, ValueType
from onnx2torch.onnx_tensor import OnnxTensor
from torch import fx, nn

from onnx_attr.importing import converters  # noqa: F401 - importing registers our converters
from onnx_attr.importing.budget import NodeGuard, current_budget, guard_constants, guarded
from onnx_attr.importing.converters.control_flow import MODEL_OPSETS
from onnx_attr.importing.converters.registry import find_converter
from onnx_attr.importing.converters.unsigned import ONNX_UNSIGNED, WIDENED_OPS, WidenedUnsigned
from onnx_attr.errors import BudgetError, ConversionError, ModelLoadError, UnsupportedOpError
from onnx_attr.importing.interpreter import Interpreter
from onnx_attr.importing.normalize import default_opset
from onnx_attr.importing.read import external_folder, is_external, read_external


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Domain -> opset version, with '' for the default ai.onnx domain."""
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, int, str, str]]:
    """(op_type, domain, opset, node name, reason) for every node nothing can convert,
    in the bodies of If/Loop/Scan too."""
    return _unsupported_in(model.graph, opsets(model), "")


def _unsupported_in(graph: onnx.GraphProto, versions: dict[str, int], scope: str) -> list:
    found = []
    for index, node in enumerate(graph.node):
        opset = versions.get(node.domain, 0)
        label = scope + _node_label(node, index)
        if node.domain and node.domain not in versions:
            found.append((node.op_type, node.domain, 0, label, "its domain is not imported"))
        elif find_converter(node.domain, node.op_type, opset) is None:
            found.append((node.op_type, node.domain, opset, label, ""))
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                found += _unsupported_in(sub, versions, f"{label}/{attr.name}/")
    return found


def is_importable(model: onnx.ModelProto) -> bool:
    return not unsupported_nodes(model)


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


#: ops whose converters return a sequence of outputs however many the node has: a one-output Split
#: (tf.unstack of a length-1 axis, DTLN's stage 2) handed its consumer a tuple
SEQUENCE_RESULTS = frozenset({"Split"})


def select_output(value, index: int):
    """Output `index` of a node; converters return a bare tensor when only the first is computed."""
    if isinstance(value, (tuple, list)):
        return value[index]
    if index == 0:
        return value
    raise IndexError(f"the node computed one output, output {index} was asked for")


#: the blocked-layout ops onnxruntime writes into a graph saved at ORT_ENABLE_ALL: its weights are
#: reordered for the saving machine's vector width, so the file is that machine's, not a model's
NCHWC_HINT = ("This file was saved by onnxruntime at ORT_ENABLE_ALL: its NCHWc layout transformer reorders "
              "convolutions and weights for that machine's vector width (onnxruntime itself warns that such a file "
              "is hardware specific). Give the model from before that optimization, or save it at "
              "ORT_ENABLE_EXTENDED (SessionOptions.graph_optimization_level), whose fused ops are imported.")


class Initializers(nn.Module):
    """Holds the ONNX initializers as buffers, so `.to(device)` moves them with the module."""


def convert(model: onnx.ModelProto, declared: dict[str, int] | None = None) -> fx.GraphModule:
    """Convert a normalized model; raises `UnsupportedOpError`/`ConversionError` naming nodes.

    `declared`: the opsets the file itself imports, when `model` is an upgraded copy; errors name
    those (what the user sees in the file) and say at which opset the upgraded copy failed too."""
    versions = opsets(model)
    missing = unsupported_nodes(model)
    if missing:
        named = [(t, d, *_as_declared(d, o, declared), n, r) for t, d, o, n, r in missing]
        nodes = [(t, d, o, n, (note + r).strip()) for t, d, o, note, n, r in named]
        if any(d == "com.microsoft.nchwc" for _, d, _, _, _ in nodes):
            raise UnsupportedOpError(nodes, hint=NCHWC_HINT)
        raise UnsupportedOpError(nodes)
    token = MODEL_OPSETS.set(versions)
    folder = external_folder(model)
    folder_token = _FOLDER.set(folder if folder is not None else _FOLDER.get())  # bodies read from the model's
    try:
        return _convert(model, versions, declared)
    finally:
        _FOLDER.reset(folder_token)
        MODEL_OPSETS.reset(token)


def _as_declared(domain: str, opset: int, declared: dict[str, int] | None) -> tuple[int, str]:
    """The opset to name for a node (the file's), and a note on the upgraded copy's, if any."""
    named = (declared or {}).get(domain, opset)
    return named, "" if named == opset else f"[also at opset {opset}, after {'our opset-7 rewrite' if opset == 7 else 'onnx.version_converter'}'s upgrade] "


#: The folder of the model being converted's external data, for the bodies converted inside it.
_FOLDER: ContextVar[Optional[Path]] = ContextVar("_FOLDER", default=None)


class _ExternalTensor(OnnxTensor):
    """An initializer whose data stays in its file until a converter or the module asks for it,
    then is read once, straight into the array every user shares."""

    def __init__(self, proto: onnx.TensorProto, folder):
        super().__init__(proto)
        self._folder, self._array = folder, None

    def to_numpy(self):
        if self._array is None:
            self._array = read_external(self.proto, self._folder)
        return self._array

    def to_torch(self) -> torch.Tensor:
        return torch.from_numpy(self.to_numpy())


def _distinct_node_keys(graph: onnx.GraphProto) -> None:
    """onnx2torch keys the nodes by a name made from each (its op type when unnamed, `_1`, `_2` after
    repeats): an unnamed Reshape's `Reshape_1` met a node named `/Reshape_1`, and its dict kept one
    key for both, the second node in the first one's place, before its input was made (quantize_dynamic's
    bias Reshapes in DeepFilterNet's encoder). Where keys would meet, an unnamed node takes its label
    (`Reshape#59`) and a repeated name its index; then any node whose key is still taken, its name
    distinct but made the same (dfnstream's `Gather` and `/Gather` both key `Gather`, the second's
    `Gather_1` meeting a node named `/Gather_1`), takes its index too."""
    def keys() -> list[str]:
        counts: dict[str, int] = {}
        made = []
        for node in graph.node:
            key = OnnxGraph.generate_node_name(node)
            made.append(key + (f"_{counts[key]}" if counts.get(key) else ""))
            counts[key] = counts.get(key, 0) + 1
        return made

    if len(set(keys())) == len(graph.node):
        return
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}#{index}"
        seen.add(node.name)
    for _ in range(3):  # a label `name#index` is met by no other key after one round; bounded all the same
        made = keys()
        if len(set(made)) == len(made):
            return
        taken: set[str] = set()
        for index, (node, key) in enumerate(zip(graph.node, made)):
            if key in taken:
                node.name = f"{node.name}#{index}"
            taken.add(key)
    if len(set(keys())) != len(graph.node):  # never met; if it were, names no key can repeat
        for index, node in enumerate(graph.node):
            node.name = f"{node.op_type}#{index}"


def _convert(model: onnx.ModelProto, versions: dict[str, int], declared: dict[str, int] | None = None
             ) -> fx.GraphModule:
    _distinct_node_keys(model.graph)
    onnx_graph = OnnxGraph(model.graph)
    folder = _FOLDER.get()
    for name, tensor in list(onnx_graph.initializers.items()):
        if is_external(tensor.proto):
            onnx_graph._initializers[name] = _ExternalTensor(tensor.proto, folder)  # behind a read-only view
    elem_types = _elem_types(model.graph)
    root = nn.Module()
    initializers = Initializers()
    root.add_module("initializers", initializers)
    graph = fx.Graph()
    values: dict[str, fx.Node] = {}

    names = Identifiers()
    for spec in model.graph.input:
        node = graph.placeholder(names.new(spec.name, "input"))
        node.meta["onnx_tensor"] = spec.name
        values[spec.name] = node

    pending: dict[str, tuple[fx.Node, int, str, str]] = {}

    def value(name: str) -> fx.Node | None:
        if name == "":
            return None
        if name in pending:
            producer, i, label, op_type = pending.pop(name)
            with graph.inserting_after(producer):
                values[name] = graph.call_function(select_output, (producer, i))
            values[name].meta.update(onnx_tensor=name, onnx_node=label, onnx_op=op_type)
        if name not in values:
            if onnx_graph.value_type(name) != ValueType.GRAPH_INITIALIZER:
                raise ModelLoadError(f"tensor {name!r} is used before any node produces it (or it is not produced "
                                     "at all); the graph is malformed")
            buffer = names.new(name, "init")
            try:
                tensor = onnx_graph.initializers[name].to_torch()
            except (ValueError, TypeError, KeyError) as err:
                raise ModelLoadError(f"initializer {name!r} cannot be read as a tensor ({type(err).__name__}: "
                                     f"{str(err)[:200]}); the file is corrupted") from err
            initializers.register_buffer(buffer, tensor)
            values[name] = graph.get_attr(f"initializers.{buffer}")
            values[name].meta["onnx_tensor"] = name
        return values[name]

    shapes = _static_shapes(model.graph)
    ranks = {name: len(shape) for name, shape in shapes.items() if shape is not None}
    for index, (module_name, onnx_node) in enumerate(onnx_graph.nodes.items()):
        proto = onnx_node.proto
        opset = versions.get(onnx_node.domain, 0)
        label = _node_label(proto, index)
        try:
            _check_axis_attributes(proto, ranks)
            converter = find_converter(onnx_node.domain, onnx_node.operation_type, opset)
            module, mapping = converter(onnx_node, onnx_graph)
        except NotImplementedError as err:
            named, note = _as_declared(proto.domain, opset, declared)
            raise UnsupportedOpError([(proto.op_type, proto.domain, named, label, note + str(err))]) from err
        except BudgetError as err:  # a converter that measures what the node asks for (a tree's depth)
            raise BudgetError(f"node {label!r} ({proto.op_type}): {err}") from err
        except Exception as err:  # converters raise anything from KeyError to AssertionError
            named, note = _as_declared(proto.domain, opset, declared)
            raise ConversionError(proto.op_type, proto.domain, named, label,
                                  RuntimeError(f"{note}{type(err).__name__}: {err}") if note else err) from err
        if proto.op_type in WIDENED_OPS and not proto.domain and any(
                elem_types.get(name) in ONNX_UNSIGNED for name in proto.input):
            module = WidenedUnsigned(module, proto.op_type)
        target = names.new(module_name, "node")
        root.add_module(target, module)
        args, kwargs = _call_arguments(module, [value(name) for name in mapping.inputs])
        attrs = {a.name: _attribute(a) for a in proto.attribute}
        if proto.domain in ("", "ai.onnx") and guarded(
                proto.op_type, attrs, [shapes.get(n) for n in proto.input], shapes.get(proto.output[0]) if proto.output else None,
                names=proto.input):
            named, note = _as_declared(proto.domain, opset, declared)
            where = f"node {label!r} (op {proto.op_type}, opset {named}{note and ', upgraded to ' + str(opset)})"
            _guard(module, proto, attrs, where, opset, mapping.inputs, args, kwargs, onnx_graph)
        node = graph.call_module(target, tuple(args), kwargs)
        node.meta.update(onnx_node=label, onnx_op=proto.op_type, onnx_domain=proto.domain,
                         onnx_opset=opset, onnx_outputs=tuple(mapping.outputs),
                         onnx_attrs=attrs)
        if len(mapping.outputs) == 1 and proto.op_type not in SEQUENCE_RESULTS:
            node.meta["onnx_tensor"] = mapping.outputs[0]
            values[mapping.outputs[0]] = node
        else:  # selected when first used: converters may compute only the outputs in use
            for i, name in enumerate(mapping.outputs):
                if name:
                    pending[name] = (node, i, label, proto.op_type)

    results = [value(o.name) for o in model.graph.output]
    graph.output(results[0] if len(results) == 1 else tuple(results))
    graph.lint()
    module = fx.GraphModule(root, graph)
    module.meta["onnx_opset"] = default_opset(model)
    return module


def _guard(module: nn.Module, proto: onnx.NodeProto, attrs: dict, where: str, opset: int, passed, args, kwargs,
           onnx_graph: OnnxGraph) -> None:
    """Check a node's inputs (output size, axes) before each call (see `budget.NodeGuard`)."""
    names = list(passed)
    positional = names[:len(args)]
    keywords: dict[str, str] = {}
    if kwargs:  # as `_call_arguments` named them: parameters after the positional ones, in order
        params = tuple(inspect.signature(module.forward).parameters)[len(args):len(names)]
        keywords = {p: n for p, n in zip(params, names[len(args):]) if n}
    baked = [n for n in proto.input if n and n not in names]
    guard = NodeGuard(current_budget(), where, proto.op_type, attrs,
                         opset, list(proto.input), positional, keywords,
                         guard_constants(baked, onnx_graph.initializers))
    module.register_forward_pre_hook(guard, with_kwargs=True)


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list]:
    """Each tensor's shape where the file's weights, its inputs or shape inference give its rank: per
    axis a size, a symbol, or None (unknown, or anonymous: '?' and '' name no shared size)."""
    shapes: dict[str, list] = {}
    for v in (*graph.value_info, *graph.output, *graph.input):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else
                              d.dim_param if d.HasField("dim_param") and d.dim_param not in ("", "?") else None
                              for d in v.type.tensor_type.shape.dim]
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    return shapes


def _check_axis_attributes(proto: onnx.NodeProto, ranks: dict[str, int]) -> None:
    """An `axis`/`axes` attribute outside its input's rank is refused before conversion: several
    converters take axes modulo the rank (GatherElements with axis=2^31 silently gathered along
    some axis where onnxruntime refuses the file), onnx2torch's Slice loops up to the value."""
    if proto.domain not in ("", "ai.onnx") or not proto.input or proto.input[0] not in ranks:
        return
    rank = ranks[proto.input[0]]
    for attr in proto.attribute:
        if attr.name == "axis" and attr.type == onnx.AttributeProto.INT:
            axes = [attr.i]
        elif attr.name == "axes" and attr.type == onnx.AttributeProto.INTS:
            axes = list(attr.ints)
        else:
            continue
        low, high = -rank, rank - 1  # ONNX's usual range; the ops below address their output's axes
        if proto.op_type == "Unsqueeze":
            low, high = -(rank + len(axes)), rank + len(axes) - 1
        elif proto.op_type == "Flatten":
            high = rank
        elif proto.op_type == "OneHot":
            low, high = -rank - 1, rank
        wrong = [a for a in axes if not low <= a <= high]
        if wrong:
            raise ValueError(f"{attr.name} {wrong[0]:,} is outside the range [{low}, {high}] its input's rank "
                             f"({rank}) allows; the file is corrupted")


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Each tensor's ONNX element type where shape inference or the initializers know it."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


#: attribute lists longer than this are kept in the graph's meta as numpy arrays (numbers) or one string
#: object per distinct value: a LightGBM export's tree ensemble has ten lists of 4.85 M entries, 2.5 GB
#: as Python ints and floats held by the converted module for as long as it lives
_LONG_ATTRIBUTE = 4096


def _attribute(attr: onnx.AttributeProto):
    """An attribute's value with strings decoded (onnx returns bytes); a long list compact."""
    A = onnx.AttributeProto
    if attr.type == A.INTS and len(attr.ints) > _LONG_ATTRIBUTE:
        return np.fromiter(attr.ints, np.int64, len(attr.ints))
    if attr.type == A.FLOATS and len(attr.floats) > _LONG_ATTRIBUTE:
        return np.fromiter(attr.floats, np.float32, len(attr.floats))
    if attr.type == A.STRINGS and len(attr.strings) > _LONG_ATTRIBUTE:
        decoded = {v: v.decode("utf-8") for v in set(attr.strings)}
        return tuple(decoded[v] for v in attr.strings)
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _call_arguments(module: nn.Module, args: list) -> tuple[list, dict]:
    """Skipped optional ONNX inputs ('') become omitted keyword arguments, as onnx2torch expects."""
    if None not in args:
        return args, {}
    first = args.index(None)
    names = tuple(inspect.signature(module.forward).parameters)[first:len(args)]
    kwargs = {n: a for n, a in zip(names, args[first:]) if a is not None}
    return args[:first], kwargs


class Identifiers:
    """Python identifiers for ONNX names, unique as Python reads them.

    fx writes our names into generated code, and Python folds identifiers to their NFKC form:
    input `ｘ` (fullwidth) and input `x` would be one variable, node `ｆ` would call module `f`.
    So names are reduced to ASCII letters, digits and `_` after NFKC, kept clear of keywords,
    `self`, module attributes (`double`, `to`) and fx's own names, and made unique by a numeric suffix. The ONNX names stay in each
    fx node's meta (`onnx_tensor`, `onnx_node`), which is what every message shows.
    """

    _RESERVED = frozenset({"self", "initializers", "torch", "fx", "math", "inf", "nan", "device", "dtype",
                           "builtins", "getattr", "select_output"}) | frozenset(dir(fx.GraphModule))

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def new(self, name: str, fallback: str) -> str:
        ident = re.sub(r"[^0-9A-Za-z_]", "_", unicodedata.normalize("NFKC", name))[:80]
        if not ident or ident[0].isdigit() or keyword.iskeyword(ident) or ident in self._RESERVED \
                or ident in dir(builtins) or ident.startswith("_"):
            ident = f"{fallback}_{ident}"
        unique, n = ident, 1
        while unique in self.taken:
            n += 1
            unique = f"{ident}_{n}"
        self.taken.add(unique)
        return unique


def tensor_nodes(module: fx.GraphModule) -> dict[str, fx.Node]:
    """ONNX tensor name -> the fx node that computes it."""
    return {n.meta["onnx_tensor"]: n for n in module.graph.nodes if "onnx_tensor" in n.meta}


def run_recording(module: fx.GraphModule, *args: torch.Tensor, overrides: Optional[dict] = None
                  ) -> dict[str, object]:
    """Run the module and return every ONNX tensor's value by name (for divergence search). With
    `overrides` (ONNX name -> array of the same shape), ours is recorded and the given value goes on
    downstream: each later node computes from the reference's values (teacher forcing)."""
    recorded: dict[str, object] = {}

    class _Recorder(Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if "onnx_tensor" in n.meta:
                name = n.meta["onnx_tensor"]
                recorded[name] = out
                given = (overrides or {}).get(name)
                if given is not None and isinstance(out, torch.Tensor) and tuple(given.shape) == tuple(out.shape):
                    return torch.from_numpy(np.ascontiguousarray(given)).to(device=out.device, dtype=out.dtype)
            return out

    with torch.no_grad():
        _Recorder(module).run(*args)
    return recorded
