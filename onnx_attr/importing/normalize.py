"""Graph passes that make real exports importable, without changing what they compute.

Each pass takes a model, never mutates it, and returns a new one plus notes for the user.
The passes up to `fold_constants` are exact rewrites; the result of those is what
`verify` runs onnxruntime on. The opset upgrade is the one pass that could in principle
change semantics, so it runs only when the model cannot be imported at its own opset, and
`verify` then catches any difference against onnxruntime on the un-upgraded graph. Last, a
LayerNorm written out op by op becomes one node (`fusions.py`), and onnxruntime's fused BERT
embedding is written out as the ONNX ops it fuses (`unfused.py`), in the converted model only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_attr.errors import ModelLoadError
from onnx_attr.importing.budget import current_budget, elements
from onnx_attr.importing import isolated
from onnx_attr.importing.fusions import fuse_layer_norms
from onnx_attr.importing.legacy import WITHOUT_KERNEL, default_opset, modernize_legacy, write_out_experimental
from onnx_attr.importing.ml_casts import cast_integer_features
from onnx_attr.importing.unfused import unfuse_embeddings
from onnx_attr.importing.widen import widen_float16
from onnx_attr.importing.read import _graphs, copy_fields, is_external, skeleton, top_level

#: The opset an old model is upgraded to when it cannot be imported at its own opset.
UPGRADE_TARGET_OPSET = 17


@dataclass
class Normalized:
    """The canonical model (exact rewrites only), the model to convert, and what was done."""

    canonical: onnx.ModelProto
    converted: onnx.ModelProto
    notes: list[str] = field(default_factory=list)


def normalize(
    model: onnx.ModelProto, *, importable: Callable[[onnx.ModelProto], bool] | None = None, owned: bool = False
) -> Normalized:
    """Run the passes in order; `importable` decides whether an opset upgrade is needed. With
    `owned` the caller hands `model` over: the passes change it in place, so its weights are held
    once, not once per pass."""
    notes: list[str] = []
    canonical = drop_initializer_inputs(model, notes, in_place=owned)
    canonical = fold_constants(canonical, notes, in_place=owned or canonical is not model)
    # opsets 1-6, which onnxruntime cannot run: as opset 7
    canonical = modernize_legacy(canonical, notes, in_place=owned or canonical is not model)
    canonical = inline_constant_ifs(canonical, notes)
    canonical = infer_shapes(canonical, notes, in_place=owned or canonical is not model)
    written = write_out_experimental(canonical, notes, WITHOUT_KERNEL)  # what onnxruntime cannot run either
    if written is not canonical:
        canonical = infer_shapes(written, notes, in_place=True)
    converted = unfuse_embeddings(canonical, notes)  # a copy where it writes any out: canonical stays as written
    converted = write_out_experimental(converted, notes)  # ImageScaler & co. (opsets 1-9) as standard ops
    if converted is not canonical:  # the written-out steps' shapes (Attention reads its mask index's rank)
        converted = infer_shapes(converted, notes, in_place=True)
    if importable is not None and not importable(converted):
        upgraded = upgrade_opset(converted, UPGRADE_TARGET_OPSET, notes)
        if upgraded is not converted:  # a new model of ours: the passes may change it
            converted = infer_shapes(fold_constants(upgraded, notes, in_place=True), notes, in_place=True)
    converted = widen_packed_integers(converted, notes)  # 4- and 2-bit weights left after the write-outs
    converted = fuse_layer_norms(converted, notes)  # after the rest: canonical, what verify runs, stays as written
    converted = cast_integer_features(converted, notes)  # a node where integer features become floats
    converted = widen_float16(converted, notes)  # as onnxruntime's CPU provider computes float16 (widen.py)
    converted = absent_empty_resize_inputs(converted)
    return Normalized(canonical, converted, notes)


def absent_empty_resize_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Resize's empty roi or scales (paddle2onnx writes an empty constant for each) as the absent input
    it means, in a copy: the converter reads both alike, and the module then holds no empty tensors,
    which torch's program writer takes for one storage shared by all (no storage, data pointer 0) and
    cannot write ("numel: integer multiplication overflow": PP-OCRv4's detector in `convert`)."""
    empty = {t.name for t in model.graph.initializer if 0 in t.dims}
    found = [(i, p) for i, n in enumerate(model.graph.node) if n.op_type == "Resize" and n.domain in ("", "ai.onnx")
             and len(n.input) >= 3 for p in (1, 2) if n.input[p] in empty]
    if not found:
        return model
    out = _copy(model)
    for i, p in found:
        out.graph.node[i].input[p] = ""
    _drop_unused_initializers(out.graph)
    return out


def widen_packed_integers(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Initializers of integers packed below a byte (int4, uint4, int2, uint2: block-quantized weights)
    stored as int8/uint8 of the same values, where every reader is a DequantizeLinear, which computes
    (q - zero point) · scale alike in either storage (torch has no 4-bit type). Read by anything else, they
    are refused by name. `verify` runs onnxruntime on the graph as written."""
    from onnx_attr.importing.read import PACKED_INTEGERS

    packed = {t.name: t for t in model.graph.initializer if t.data_type in PACKED_INTEGERS}
    readers: dict[str, set] = {}
    for graph in _all_graphs(model.graph):  # a branch reads the main graph's initializers by name too
        for node in graph.node:
            for name in node.input:
                if name in packed:
                    readers.setdefault(name, set()).add(node.op_type)
    for name, ops in readers.items():
        if not ops <= {"DequantizeLinear"}:
            raise ModelLoadError(f"initializer {name!r} is {onnx.TensorProto.DataType.Name(packed[name].data_type)}, "
                                 f"read by {sorted(ops - {'DequantizeLinear'})}: onnx-attr reads 4- and 2-bit integers "
                                 "under a DequantizeLinear only (PyTorch has no such type); re-export the model with "
                                 "8-bit or float weights")
    widened = list(readers)
    unread = {name for name in packed if name not in readers}  # a written-out GatherBlockQuantized's table
    if not widened and not unread:
        return model
    out = _copy(model)
    kept = [t for t in out.graph.initializer if t.name not in unread]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    for tensor in out.graph.initializer:
        if tensor.name in widened:
            signed = tensor.data_type in (onnx.TensorProto.INT4, getattr(onnx.TensorProto, "INT2", -1))
            values = numpy_helper.to_array(tensor).astype(np.int8 if signed else np.uint8)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    if widened:
        notes.append(f"stored {len(widened)} 4- or 2-bit initializer(s) as 8-bit integers of the same values "
                     "(their DequantizeLinear computes alike)")
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def drop_initializer_inputs(model: onnx.ModelProto, notes: list[str], *, in_place: bool = False) -> onnx.ModelProto:
    """IR<4 files list every weight as a graph input too; treat them as the constants they are.

    The IR version is raised to 4, the first that allows initializers outside the inputs, so
    the result stays valid for onnxruntime.
    """
    inits = {t.name for t in model.graph.initializer}
    dup = [i for i in model.graph.input if i.name in inits]
    if not dup:
        return model
    out = model if in_place else _copy(model)
    keep = [i for i in out.graph.input if i.name not in inits]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    out.ir_version = max(out.ir_version, 4)
    notes.append(f"treated {len(dup)} initializer(s) that were also listed as graph inputs as constants")
    return out


def fold_constants(model: onnx.ModelProto, notes: list[str], *, in_place: bool = False) -> onnx.ModelProto:
    """Turn Constant nodes, ConstantOfShape of constant shapes, and Identity aliases into initializers.

    Repeats until nothing changes, since one fold can enable the next (a ConstantOfShape
    whose shape is a Constant, as in the Caffe2 zoo exports). `in_place` changes `model` itself
    (a model the caller no longer needs: its weights are not copied).
    """
    out = model if in_place else _copy(model)
    graph = out.graph
    counts = {"Constant": 0, "ConstantOfShape": 0, "Identity": 0}
    changed = True
    while changed:
        changed = False
        inits = {t.name: t for t in graph.initializer}
        outputs = {o.name for o in graph.output}
        kept: list[onnx.NodeProto] = []
        aliases: dict[str, str] = {}  # an Identity's output -> its input, rewired at the end of the round
        for node in graph.node:
            folded = _fold_node(node, inits, outputs, aliases)
            if folded is None:
                kept.append(node)
                continue
            if isinstance(folded, onnx.TensorProto):
                graph.initializer.append(folded)
                inits[folded.name] = folded
            counts[node.op_type] += 1
            changed = True
        if changed:
            del graph.node[:]
            graph.node.extend(kept)
            # every alias of the round in one pass over the graph (one pass an Identity was quadratic:
            # SLANet's unrolled decoder, thousands of Identities, spent 80 s here)
            rename_all(graph, {dst: _resolved(src, aliases) for dst, src in aliases.items()})
    done = ", ".join(f"{n} {op}" for op, n in counts.items() if n)
    if done:
        notes.append(f"folded into initializers: {done}")
        out.ir_version = max(out.ir_version, 4)  # IR<4 requires every initializer to be an input
    _drop_unused_initializers(graph)
    return out


def _resolved(name: str, aliases: dict[str, str]) -> str:
    """The name an alias chain (Identity of an Identity) ends at."""
    seen = set()
    while name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name]
    return name


def _fold_node(node, inits, outputs, aliases: dict[str, str]) -> onnx.TensorProto | bool | None:
    """A new initializer, True when the node is an alias to rewire away (noted in `aliases`), or
    None to keep it."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        return _constant_value(node)
    if node.op_type == "ConstantOfShape" and node.input[0] in inits:
        shape_init = inits[node.input[0]]
        if elements(shape_init.dims) > 64 or is_external(shape_init):  # a shape has one entry per axis
            return None
        shape = [int(d) for d in numpy_helper.to_array(shape_init).astype(np.int64).reshape(-1).tolist()]
        budget = current_budget()
        if any(d < 0 for d in shape):
            raise ModelLoadError(f"ConstantOfShape node {node.name!r} asks for a tensor of shape {shape}: "
                                 "a negative dimension; the file is corrupted")
        budget.check("max_elements", elements(shape),
                     f"ConstantOfShape node {node.name!r} (shape {shape}) creating a tensor of that many elements")
        if elements(shape) > budget.max_folded_elements:  # left to run time: not materialized in the file
            return None
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
        return numpy_helper.from_array(np.full(shape, fill[0], dtype=fill.dtype), node.output[0])
    if node.op_type == "Identity":
        src, dst = node.input[0], node.output[0]
        if dst in outputs:
            if src not in inits or is_external(inits[src]):
                return None
            alias = onnx.TensorProto()
            alias.CopyFrom(inits[src])
            alias.name = dst
            return alias
        aliases[dst] = src
        return True
    return None


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None or attr.name == "sparse_value":
        return None
    name = node.output[0]
    if attr.name == "value":
        t = onnx.TensorProto()
        t.CopyFrom(attr.t)
        t.name = name
        return t
    scalar = {"value_float": (onnx.TensorProto.FLOAT, "f"), "value_int": (onnx.TensorProto.INT64, "i"),
              "value_string": (onnx.TensorProto.STRING, "s")}
    listed = {"value_floats": (onnx.TensorProto.FLOAT, "floats"), "value_ints": (onnx.TensorProto.INT64, "ints"),
              "value_strings": (onnx.TensorProto.STRING, "strings")}
    if attr.name in scalar:
        dtype, field_name = scalar[attr.name]
        return helper.make_tensor(name, dtype, [], [getattr(attr, field_name)])
    if attr.name in listed:
        dtype, field_name = listed[attr.name]
        values = list(getattr(attr, field_name))
        return helper.make_tensor(name, dtype, [len(values)], values)
    return None


def inline_constant_ifs(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Replace each If whose condition is a constant by the nodes of the branch it takes.

    Exports keep such Ifs for shape checks; inlined, the taken branch is ordinary graph that
    the DeepLift rules see op by op (an If left in place runs as one opaque module). The
    branch's own names get a prefix so they cannot clash; its outputs reach the If's outputs
    through Identity nodes, which the constant folding then rewires away.
    """
    inlined = 0
    while True:  # a round inlines every If constant so far, then folds once: folding may make more constant
        inits = {t.name: t for t in model.graph.initializer}
        constant = [i for i, n in enumerate(model.graph.node) if n.op_type == "If" and n.domain in ("", "ai.onnx")
                    and n.input[0] in inits and not is_external(inits[n.input[0]])
                    and numpy_helper.to_array(inits[n.input[0]]).size == 1]
        if not constant:
            break
        model = _copy(model)
        graph = model.graph
        taken_names = _used_names(graph) | set(inits)
        spliced_at: dict[int, list] = {}
        for index in constant:
            node = graph.node[index]
            taken = "then_branch" if bool(numpy_helper.to_array(inits[node.input[0]]).reshape(-1)[0]) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == taken)
            spliced = _prefixed_branch(branch, f"{node.output[0]}/{taken}/", taken_names)
            spliced.node.extend(helper.make_node("Identity", [src.name], [dst], name=f"{dst}/{taken}/out")
                                for src, dst in zip(spliced.output, node.output))
            taken_names.update(t.name for t in spliced.initializer)
            taken_names.update(o for n in spliced.node for o in n.output if o)
            graph.initializer.extend(spliced.initializer)
            spliced_at[index] = list(spliced.node)
        new_nodes = [n for i, old in enumerate(graph.node) for n in spliced_at.get(i, [old])]
        del graph.node[:]
        graph.node.extend(new_nodes)
        # one fold a round, not one an If: SLANet's 313 constant Ifs folded the whole graph 626 times (220 s)
        model = fold_constants(model, [])
        inlined += len(constant)
    if inlined:
        notes.append(f"inlined {inlined} If node(s) whose condition is a constant")
    return model


def _prefixed_branch(branch: onnx.GraphProto, prefix: str, taken_names: set[str]) -> onnx.GraphProto:
    """A copy of `branch` whose locally defined names carry `prefix` (made unique if needed)."""
    out = onnx.GraphProto()
    out.CopyFrom(branch)
    local = [t.name for t in out.initializer] + [o for n in out.node for o in n.output if o]
    while any(prefix + name in taken_names for name in local):  # the new names only: a scan of every
        prefix = "_" + prefix  # taken name per If made inlining SLANet's 500 Ifs quadratic (27 s)
    rename_all(out, {name: prefix + name for name in local})  # one pass: a body repeated k times stays linear
    for t in out.initializer:
        t.name = prefix + t.name
    for n in out.node:
        n.output[:] = [prefix + o if o else o for o in n.output]
        n.name = prefix + (n.name or n.op_type)
    return out


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every body nested in it, at any depth."""
    yield graph
    for sub in _subgraphs(graph):
        yield from _all_graphs(sub)


def sort_unsorted_top_k(graph: onnx.GraphProto) -> int:
    """Set sorted=1 on every TopK that has sorted=0, in place; how many. ONNX leaves the order of an
    unsorted TopK's k results to the runtime: onnxruntime gives its heap's or its nth_element's,
    ours are sorted (a stable sort, ties by index). The reference that `verify` runs is told to
    sort too, so both give the same values in the same order, which the file allows either way."""
    changed = 0
    for g in _all_graphs(graph):
        for node in g.node:
            if node.op_type == "TopK" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "sorted" and attr.i == 0:
                        attr.i = 1
                        changed += 1
    return changed


def rename_all(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """Point every consumer of each old name (subgraphs included: they see outer names) at its new
    one, all renamed together (a new name is never renamed again), in one pass over the nodes; the
    graph's outputs too."""
    if not renamed:
        return
    for node in graph.node:
        if any(name in renamed for name in node.input):
            node.input[:] = [renamed.get(name, name) for name in node.input]
    for o in graph.output:
        o.name = renamed.get(o.name, o.name)
    for sub in _subgraphs(graph):
        _rename_uses_in_body(sub, renamed)


def _rename_uses_in_body(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """Inside a nested body only the uses of outer names change; its outputs are its own."""
    for node in graph.node:
        if any(name in renamed for name in node.input):
            node.input[:] = [renamed.get(name, name) for name in node.input]
    for sub in _subgraphs(graph):
        _rename_uses_in_body(sub, renamed)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
    for sub in _subgraphs(graph):
        used |= _used_names(sub)
    return used


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph) | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def upgrade_opset(model: onnx.ModelProto, target: int, notes: list[str]) -> onnx.ModelProto:
    """Upgrade an old ai.onnx opset with ONNX's own version converter; keep the model on failure."""
    source = default_opset(model)
    if source == 0 or source >= target:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(upgraded)
    except Exception as err:  # the converter's C++ adapters raise assorted exception types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        notes.append(f"could not upgrade opset {source} to {target} ({reason}); importing at opset {source}")
        return model
    notes.append(f"upgraded ai.onnx opset {source} to {target} with onnx.version_converter")
    _restore_node_names(model, upgraded)
    if source < 11:
        _keep_old_resize_coordinates(upgraded)
    return upgraded


def _keep_old_resize_coordinates(upgraded: onnx.ModelProto) -> None:
    """Upsample (opsets 7-9) and Resize-10 map output pixels to input ones as x / scale (asymmetric),
    the nearest pixel onnxruntime's opset-10 way (floor when enlarging, ceiling when shrinking). The
    version converter's Resize has no coordinate_transformation_mode, which at opset 11+ means
    half_pixel: a linear Upsample came out shifted by half a pixel against onnxruntime. A model
    upgraded from below opset 11 had no such attribute to lose, so every Resize without one gets the
    old meaning back (nearest_mode "simple" is that rounding, `converters/resize._nearest`; the file
    onnxruntime verifies against is the original)."""
    for graph in _all_graphs(upgraded.graph):
        for node in graph.node:
            attrs = {a.name: a for a in node.attribute}
            if node.op_type != "Resize" or "coordinate_transformation_mode" in attrs:
                continue
            node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
            mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
            if mode == "nearest" and "nearest_mode" not in attrs:
                node.attribute.append(onnx.helper.make_attribute("nearest_mode", "simple"))


def _restore_node_names(original: onnx.ModelProto, upgraded: onnx.ModelProto) -> None:
    """The version converter rebuilds the nodes it adapts (Upsample-9 becomes Resize) without their
    names; a node making the same output tensor gets its file's name back, so errors name it."""
    names = {out: node.name for graph in _all_graphs(original.graph) for node in graph.node if node.name
             for out in node.output if out}
    for graph in _all_graphs(upgraded.graph):
        for node in graph.node:
            if not node.name:
                node.name = next((names[out] for out in node.output if out in names), "")


#: the doc_string of a value_info entry shape inference added here (not the file's): onnxruntime sizes its
#: buffers by such hints, and ONNX's rules can be wrong where onnxruntime's are not (verify leaves them out)
INFERRED = "onnx_attr: inferred at import"


def infer_shapes(model: onnx.ModelProto, notes: list[str], *, in_place: bool = False) -> onnx.ModelProto:
    """Shape inference that keeps symbolic dims (e.g. the batch axis) symbolic.

    Inference runs on the model's skeleton (large weights as dims and type only); with
    `in_place` the inferred graph is written back into `model` around its own weights, so they
    are never copied."""
    light, heavy = skeleton(model, _dims_only)
    if light.ByteSize() >= 2**31 - 1:  # the skeleton's size: ByteSize serializes, so never the weights'
        notes.append("model graph is over 2 GiB even without its weights: skipped shape inference")
        return model
    try:
        declared = {v.name for g in _graphs(model.graph) for v in g.value_info if v.doc_string != INFERRED}
        inferred = isolated.infer_shapes(light, strict_mode=False, data_prop=True)
        for graph in _graphs(inferred.graph):  # the hints inference added, told from the file's own (verify)
            for value in graph.value_info:
                if value.name not in declared:
                    value.doc_string = INFERRED
        if not heavy:
            return inferred
        if in_place:  # every graph field but the weights comes from the inferred skeleton
            result = model
            for desc, _ in list(result.graph.ListFields()):
                if desc.name != "initializer":
                    result.graph.ClearField(desc.name)
            copy_fields(inferred.graph, result.graph, "initializer")
            return result
        result = top_level(model)  # the weights come back from the model itself: one copy, not three
        del inferred.graph.initializer[:]
        result.graph.CopyFrom(inferred.graph)
        result.graph.initializer.extend(model.graph.initializer)
        return result
    except Exception as err:  # inference failures must not block an otherwise importable model
        notes.append(f"shape inference failed ({str(err).strip().splitlines()[0]}); continuing without it")
        return model


def _dims_only(tensor: onnx.TensorProto, stub: onnx.TensorProto) -> None:
    """Shape inference reads a weight's name, type and dims, never its values."""
    stub.dims.extend(tensor.dims)
