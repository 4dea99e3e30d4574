"""`AttributableModel`: the one object that crosses from import to attribution."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import onnx
import torch
from torch import fx, nn

from onnx_attr.importing.budget import Budget
from onnx_attr.errors import BudgetError, ForwardError, is_out_of_memory
from onnx_attr.importing.interpreter import Interpreter
from onnx_attr.importing.inputs import arrange, check_inputs
from onnx_attr.importing.specs import OutputSpec, TensorSpec


class AttributableModel(nn.Module):
    """The imported module plus what the ONNX file declares about it.

    It is an `nn.Module`: `model(x)` runs the imported graph (with the final activation
    stripped when it was), so it can be handed to any PyTorch tool as it is.

    Attributes:
        module: the `torch.fx.GraphModule`; its nodes carry `meta["onnx_node"]` and
            `meta["onnx_tensor"]`, the ONNX node and tensor names.
        inputs, outputs: specs in ONNX order (names, shapes with symbolic dims, dtypes); each
            output spec records the final activation found on it and whether it was stripped.
        onnx_model: the graph that was converted (normalized, possibly opset-upgraded).
        reference_model: the graph onnxruntime runs in `verify` (exact rewrites only, and the
            same strip), so a faulty opset upgrade or converter cannot hide.
        notes: what the normalization passes did, for the user.
    """

    def __init__(
        self,
        module: fx.GraphModule,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[OutputSpec],
        onnx_model: onnx.ModelProto,
        reference_model: onnx.ModelProto,
        notes: Sequence[str] = (),
        source: Optional[Path] = None,
    ):
        super().__init__()
        self.module = module
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.onnx_model = onnx_model
        self.reference_model = reference_model
        self.notes = tuple(notes)
        self.source = source
        #: what the file may make us allocate or repeat; the guards in `module` hold this object,
        #: so raising a limit here (model.budget.max_elements = ...) takes effect on the next run
        self.budget = Budget()

    def forward(self, *args: torch.Tensor) -> Any:
        return self._guarded(self.module, args)

    def _ran(self, args: Sequence[torch.Tensor]) -> None:
        """Remember the input shapes a forward ran on (a few hundred at most): ONNX's shape inference
        cannot abort on those (`importing/isolated.py`), so the batch walk runs it in this process."""
        seen = self.__dict__.setdefault("_shapes_run", set())
        if len(seen) >= 256:
            seen.clear()
        seen.add(_shape_key(args))

    def ran_on(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether a forward of this model has run on inputs of these shapes and dtypes."""
        return _shape_key(tensors) in self.__dict__.get("_shapes_run", ())

    def _guarded(self, call, args: Sequence[torch.Tensor]) -> Any:
        try:
            out = call(*args)
            self._ran(args)  # any forward of the module: the plain one, verify's measuring one
            return out
        except (torch.OutOfMemoryError, BudgetError):  # a budget error names its node already
            raise
        except Exception as err:
            if is_out_of_memory(err):  # the CPU allocator's: fewer rows mend it, a node-by-node re-run would not
                raise
            raise ForwardError(_explain_failure(self.module, args, err)) from err

    def run_unexplained(self, *args: torch.Tensor) -> Any:
        """The forward without `_explain_failure` on an error, for a caller that catches it (the batch
        probe's trial rows): on a large graph the node-by-node re-run costs a whole forward again."""
        out = self.module(*args)
        self._ran(args)
        return out

    def with_module(self, module: fx.GraphModule, inputs: Optional[Sequence[TensorSpec]] = None,
                    outputs: Optional[Sequence[OutputSpec]] = None, notes: Sequence[str] = ()) -> "AttributableModel":
        """A sibling over another graph (a re-cut or substituted copy), same ONNX provenance."""
        sibling = AttributableModel(module, self.inputs if inputs is None else inputs,
                                    self.outputs if outputs is None else outputs, self.onnx_model,
                                    self.reference_model, (*self.notes, *notes), self.source)
        sibling.budget = self.budget  # the same object: the modules' guards hold it
        # the same graph's rows: a batch this one was found to bake in binds the sibling (batch.pass_batch)
        sibling.__dict__["rows_of"] = self
        return sibling

    @property
    def device(self) -> torch.device:
        """Where the weights are, read from the first parameter or buffer.

        Which one that is, is found once per module: the walk over every submodule costs ~80 µs,
        on every call, for graphs whose constants are all buffers. It is read by name each time,
        so `.to()` (which replaces buffers) is seen.
        """
        found = self.__dict__.get("_device_source")
        if found is None or found[0] is not self.module:
            found = (self.module, _first_tensor(self.module))
            object.__setattr__(self, "_device_source", found)  # not a submodule
        if found[1] is None:
            return torch.device("cpu")
        owner, name = found[1]
        tensor = getattr(owner, name, None)
        if not isinstance(tensor, torch.Tensor):  # removed since: look again
            object.__setattr__(self, "_device_source", None)
            return self.device
        return tensor.device

    def prepare(self, inputs: Any, what: str = "input") -> list[torch.Tensor]:
        """Checked tensors on the model's device, from arrays, tensors, a sequence or a dict by name.

        NaN and infinities pass: a forward pass computes what the graph computes on them (as
        onnxruntime does); the attribution methods refuse them in the inputs they attribute. An
        export that fixes its batch takes any number of rows here: `run` and the methods feed them
        in passes of its size."""
        from onnx_attr.importing.batch import batch_axes, fixed_batch

        device = self.device
        values = arrange(inputs, self.inputs, what)
        rows = batch_axes(self.inputs) if fixed_batch(self.inputs) else False
        return [t.to(device) for t in check_inputs(values, self.inputs, what, any_batch=rows, finite=False)]

    def run(self, inputs: Any, magnitudes: Optional[dict[str, float]] = None) -> tuple[torch.Tensor, ...]:
        """Checked forward pass without gradients; always returns a tuple, one entry per output.
        `magnitudes`, when given, is filled with the largest finite |value| of each float ONNX tensor a
        node computes (the weights are measured apart, once, where needed: `verify.constants`)."""
        from onnx_attr.importing.rows import fixed_passes, joined_passes

        def one(args: Sequence[torch.Tensor]) -> tuple:
            out = self(*args) if magnitudes is None else self._run_measuring(args, magnitudes)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

        with torch.no_grad():
            tensors = self.prepare(inputs)
            passes = fixed_passes(self, tensors)
            if passes is None:
                return one(tensors)
            return joined_passes(self, [one(p) for p in passes[0]], passes[1])

    def _run_measuring(self, args: Sequence[torch.Tensor], magnitudes: dict[str, float]) -> Any:
        from onnx_attr.importing.verify import finite_magnitude

        def measure(n: fx.Node, out: Any) -> None:
            if "onnx_tensor" in n.meta and (m := finite_magnitude(out)) is not None:
                name = n.meta["onnx_tensor"]  # the largest over a fixed-batch export's passes
                magnitudes[name] = max(m, magnitudes.get(name, m))

        return self._guarded(lambda *a: run_visiting(self.module, a, measure), args)

    def verify(self, inputs: Any = None, *, atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0,
               locate: bool = True, run: Any = None):
        """Compare with onnxruntime on the same inputs; see `onnx_attr.importing.verify.verify`."""
        from onnx_attr.importing.verify import verify

        return verify(self, inputs, atol=atol, rtol=rtol, seed=seed, locate=locate, run=run)

    def summary(self) -> dict:
        """What the import found: inputs, outputs (with batch axes), opsets, op counts, notes.
        `onnx-attr inspect` adds the DeepLift view (nonlinear nodes, tensors) from the layer above."""
        from onnx_attr.importing.batch import batch_axes, output_batch_axes
        from onnx_attr.importing.inputs import sampling_specs
        from onnx_attr.importing.missing_values import missing_value_inputs

        graph, missing = self.onnx_model.graph, missing_value_inputs(self)
        # free dims a constant weight fixes (a Conv's input channels): what an input of this model must have
        fixed = {s.name: {i: d for i, (d, declared) in enumerate(zip(t.shape, s.shape)) if d != declared}
                 for s, t in zip(self.inputs, sampling_specs(self)) if s.shape is not None and t.shape != s.shape}
        return {
            "source": None if self.source is None else str(self.source),
            "producer": f"{self.onnx_model.producer_name} {self.onnx_model.producer_version}".strip(),
            "ir_version": self.onnx_model.ir_version,
            "opsets": {(o.domain or "ai.onnx"): o.version for o in self.onnx_model.opset_import},
            "file_opsets": {(d or "ai.onnx"): v for d, v in (getattr(self, "file_opsets", None) or {}).items()},
            "inputs": [{**s.to_dict(), "batch_axis": a, "reads_nan_as_missing": s.name in missing,
                        **({"fixed_by_weights": {str(k): v for k, v in sorted(fixed[s.name].items())}}
                           if s.name in fixed else {})}
                       for s, a in zip(self.inputs, batch_axes(self.inputs))],
            "outputs": [{**s.to_dict(), "batch_axis": a}
                        for s, a in zip(self.outputs, output_batch_axes(self.inputs, self.outputs))],
            "op_counts": dict(Counter(n.op_type for n in graph.node).most_common()),
            "notes": list(self.notes),
        }


def run_visiting(module: fx.GraphModule, args: Sequence[Any], visit: Callable[[fx.Node, Any], None]) -> Any:
    """The module's forward node by node, `visit(node, value)` called on each value it holds (the
    inputs and what the nodes compute; the weights apart): one pass that measures, counts or watches."""

    class Visiting(Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if n.op != "get_attr":
                visit(n, out)
            return out

    return Visiting(module).run(*args)


def _explain_failure(module: fx.GraphModule, args: Sequence[torch.Tensor], err: Exception) -> str:
    """Re-run node by node to name the ONNX node where the forward pass breaks."""
    failing: list[fx.Node] = []

    class _Locator(Interpreter):
        def run_node(self, n: fx.Node):
            try:
                return super().run_node(n)
            except Exception:
                failing.append(n)
                raise

    try:
        with torch.no_grad():
            _Locator(module).run(*args)
    except Exception:
        pass
    where = "the imported module"
    if failing and "onnx_node" in failing[0].meta:
        meta = failing[0].meta
        where = f"ONNX node {meta['onnx_node']!r} (op {meta['onnx_op']})"
    shapes = ", ".join(str(list(a.shape)) for a in args if isinstance(a, torch.Tensor))
    said = str(err).split("\n\nWhile executing", 1)[0]  # torch.fx's own trace of the interpreted node: named above
    return f"forward pass failed at {where} on inputs of shape {shapes}: {type(err).__name__}: {said}"


def _first_tensor(module: nn.Module) -> Optional[tuple[nn.Module, str]]:
    """(owning submodule, attribute name) of the first parameter, else the first buffer."""
    for name, _ in itertools.chain(module.named_parameters(), module.named_buffers()):
        path, _, attr = name.rpartition(".")
        return module.get_submodule(path), attr
    return None


def _shape_key(tensors: Sequence[Any]) -> tuple:
    return tuple((tuple(t.shape), str(t.dtype)) if isinstance(t, torch.Tensor) else None for t in tensors)
