"""`onnx-attr attribute`: run DeepLift on an .npz of inputs and write the results, atomically."""

from __future__ import annotations

import glob
import io
import json
import platform
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .errors import InputError, OutputError
from .fileio import atomic_write, write_json
from .inputs import read_npz
from .methods import DeepLift, DeepLiftShap, IntegratedGradients
from .visualize import PictureOptions, write_pictures

#: Methods with baselines and a convergence delta (what the report is built around).
METHODS = {"deeplift": DeepLift, "deepliftshap": DeepLiftShap, "integratedgradients": IntegratedGradients,
           "revealcancel": lambda model, **kw: DeepLift(model, rule="revealcancel", **kw)}


def parse_target(text: Optional[str]) -> Any:
    """'3' -> 3, '3,1,4' -> [3, 1, 4], '2:5' -> (2, 5) (an output of rank > 2), None -> None."""
    if text is None:
        return None
    try:
        if "," in text:
            return [int(t) for t in text.split(",")]
        if ":" in text:
            return tuple(int(t) for t in text.split(":"))
        return int(text)
    except ValueError as err:
        raise InputError(f"--target {text!r} is not an int, a comma-separated list, or an a:b tuple") from err


def _baseline(spec: str, model, inputs: dict[str, np.ndarray]) -> Any:
    if spec == "zeros":  # one explicit row: also a one-row distribution for DeepLiftShap
        return {k: np.zeros_like(v[:1]) for k, v in inputs.items()}
    if spec == "mean":
        return {k: v.mean(0, keepdims=True).astype(v.dtype) for k, v in inputs.items()}
    path = Path(spec)
    if path.suffix != ".npz":
        raise InputError(f"--baseline {spec!r}: use zeros, mean, or an .npz file of baselines")
    return read_npz(path, model.inputs)


def _default_target(model, inputs: dict, output_index: int) -> Any:
    """Explain the predicted class when no target is given (argmax of a [N, C] output)."""
    out = model.run(inputs)[output_index]
    if out.dim() == 2 and out.shape[1] > 1:
        return out.argmax(1).tolist()
    return None


def _versions() -> dict:
    import onnx
    import onnx2torch
    import onnxruntime

    from . import __version__

    return {"onnx_attr": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx2torch": getattr(onnx2torch, "__version__", "?"),
            "numpy": np.__version__, "python": platform.python_version()}


def prepare_out_dir(out: str) -> Path:
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise OutputError(f"cannot create {out!r}: a file stands where a folder is needed") from err
    except OSError as err:
        raise OutputError(f"cannot create {out!r}: {err.strerror or err}") from err
    if not folder.is_dir():
        raise OutputError(f"{out!r} exists and is not a folder")
    return folder


def input_files(spec: str) -> list[Path]:
    """One .npz, a folder of them, or a glob pattern; sorted, so runs and resumes agree."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec))
    else:
        return [path]
    if not files:
        raise InputError(f"--input {spec!r} matches no .npz file")
    return files


def run_attribute(model, *, input_path: str, target: Optional[str], baseline: str, method: str,
                  output_name: Optional[str], out: str, gradient_fallback: bool = False,
                  resume: bool = False, pictures: Optional[PictureOptions] = None) -> dict:
    """One input file: results in `out`. Several (a folder or glob): one subfolder per file, written
    as each finishes; with `resume`, files whose report.json exists are skipped."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    files = input_files(input_path)
    folder = prepare_out_dir(out)
    explainer = METHODS[method](model, gradient_fallback=gradient_fallback)
    job = dict(target=target, baseline=baseline, output_name=output_name, method=method,
               pictures=pictures or PictureOptions())
    if len(files) == 1 and not Path(input_path).is_dir():
        return _attribute_file(model, explainer, files[0], folder, **job)
    done, skipped, reports, flagged = [], [], {}, []
    for file in files:
        sub = folder / _safe(file.stem)
        if resume and _finished(sub):
            skipped.append(file.name)
            continue
        report = _attribute_file(model, explainer, file, prepare_out_dir(str(sub)), **job)
        reports[file.name] = report.pop("_delta")
        done.append(file.name)
        if report.get("warnings"):
            flagged.append(file.name)
    summary = {"inputs": [f.name for f in files], "computed": done, "skipped_as_finished": skipped,
               "with_warnings": flagged, "method": method, "versions": _versions()}
    write_json(folder / "index.json", summary)
    deltas = [float(d.abs().max()) for d in reports.values()]
    return {**summary, "_delta": torch.tensor(deltas or [0.0]), "many": True}


def _finished(folder: Path) -> bool:
    """A result folder is finished once its report.json (written last, atomically) reads back."""
    try:
        json.loads((folder / "report.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def _attribute_file(model, explainer, input_file: Path, folder: Path, *, target: Optional[str], baseline: str,
                    output_name: Optional[str], method: str, pictures: PictureOptions) -> dict:
    inputs = read_npz(input_file, model.inputs)
    output_index = explainer._output_index(output_name)
    tapped = set(getattr(explainer, "embedded_inputs", ()))  # token ids attributed at their embedding
    attributed = {s.name: inputs[s.name] for s in model.inputs
                  if (s.differentiable or s.name in tapped) and s.name in inputs}
    extra = {k: v for k, v in inputs.items() if k not in attributed}
    chosen = parse_target(target)
    if chosen is None:
        chosen = _default_target(model, inputs, output_index)
    baselines = _baseline(baseline, model, attributed)
    if isinstance(baselines, dict):
        baselines = {k: v for k, v in baselines.items() if k in attributed}
    attributions, delta = explainer.attribute(attributed, baselines, target=chosen,
                                              additional_forward_args=extra or None,
                                              return_convergence_delta=True, output=output_index)
    verification = getattr(model, "smoothed_from", model).verify(inputs)  # the import, not the substitution
    report = {
        **explainer.last_report,
        "target": chosen,
        "target_source": "given" if target is not None else "predicted class (argmax)",
        "baseline": baseline,
        "inputs": str(input_file),
        "verify": verification.to_dict(),
        "notes": list(model.notes),
        **({"smoothing": model.smoothing} if getattr(model, "smoothing", None) else {}),
        "versions": _versions(),
        "files": ["attributions.npz", "report.json"],
    }
    report["files"] += write_pictures(folder, attributions, inputs, options=pictures, target=chosen, delta=delta,
                                      method=method, baseline=baseline, final_activation=report["final_activation"],
                                      outputs=lambda: model.run(inputs)[output_index], stem=_safe)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in attributions.items()})
    atomic_write(folder / "attributions.npz", lambda tmp: tmp.write_bytes(buffer.getvalue()))
    write_json(folder / "report.json", report)  # last: its presence marks the folder finished
    report["_delta"] = delta
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
