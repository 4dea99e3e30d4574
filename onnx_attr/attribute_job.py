"""`onnx-attr attribute`: attribute the inputs of one .npz, or of a folder/glob of them, and write
the results atomically, with the settings that made them.

One input file writes into `out`; several write one result folder each, named from the input's
path so that different inputs never share one (`index.json` maps each input to its folder). Every
`report.json` carries a manifest (model sha256, method, target, baseline, options, versions, and
the input file's sha256): `resume` skips a result only when its manifest is this run's, redoes it
when only its input file changed, and refuses when it was made with other settings. A result
folder holds `attributions.npz` and `report.json` of the same run: the report, written last,
records the sha256 of the attributions, and the output folder is locked while a run writes.
One bad input among many becomes an error entry in `index.json`; the others go on.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence
from urllib.parse import quote

import numpy as np

from .errors import InputError, OnnxAttrError, OutputError
from .fileio import FolderLock, atomic_write, regular_file, remove_leftover_temporaries, write_json
from .manifest import build_manifest, differences, file_sha256
from .names import read_feature_names  # noqa: F401  (kept importable from here)
from .progress import progress

if TYPE_CHECKING:
    from .visualize import PictureOptions

#: CLI method name -> (how reports name it, factory of the explainer).
METHOD_TITLES = {"deeplift": "DeepLift", "deepliftshap": "DeepLiftShap", "integratedgradients": "IntegratedGradients",
                 "revealcancel": "DeepLift (RevealCancel rule)"}
#: Examples attributed per pass by default: small enough that progress shows and memory stays flat.
DEFAULT_BATCH_SIZE = 16
#: Folder names longer than this are shortened (with a hash of the full name, so they stay unique).
MAX_FOLDER_NAME = 180


def make_explainer(model, method: str, gradient_fallback: bool = False):
    from .methods import DeepLift, DeepLiftShap, IntegratedGradients

    if method == "deeplift":
        return DeepLift(model, gradient_fallback=gradient_fallback)
    if method == "deepliftshap":
        return DeepLiftShap(model, gradient_fallback=gradient_fallback)
    if method == "integratedgradients":
        return IntegratedGradients(model)
    if method == "revealcancel":
        return DeepLift(model, rule="revealcancel", gradient_fallback=gradient_fallback)
    raise InputError(f"unknown method {method!r}; available: {sorted(METHOD_TITLES)}")


def parse_target(text: Optional[str]) -> Any:
    """'3' -> 3, '3,1,4' -> [3, 1, 4], '2:5' -> (2, 5) (an output of rank > 2), None -> None.
    Negative indices count from the end, as in numpy (resolved against the output's shape)."""
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


def _resolve_negative(target: Any, shape: Sequence[int]) -> Any:
    """Negative class (or position) indices made positive against the output's non-batch axes."""
    def one(value: int, size: int) -> int:
        return value + size if -size <= value < 0 else value

    if isinstance(target, int):
        return one(target, shape[1]) if len(shape) >= 2 else target
    if isinstance(target, tuple):
        return tuple(one(v, s) for v, s in zip(target, shape[1:]))
    if isinstance(target, list):
        return [one(v, shape[1]) if len(shape) >= 2 else v for v in target]
    return target


def _has_negative(target: Any) -> bool:
    values = target if isinstance(target, (list, tuple)) else [target]
    return any(isinstance(v, int) and v < 0 for v in values)


def resolve_baseline_spec(spec: Optional[str], method: str) -> str:
    """The baseline spec a method runs with: zeros by default, except for DeepLiftShap, which
    averages over a distribution and has no meaningful default."""
    if spec is None:
        if method == "deepliftshap":
            raise InputError("--method deepliftshap averages over a distribution of baselines: give one with "
                             "--baseline bg.npz (rows of typical inputs, e.g. a sample of the training data)")
        return "zeros"
    if spec not in ("zeros", "mean") and Path(spec).suffix != ".npz":
        raise InputError(f"--baseline {spec!r}: use zeros, mean, or an .npz file of baselines")
    return spec


def _baseline(spec: str, model, inputs: dict[str, np.ndarray], method: str) -> Any:
    if spec == "zeros":
        if method == "deepliftshap":  # a distribution of one all-zero row
            return {k: np.zeros_like(v[:1]) for k, v in inputs.items()}
        return None
    if spec == "mean":
        return {k: v.mean(0, keepdims=True).astype(v.dtype) for k, v in inputs.items()}
    from .inputs import read_npz

    return read_npz(spec, model.inputs)


def input_files(spec: str) -> list[Path]:
    """One .npz, a folder of them, or a glob pattern; sorted, so runs and resumes agree."""
    import glob

    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npz") if not p.name.startswith("."))
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if not Path(p).is_dir())
    else:
        return [path]
    if not files:
        raise InputError(f"--input {spec!r} matches no .npz file")
    return files


def result_folders(files: Sequence[Path]) -> dict[Path, str]:
    """A folder name per input: its path below the inputs' common folder, with every character
    other than letters, digits and `_.-~` percent-encoded, so names map back to inputs and
    `a b.npz`, `a_b.npz` and `a.b.npz` stay apart. Names that would still meet (a case-insensitive
    file system) are refused."""
    import hashlib

    absolute = [Path(os.path.abspath(f)) for f in files]
    base = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names: dict[Path, str] = {}
    for file, path in zip(files, absolute):
        name = quote(path.relative_to(base).as_posix(), safe="")
        if name.startswith(".") or name == "index.json":
            name = "%2E" + name[1:] if name.startswith(".") else "index%2Ejson"
        if len(name) > MAX_FOLDER_NAME:
            name = name[:MAX_FOLDER_NAME - 17] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
        names[file] = name
    seen: dict[str, Path] = {}
    for file, name in names.items():
        other = seen.setdefault(name.casefold(), file)
        if other != file:
            raise InputError(f"inputs {str(other)!r} and {str(file)!r} would share the result folder {name!r} "
                             "on a case-insensitive file system; rename one of them")
    return names


def prepare_out_dir(out: str | os.PathLike) -> Path:
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise OutputError(f"cannot create {str(out)!r}: a file stands where a folder is needed") from err
    except OSError as err:
        raise OutputError(f"cannot create {str(out)!r}: {err.strerror or err}") from err
    if not folder.is_dir():
        raise OutputError(f"{str(out)!r} exists and is not a folder")
    return folder


def model_fingerprint(model) -> str:
    """sha256 of the model file, or of its serialised graph when it was not loaded from a file."""
    import hashlib

    source = getattr(model, "source", None)
    if source is not None and Path(source).is_file():
        return file_sha256(source)
    return hashlib.sha256(model.onnx_model.SerializeToString()).hexdigest()


def run_attribute(model, *, input_path: str, target: Optional[str], baseline: Optional[str], method: str,
                  output_name: Optional[str], out: str, gradient_fallback: bool = False,
                  resume: bool = False, pictures: Optional["PictureOptions"] = None,
                  batch_size: Optional[int] = None, n_steps: Optional[int] = None,
                  internal_batch_size: Optional[int] = None, options: Optional[dict] = None,
                  quiet: bool = False) -> dict:
    """Attribute one input file (results in `out`) or several (one subfolder each, `index.json`).

    `options` adds settings that changed the model before it got here (`--smooth`, say) to the
    manifest. With `resume`, results whose manifest matches are kept, results of a changed input
    file are redone, and results made with other settings stop the run before anything is written.
    """
    if method not in METHOD_TITLES:
        raise InputError(f"unknown method {method!r}; available: {sorted(METHOD_TITLES)}")
    baseline = resolve_baseline_spec(baseline, method)
    per_method = method_options(method, n_steps, internal_batch_size)
    batch_size = _positive(batch_size, "--batch-size") or DEFAULT_BATCH_SIZE
    files = input_files(input_path)
    many = len(files) > 1 or Path(input_path).is_dir()
    stripped = sorted(o.name for o in model.outputs if o.final_activation is not None and o.final_activation.stripped)
    manifest = build_manifest(
        model_sha256=model_fingerprint(model), method=method, target=target, baseline=baseline,
        baseline_sha256=file_sha256(regular_file(baseline, "--baseline")) if baseline.endswith(".npz") else None,
        output=output_name,
        options={"stripped_final_activations": stripped, "gradient_fallback": gradient_fallback,
                 "batch_size": batch_size, **per_method, **(options or {})})
    manifest = json.loads(json.dumps(manifest))  # as it reads back from report.json
    folder = prepare_out_dir(out)
    with FolderLock(folder):
        remove_leftover_temporaries(folder, depth=1 if many else 0)
        job = _Job(model, make_explainer(model, method, gradient_fallback), manifest, method, target, baseline,
                   output_name, pictures, batch_size, per_method, quiet)
        if not many:
            return job.single(files[0], folder, resume)
        return job.folder_run(files, folder, resume)


def method_options(method: str, n_steps: Optional[int], internal_batch_size: Optional[int]) -> dict:
    if method != "integratedgradients":
        given = [f for f, v in (("--n-steps", n_steps), ("--internal-batch-size", internal_batch_size)) if v is not None]
        if given:
            raise InputError(f"{' and '.join(given)} apply to --method integratedgradients only")
        return {}
    return {"n_steps": _positive(n_steps, "--n-steps") or 50,
            "internal_batch_size": _positive(internal_batch_size, "--internal-batch-size")}


def _positive(value: Optional[int], name: str) -> Optional[int]:
    if value is not None and value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")
    return value


class _Job:
    """The settings of one run, applied to each input file in turn."""

    def __init__(self, model, explainer, manifest: dict, method: str, target: Optional[str], baseline: str,
                 output_name: Optional[str], pictures: Optional["PictureOptions"], batch_size: int,
                 method_options: dict, quiet: bool):
        self.model, self.explainer, self.manifest = model, explainer, manifest
        self.method, self.target, self.baseline, self.output_name = method, target, baseline, output_name
        self.pictures, self.batch_size = pictures, batch_size
        self.method_options, self.quiet = method_options, quiet
        self.output_index = explainer._output_index(output_name)

    # -- one file -------------------------------------------------------------------------------------------------

    def single(self, file: Path, folder: Path, resume: bool) -> dict:
        input_sha = file_sha256(regular_file(file, "input file"))
        if resume:
            state, diffs = result_state(folder, self.manifest, input_sha)
            if state == "other settings":
                raise InputError(_refusal(folder, [(file.name, diffs)]))
            if state == "finished":
                report = json.loads((folder / "report.json").read_text())
                report["resumed"] = "finished earlier: kept"
                return {**report, "_delta": np.asarray(report.get("convergence_delta") or [0.0])}
        return self.attribute_file(file, input_sha, folder, progress_bar=True)

    # -- a folder of files -------------------------------------------------------------------------------------------

    def folder_run(self, files: list[Path], folder: Path, resume: bool) -> dict:
        names = result_folders(files)
        plan = []
        conflicts = []
        for file in files:
            sub = folder / names[file]
            try:
                input_sha = file_sha256(regular_file(file, "input file"))
            except (OnnxAttrError, OSError) as err:
                plan.append((file, sub, None, "unreadable", str(err)))
                continue
            state, diffs = result_state(sub, self.manifest, input_sha) if resume else ("missing", [])
            if state == "other settings":
                conflicts.append((file.name, diffs))
            plan.append((file, sub, input_sha, state, None))
        if conflicts:
            raise InputError(_refusal(folder, conflicts))
        results: dict[str, dict] = {}
        deltas: list[float] = []
        bar = progress(len(files), "input", METHOD_TITLES[self.method], self.quiet)
        try:
            for file, sub, input_sha, state, error in plan:
                entry: dict[str, Any] = {"folder": names[file]}
                if state == "finished":
                    entry["status"] = "finished earlier"
                elif error is not None:
                    entry.update(status="failed", error=error)
                else:
                    try:
                        report = self.attribute_file(file, input_sha, prepare_out_dir(sub))
                    except OnnxAttrError as err:
                        (sub / "report.json").unlink(missing_ok=True)
                        entry.update(status="failed", error=str(err))
                    else:
                        entry["status"] = "redone: input changed" if state == "input changed" else "computed"
                        deltas.append(float(np.abs(report.pop("_delta")).max(initial=0.0)))
                        if report.get("warnings"):
                            entry["warnings"] = report["warnings"]
                results[file.name] = entry
                bar.update(1)
        finally:
            bar.close()
        summary = {
            "inputs": [f.name for f in files],
            "computed": [n for n, e in results.items() if e["status"] in ("computed", "redone: input changed")],
            "skipped_as_finished": [n for n, e in results.items() if e["status"] == "finished earlier"],
            "failed": [n for n, e in results.items() if e["status"] == "failed"],
            "with_warnings": [n for n, e in results.items() if e.get("warnings")],
            "results": results,
            "method": METHOD_TITLES[self.method],
            "manifest": self.manifest,
            "versions": self.manifest["versions"],
        }
        write_json(folder / "index.json", summary)
        return {**summary, "_delta": np.asarray(deltas or [0.0]), "many": True}

    # -- the work ------------------------------------------------------------------------------------------------------

    def attribute_file(self, file: Path, input_sha: str, folder: Path, progress_bar: bool = False) -> dict:
        from .inputs import read_npz
        from .input_files import InputCastWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputCastWarning)
            inputs = read_npz(file, self.model.inputs)
        input_warnings = [str(w.message) for w in caught if issubclass(w.category, InputCastWarning)]
        for text in input_warnings:
            warnings.warn(text, InputCastWarning, stacklevel=2)
        tapped = set(getattr(self.explainer, "embedded_inputs", ()))  # token ids attributed at their embedding
        attributed = {s.name: inputs[s.name] for s in self.model.inputs
                      if (s.differentiable or s.name in tapped) and s.name in inputs}
        extra = {k: v for k, v in inputs.items() if k not in attributed}
        if not attributed:
            usable = [s.name for s in self.model.inputs if s.differentiable or s.name in tapped]
            if usable:
                raise InputError(f"{str(file)!r} holds none of the model's attributable inputs {usable}")
            described = ", ".join(f"{s.name!r} ({s.dtype})" for s in self.model.inputs)
            raise InputError(f"no input of this model can be attributed: its inputs are {described}, and none is "
                             "floating or feeds an embedding lookup (a Gather of a constant table); attribute an "
                             "inner tensor from the Python API (LayerIntegratedGradients, onnx_attr.tensor_as_input)")
        first = np.asarray(next(iter(attributed.values())))
        chosen, source = self._target(inputs, first.shape[0] if first.ndim else 0)
        baselines = _baseline(self.baseline, self.model, attributed, self.method)
        if isinstance(baselines, dict):
            baselines = {k: v for k, v in baselines.items() if k in attributed}
        attributions, delta, method_report = self._attribute_in_batches(attributed, extra, baselines, chosen,
                                                                        progress_bar, file.name)
        verification = getattr(self.model, "smoothed_from", self.model).verify(inputs)  # the import itself
        report = {
            **method_report,
            "method": METHOD_TITLES[self.method],
            "target": chosen,
            "target_source": source,
            "baseline": self.baseline,
            "inputs": str(file),
            "verify": verification.to_dict(),
            "notes": list(self.model.notes),
            **({"smoothing": self.model.smoothing} if getattr(self.model, "smoothing", None) else {}),
            **({"input_warnings": input_warnings} if input_warnings else {}),
            **({"n_steps": self.method_options["n_steps"]} if "n_steps" in self.method_options else {}),
            "versions": self.manifest["versions"],
            "manifest": {**self.manifest, "input": {"file": file.name, "sha256": input_sha}},
            "files": ["attributions.npz", "report.json"],
        }
        (folder / "report.json").unlink(missing_ok=True)  # unfinished until the new report lands
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in attributions.items()})
        data = buffer.getvalue()
        report["files"] += self._pictures(folder, attributions, inputs, chosen, delta, report)
        atomic_write(folder / "attributions.npz", lambda tmp: tmp.write_bytes(data))
        report["attributions_sha256"] = _sha256(data)
        write_json(folder / "report.json", report)  # last: its presence marks the folder finished
        report["_delta"] = delta
        return report

    def _pictures(self, folder: Path, attributions: dict, inputs: dict, chosen: Any, delta: Any,
                  report: dict) -> list[str]:
        from .visualize import PictureOptions, write_pictures

        return write_pictures(folder, attributions, inputs, options=self.pictures or PictureOptions(), target=chosen,
                              delta=delta, method=METHOD_TITLES[self.method], baseline=self.baseline,
                              final_activation=report["final_activation"],
                              outputs=lambda: self.model.run(inputs)[self.output_index], stem=_safe)

    def _target(self, inputs: dict, examples: int) -> tuple[Any, str]:
        """The --target given, else a default per example: the predicted class of an [N, C] output,
        the position of the largest value of an output of rank > 2 (its batch axis first, as the
        graph has it), else the output itself (one value per example)."""
        from .batch import output_axis

        chosen = parse_target(self.target)
        if chosen is not None:
            if _has_negative(chosen):
                shape = tuple(self.model.run(inputs)[self.output_index].shape)
                chosen = _resolve_negative(chosen, shape)
                return chosen, f"given ({self.target}, counted from the end)"
            return chosen, "given"
        out = self.model.run(inputs)[self.output_index]
        axis = output_axis(self.model, self.model.prepare(inputs), self.output_index)
        if axis != 0:  # a time-major output, or one that is a single example: its batch first
            out, examples = (out.unsqueeze(0), 1) if axis is None else (out.movedim(axis, 0), out.shape[axis])
        if out.dim() == 2 and out.shape[1] > 1:
            return out.argmax(1).tolist(), "predicted class (argmax)"
        if out.dim() > 2 and out.shape[0] == examples and out[0].numel() > 1:
            return largest_positions(out), "the largest value of the output (argmax over all its elements)"
        return None, "the output itself, one value per example"

    def _attribute_in_batches(self, attributed: dict, extra: dict, baselines: Any, target: Any,
                              progress_bar: bool, name: str) -> tuple[dict, np.ndarray, dict]:
        """Attribute `batch_size` examples per pass (when every input has the batch on axis 0), so
        progress shows and memory stays flat; the per-pass reports are merged into one."""
        n = len(next(iter(attributed.values())))
        arrays = [*attributed.values(), *extra.values()]
        batched = all(a.ndim >= 1 and a.shape[0] == n for a in arrays) and n > self.batch_size
        steps = [slice(s, min(n, s + self.batch_size)) for s in range(0, n, self.batch_size)] if batched \
            else [slice(0, n)]
        per_example_baseline = (self.method != "deepliftshap" and isinstance(baselines, dict)
                                and all(len(b) == n for b in baselines.values()) and n > 1)
        pieces: dict[str, list[np.ndarray]] = {k: [] for k in attributed}
        deltas, reports = [], []
        bar = progress(n, "example", name, self.quiet or not progress_bar, leave=False) if len(steps) > 1 \
            else progress(None, "example", name, True)
        try:
            for part in steps:
                def cut(values: dict) -> dict:
                    return {k: v[part] for k, v in values.items()}

                part_baselines = cut(baselines) if per_example_baseline else baselines
                part_target = target[part] if isinstance(target, list) else target
                kwargs = dict(self.method_options) if self.method == "integratedgradients" else {}
                result, delta = self.explainer.attribute(
                    cut(attributed) if len(steps) > 1 else attributed, part_baselines, target=part_target,
                    additional_forward_args=(cut(extra) if len(steps) > 1 else extra) or None,
                    return_convergence_delta=True, output=self.output_index, **kwargs)
                for k in pieces:
                    pieces[k].append(np.asarray(result[k]))
                deltas.append(np.asarray(delta.detach().cpu() if hasattr(delta, "detach") else delta,
                                         dtype=np.float64).reshape(-1))
                reports.append((part.start, dict(self.explainer.last_report)))
                bar.update(part.stop - part.start)
        finally:
            bar.close()
        attributions = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in pieces.items()}
        return attributions, np.concatenate(deltas), _merged_reports(reports, len(steps) > 1)


def largest_positions(output) -> list[tuple[int, ...]]:
    """Per example (axis 0), the index tuple of its largest element over all the other axes: the
    same form as `--target a:b`, one per example. Ties go to the first in C order."""
    flat = output.reshape(output.shape[0], -1).argmax(1).tolist()
    return [tuple(int(i) for i in np.unravel_index(f, tuple(output.shape[1:]))) for f in flat]


def _merged_reports(reports: list[tuple[int, dict]], several: bool) -> dict:
    """One report for the passes of one file: deltas joined, the worst relative delta, warnings
    (each said once; a delta warning of a later pass names its examples' offset)."""
    merged = dict(reports[-1][1])
    merged["convergence_delta"] = [d for _, r in reports for d in r.get("convergence_delta", [])]
    merged["max_relative_delta"] = max(r.get("max_relative_delta", 0.0) for _, r in reports)
    warnings_: list[str] = []
    for start, report in reports:
        for text in report.get("warnings", []):
            text = f"examples from {start}: {text}" if several and "example(s)" in text else text
            if text not in warnings_:
                warnings_.append(text)
    merged["warnings"] = warnings_
    merged["non_finite"] = next((r["non_finite"] for _, r in reports if r.get("non_finite")), None)
    if any("out_of_memory_retry" in r for _, r in reports):
        merged["out_of_memory_retry"] = any(r.get("out_of_memory_retry") for _, r in reports)
    if several:
        merged["passes"] = len(reports)
    return merged


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def result_state(folder: Path, manifest: dict, input_sha256: str) -> tuple[str, list[str]]:
    """What a result folder holds: 'finished' (this run's settings and input), 'input changed',
    'other settings' (with the differences named), or 'missing' (absent, unfinished or unpaired)."""
    try:
        report = json.loads((folder / "report.json").read_text())
        data = (folder / "attributions.npz").read_bytes()
    except (OSError, ValueError):
        return "missing", []
    if not isinstance(report, dict) or report.get("attributions_sha256") != _sha256(data):
        return "missing", []  # not the pair one run wrote
    recorded = report.get("manifest")
    diffs = differences(recorded, manifest, ignore=("input",))
    if diffs:
        return "other settings", diffs
    if (recorded.get("input") or {}).get("sha256") != input_sha256:
        return "input changed", []
    return "finished", []


def _refusal(folder: Path, conflicts: list[tuple[str, list[str]]]) -> str:
    lines = [f"--resume: {len(conflicts)} result(s) in {str(folder)!r} were made with other settings, and "
             "results of different settings are never mixed:"]
    for name, diffs in conflicts[:3]:
        lines.append(f"  {name}: " + "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""))
    if len(conflicts) > 3:
        lines.append(f"  ... and {len(conflicts) - 3} more")
    lines.append("Rerun with the same settings, give another --out, or drop --resume to recompute every result.")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def short_list(values: Sequence[Any], limit: int = 8) -> str:
    """A list for one summary line: the first few, then how many in all."""
    values = list(values)
    if len(values) <= limit:
        return ", ".join(str(v) for v in values)
    return ", ".join(str(v) for v in values[:limit]) + f", ... ({len(values)} in all)"


__all__ = ["run_attribute", "read_feature_names", "parse_target", "input_files",
           "result_folders", "result_state", "make_explainer", "METHOD_TITLES"]
