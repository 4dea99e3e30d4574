"""Prove the imported module computes what onnxruntime computes, or show where it does not."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import onnx
import torch

from .convert import run_recording
from .converters.arithmetic import integer_overflows
from .read import external_folder
from .errors import ReferenceRuntimeError
from .inputs import arrange, sample_inputs


@dataclass
class OutputCheck:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float  # over elements whose reference magnitude is at least atol
    passed: bool


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

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def format(self) -> str:
        lines = [f"verify against onnxruntime (CPU) on {self.inputs}; pass if |ours-ort| <= "
                 f"{self.atol:g} + {self.rtol:g}*|ort|"]
        for o in self.outputs:
            lines.append(f"  {'ok  ' if o.passed else 'FAIL'} {o.name} {o.shape}: max abs err "
                         f"{o.max_abs:.3e}, max rel err {o.max_rel:.3e}")
        if self.divergence is not None:
            d = self.divergence
            lines.append(f"  first divergent node: {d.node!r} (op {d.op_type}), tensor {d.tensor!r}, "
                         f"max abs err {d.max_abs:.3e}{'; ' + d.detail if d.detail else ''}")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def verify(model, inputs: Any = None, *, atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0,
           locate: bool = True) -> VerifyReport:
    """Run onnxruntime and the imported module on the same inputs and compare every output.

    Without inputs, a seeded random sample of the declared shapes is used. When an output
    fails and `locate` is set, both are re-run keeping every intermediate tensor to name the
    first ONNX node whose output diverges.
    """
    if inputs is None:
        arrays = sample_inputs(model.inputs, seed)
        source = f"a random sample (seed {seed})"
    else:
        arrays = arrange(inputs, model.inputs)
        source = "the given inputs"
    tensors = model.prepare(arrays)
    feeds = {spec.name: t.detach().cpu().numpy() for spec, t in zip(model.inputs, tensors)}
    with integer_overflows() as overflows:
        ours = [_numpy(t) for t in model.run(tensors)]
    if overflows:  # onnxruntime's int64 Div kernel dies on SIGFPE here; it must not take us with it
        raise ReferenceRuntimeError(
            f"these inputs make the model divide {overflows[0]} (int64 overflow): onnx-attr gives INT64_MIN, "
            "as two's complement wraps, but onnxruntime's CPU kernel kills the process on it, so it cannot be "
            "the reference; verify with other inputs")
    names = [o.name for o in model.outputs]
    theirs = [_numpy(t) for t in run_onnxruntime(model.reference_model, feeds, names)]
    checks = [_compare(n, a, b, atol, rtol) for n, a, b in zip(names, ours, theirs)]
    report = VerifyReport(checks, atol, rtol, source)
    if not report.passed and locate:
        report.divergence = locate_divergence(model, tensors, feeds, atol, rtol)
    return report


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: Sequence[str],
                    optimize: bool = True) -> list[np.ndarray]:
    """onnxruntime on the CPU provider, named explicitly so no odd provider is picked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    folder = external_folder(model)
    if folder is not None:  # weights left in their files: onnxruntime reads them there
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(list(outputs), feeds)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ReferenceRuntimeError(
            f"onnxruntime could not run the model, so it cannot be verified: {str(err).strip()[:500]}"
        ) from err


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
    big = np.abs(b) >= atol
    max_rel = float((diff[big] / np.abs(b[big])).max()) if big.any() else 0.0
    passed = bool(np.all(diff <= atol + rtol * np.nan_to_num(np.abs(b), nan=0.0)))
    return float(diff.max()), max_rel, passed


def _compare(name: str, ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    if ours.shape != ref.shape:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), False)
    max_abs, max_rel, passed = _errors(ours, ref, atol, rtol)
    return OutputCheck(name, list(ref.shape), max_abs, max_rel, passed)


def locate_divergence(model, tensors: Sequence[torch.Tensor], feeds: dict[str, np.ndarray],
                      atol: float, rtol: float) -> Optional[Divergence]:
    """Compare every intermediate tensor the two share, in ONNX graph order."""
    ours = run_recording(model.module, *tensors)
    reference = model.reference_model
    graph = reference.graph
    wanted = [name for node in graph.node for name in node.output if name and name in ours]
    probe = onnx.ModelProto()
    probe.CopyFrom(reference)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in existing)
    try:
        values = dict(zip(wanted, run_onnxruntime(probe, feeds, wanted, optimize=False)))
    except ReferenceRuntimeError:
        return None
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name not in values or not isinstance(ours[name], torch.Tensor):
                continue
            a, b = _numpy(ours[name]), values[name]
            label = node.name or f"{node.op_type}#{index}"
            if a.shape != b.shape:
                return Divergence(label, node.op_type, name, float("inf"),
                                  f"shape {list(a.shape)} here, {list(b.shape)} in onnxruntime")
            max_abs, _, passed = _errors(a, b, atol, rtol)
            if not passed:
                return Divergence(label, node.op_type, name, max_abs)
    return None
