"""A statically quantized graph verified quantizer by quantizer, each fed onnxruntime's own values.

At the outputs, a QDQ graph's import is judged against onnxruntime's own spread under a few ulps of
jitter (verify.py): one ulp before a QuantizeLinear becomes a whole step after it, and steps
compound. That spread is wide (tens of output steps on a deep net), so an import error of a percent
in one layer's arithmetic hides inside it. Here each activation quantizer of ours runs on
onnxruntime's values of the quantized tensors before it (teacher forcing: `run_recording`'s
overrides), so what differs is that quantizer's own step alone. Where our float arithmetic and
onnxruntime's round a sum differently, a value on a half flips by one step: a few per million
elements (resnet18 5e-6, mobilenet_v3 4e-7, measured). An import error moves many elements, or
by more than one step, and is named by the first quantizer where it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx
import torch

from onnx_attr.errors import ReferenceRuntimeError

#: a quantizer passes when no element moves by more than this many steps ...
MAX_STEPS = 1
#: ... and at most this fraction of its elements moved, not counting ties (rounding flips: ~1e-6 measured)
MAX_FLIPPED = 1e-3
#: a value this close to a half step (in steps) is a tie that either runtime may round either way: an
#: average or a linear Resize of quantized values lands exactly on halves, and one ulp decides them
TIE = 1e-3
#: a DynamicQuantizeLinear's scale (the range of its input / 255), relative: its input a few ulps off moves
#: it ~1e-7, and an error that scales a whole tensor hides in its integers but not here
SCALE_RTOL = 1e-5
#: ops that quantize inside themselves, out of onnxruntime's sight: a quantizer after one (before any
#: quantizer onnxruntime shows) is not fed onnxruntime's values alone, so it is left to the outputs'
#: check. DynamicQuantizeLSTM requantizes its state every step: ulps compound into steps (voicefilter's
#: d-vector: 5 steps off after three stacked LSTMs, its output within its rounding spread)
HIDDEN_QUANTIZERS = frozenset({"DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention"})


@dataclass
class QuantizerCheck:
    """Every activation quantizer, fed onnxruntime's values of the quantized tensors before it."""

    quantizers: int  # compared (their outputs' elements: `elements`)
    elements: int
    flipped: int  # elements one or more steps from onnxruntime's
    max_steps: float
    worst: Optional[str] = None  # the first quantizer output that fails, else the one with most flips
    worst_detail: str = ""
    passed: bool = True
    after_hidden: int = 0  # quantizers not compared: an op that quantizes out of sight is before them


    def format(self) -> str:
        hidden = (f"{self.after_hidden} after an op that quantizes inside, out of onnxruntime's sight: left to the "
                  "outputs' check") if self.after_hidden else ""
        if not self.quantizers:
            return f"no quantizer fed onnxruntime's values alone ({hidden})"
        head = (f"{self.quantizers} quantizers, each fed onnxruntime's values before it: {self.flipped} of "
                f"{self.elements} elements off by up to {self.max_steps:g} step(s)") + (f"; {hidden}" if hidden else "")
        if self.passed:
            return head + (f" (rounding flips: at most {MAX_STEPS} step, on half steps or under {MAX_FLIPPED:g} of "
                           "the elements)")
        return head + f"; {self.worst!r}: {self.worst_detail} -> an import error there, not rounding"


def activation_quantizers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The main graph's quantizers of a computed tensor (QuantizeLinear, and DynamicQuantizeLinear,
    which sets its scale from the tensor's own range), by integer output, in graph order."""
    constants = {t.name for t in graph.initializer}
    constants.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return {n.output[0]: n for n in graph.node
            if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") and n.input[0] not in constants}


def after_hidden_quantizers(graph: onnx.GraphProto, shown: set[str]) -> set[str]:
    """Tensors downstream of an op in HIDDEN_QUANTIZERS (inside a subgraph too) through no tensor in
    `shown` (those onnxruntime's values replace)."""
    def hides(node: onnx.NodeProto) -> bool:
        return node.op_type in HIDDEN_QUANTIZERS or any(
            hides(inner) for a in node.attribute for g in (*([a.g] if a.HasField("g") else []), *a.graphs)
            for inner in g.node)

    tainted: set[str] = set()
    for node in graph.node:
        if hides(node) or any(name in tainted for name in node.input):
            tainted.update(name for name in node.output if name and name not in shown)
    return tainted


def _ties(node: onnx.NodeProto, ours: dict, where: np.ndarray) -> np.ndarray:
    """Of the elements at `where`, those whose input ours quantized sits on a half step (within TIE),
    where its scale is one number; none otherwise."""
    x, scale = (ours.get(name) for name in (node.input[0], node.output[1] if node.op_type == "DynamicQuantizeLinear"
                                            else node.input[1]))
    if not isinstance(x, torch.Tensor) or not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        return np.zeros(int(where.sum()), bool)
    steps = x.detach().cpu().double().numpy()[where] / float(scale)
    return np.abs(steps - np.floor(steps) - 0.5) <= TIE


def _scale_off(ours, theirs) -> float:
    """How far our dynamic scale is from onnxruntime's, relative (0 where there is none to compare)."""
    if not isinstance(ours, torch.Tensor) or theirs is None or ours.numel() != np.size(theirs):
        return 0.0
    a, b = ours.detach().cpu().double().numpy().reshape(-1), np.asarray(theirs, np.float64).reshape(-1)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float32).tiny), initial=0.0))


def check_quantizers(model, tensors: Sequence[torch.Tensor], feeds: dict[str, np.ndarray]
                     ) -> Optional[QuantizerCheck]:
    """None where there is nothing to compare (no quantizer of ours computes an integer tensor
    onnxruntime names) or onnxruntime cannot run the graph with them as outputs."""
    from onnx_attr.importing.convert import run_recording
    from onnx_attr.importing.verify import reference_values

    nodes = activation_quantizers(model.reference_model.graph)
    names = list(nodes)
    if not names:
        return None
    scales = {name: n.output[1] for name, n in nodes.items() if n.op_type == "DynamicQuantizeLinear"
              and len(n.output) > 1 and n.output[1]}
    try:
        theirs = reference_values(model.reference_model, feeds, names + list(scales.values()))
    except ReferenceRuntimeError:
        return None
    theirs = {n: v for n, v in theirs.items()
              if np.issubdtype(v.dtype, np.integer) or n in scales.values()}  # not float8's
    try:
        with torch.no_grad():
            ours = run_recording(model.module, *tensors, overrides=theirs)
    except Exception:  # noqa: BLE001  (a forward fed onnxruntime's values that fails is no verdict: the outputs judge)
        return None
    check = QuantizerCheck(0, 0, 0, 0.0)
    most = -1
    tainted = after_hidden_quantizers(model.reference_model.graph, set(theirs))
    for name in names:  # graph order: the first failure is where an error enters
        a, b = ours.get(name), theirs.get(name)
        if nodes[name].input[0] in tainted:
            check.after_hidden += 1
            continue
        if not isinstance(a, torch.Tensor) or b is None:
            continue
        a = a.detach().cpu().numpy()
        if a.shape != b.shape:
            detail = f"shape {list(a.shape)} here, {list(b.shape)} in onnxruntime"
            steps, moved, ties = float("inf"), b.size, 0
        else:
            differ = a != b  # most agree: the steps only where they do (no int64 copy of the whole tensor)
            moved = int(np.count_nonzero(differ))
            diff = np.abs(a[differ].astype(np.int64) - b[differ].astype(np.int64))
            steps = float(diff.max(initial=0))
            one = np.zeros_like(differ)
            one[differ] = diff == 1
            ties = int(_ties(nodes[name], ours, one).sum()) if moved else 0
            detail = f"{moved} of {b.size} elements off, by up to {steps:g} step(s)" + (
                f", {ties} of them on a half step" if ties else "")
            off = _scale_off(ours.get(scales.get(name, "")), theirs.get(scales.get(name, "")))
            if off > SCALE_RTOL:  # reported as a step beyond the limit: the scale is part of the quantizer's answer
                detail += f"; its scale {off:.1e} off (relative)"
                steps = max(steps, MAX_STEPS + 1.0)
        check.quantizers += 1
        check.elements += b.size
        check.flipped += moved
        check.max_steps = max(check.max_steps, steps)
        failed = steps > MAX_STEPS or moved - ties > max(1.0, MAX_FLIPPED * b.size)  # one flip in a small one is fine
        if failed and check.passed:
            check.passed, check.worst, check.worst_detail = False, name, detail
        elif check.passed and moved > most:
            most, check.worst, check.worst_detail = moved, name, detail
    return check if check.quantizers or check.after_hidden else None
