"""`onnx-attr dataset`: attribute every row of a dataset and write the results as Parquet shards,
each row exactly once.

The sources (sorted) are cut into shards, fixed row ranges of one source each. A shard's rows are
attributed in batches and its result table is committed atomically (temporary file in the same
folder, fsync, rename) as `shard-<index>-<manifest hash>.parquet`: a retried or duplicated task
rewrites the same name with the same rows, so no row is ever added twice, and a killed run leaves
complete shards or none. `manifest.json` records what decides the numbers (model sha256, method,
target, baseline, preprocessing, versions, the sources and the shard plan); `--resume` skips the
shards already committed under that manifest and refuses, naming the settings, when it differs.
A row that cannot be read or attributed (a cell that does not parse, a NaN) becomes an error row;
the run goes on. How the shards are scheduled (the engine, batch size, device) is recorded under
`execution` and does not change the manifest's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from onnx_attr.errors import InputError, OnnxAttrError, OutputError
from onnx_attr.fileio import FolderLock, atomic_write, remove_leftover_temporaries, write_json
from onnx_attr.app.manifest import build_manifest, differences, file_sha256
from onnx_attr.app.preprocess import PixelRangeWarning
from onnx_attr.progress import progress
from onnx_attr.app.readers import (InputOptions, RowReader, Rows, Source, describe_sources, kinds_of,
                                   reading_audio, reading_missing, row_axes, source_files)
from onnx_attr.app.report_html import ReportOptions, input_root, verify_sample, write_report

#: Rows per shard by default: a shard is the unit that is committed, skipped on resume and retried.
DEFAULT_SHARD_ROWS = 1024
DEFAULT_BATCH_SIZE = 64
ATTRIBUTION_DTYPES = ("float32", "float16")
#: Relative convergence delta above which a row is counted in the summary (as the methods warn).
DELTA_TOLERANCE = 1e-4
MANIFEST = "manifest.json"
MEAN_BASELINE = "baseline-mean.npz"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of source `source`; the first row's id is `first_row_id`."""

    index: int
    source: int
    start: int
    stop: int
    first_row_id: int


def plan_shards(sources: Sequence[Source], shard_rows: int) -> list[Shard]:
    """Fixed row ranges of the sources in order; an unreadable source is one shard of one error row."""
    shards: list[Shard] = []
    row_id = 0
    for i, source in enumerate(sources):
        if source.error is not None:
            shards.append(Shard(len(shards), i, 0, 0, row_id))
            row_id += 1
            continue
        for start in range(0, source.rows, shard_rows):
            stop = min(source.rows, start + shard_rows)
            shards.append(Shard(len(shards), i, start, stop, row_id))
            row_id += stop - start
    return shards


def shard_rows_of(shard: Shard) -> int:
    return max(1, shard.stop - shard.start)


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to rebuild the model and explainer on its own (picklable)."""

    model_path: Optional[str]
    strip_final_activation: bool
    device: Optional[str]
    method: str
    target: Optional[str]
    baseline: str
    output_name: Optional[str]
    batch_size: int
    attribution_dtype: str
    gradient_fallback: bool
    n_steps: Optional[int]
    internal_batch_size: Optional[int]
    inputs: InputOptions
    lrp: Optional[dict] = None  # --lrp-rule / --lrp-composite / --lrp-bounds as given (None: not given)
    batch_axis: Optional[int] = None  # the explained output's (--batch-axis), else found as `attribute` finds it
    max_features: Optional[int] = None  # the default method's fallback (FeatureAblation): blocks per input
    features: Optional[str] = None  # --features as given (perturbation methods' blocks; None: the default)


def manifest_hash(manifest: dict) -> str:
    """The hash in every shard's name: of the settings that decide the rows, not of how they ran."""
    decisive = {k: v for k, v in manifest.items() if k != "execution"}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def shard_name(index: int, digest: str) -> str:
    return f"shard-{index:06d}-{digest}.parquet"


def committed_shards(folder: Path, digest: str, shards: Sequence[Shard]) -> set[int]:
    """Shards whose file is there under this manifest's hash with its full row count."""
    import pyarrow.parquet as pq

    done = set()
    for shard in shards:
        path = folder / shard_name(shard.index, digest)
        try:
            if pq.ParquetFile(path).metadata.num_rows == shard_rows_of(shard):
                done.add(shard.index)
        except Exception:  # absent or unreadable: computed again
            continue
    return done


# -- the worker: model and explainer built once, then one shard after another -------------------------------------

class ShardWorker:
    """Attributes shards and commits them. Built once per process (or Ray actor): the model is
    loaded and rewritten once, then reused for every shard."""

    def __init__(self, settings: Settings, sources: Sequence[Source], shards: Sequence[Shard], folder: str,
                 digest: str, model: Any = None, threads: Optional[int] = None):
        from onnx_attr.app.allocator import keep_freed_memory
        from onnx_attr.app.attribute_job import make_explainer, method_options
        from onnx_attr.methods.registry import entry

        if threads is not None:  # a Ray worker: torch's threads as the CPUs it holds, so workers never contend
            import torch

            torch.set_num_threads(threads)
            keep_freed_memory()  # a process of ours (the CLI sets it in its own): see allocator.py
        if model is None:
            from onnx_attr.importing.loader import load

            model = load(settings.model_path, strip_final_activation=settings.strip_final_activation,
                         device=settings.device)
        self.settings, self.sources, self.folder, self.digest = settings, list(sources), Path(folder), digest
        self.shards = list(shards)
        self.model = model
        self.method_options = method_options(settings.method, settings.n_steps, settings.internal_batch_size,
                                             settings.lrp, settings.features)
        self.explainer = make_explainer(model, settings.method, settings.gradient_fallback,
                                        options=self.method_options) if settings.max_features is None else \
            entry(settings.method).cls(model, max_features=settings.max_features)
        self.output_index = self.explainer._output_index(settings.output_name)
        self.reader = RowReader(model.inputs, settings.inputs)
        tapped = set(getattr(self.explainer, "embedded_inputs", ()))  # token ids attributed at their embedding
        from onnx_attr.app.attribute_job import mask_inputs

        masks = set(mask_inputs(model))  # floating masks beside the inputs explained: held, as `attribute` does
        # an input without rows (a 0-d sample rate) is held at its one value, as `attribute` holds it
        self.attributed = [s.name for s in model.inputs if (s.differentiable or s.name in tapped)
                           and s.name not in masks and self.reader.axes.get(s.name) is not None]
        self._baselines: Any = None
        self._blurred_shapes: dict = {}  # row shapes where `--baseline auto` found zeros outside the domain

    def __call__(self, batch: dict) -> dict:
        """Ray Data's `map_batches` entry: a batch of shard indices in, their row counts out."""
        done = [self.run(int(i)) for i in batch["shard"]]
        return {key: np.asarray([d[key] for d in done]) for key in ("shard", "rows", "errors", "above_tolerance")}

    def run(self, index: int) -> dict:
        shard = self.shards[index]
        table = self.table(shard)
        commit_shard(self.folder, shard.index, self.digest, table)
        errors = sum(1 for s in table.column("status").to_pylist() if s != "ok")
        relative = table.column("relative_delta").to_numpy(zero_copy_only=False)
        above = int(np.sum(relative > DELTA_TOLERANCE))  # NaN (error rows) never counts
        return {"shard": shard.index, "rows": table.num_rows, "errors": errors, "above_tolerance": above}

    # -- one shard -----------------------------------------------------------------------------------------------

    def table(self, shard: Shard):
        source = self.sources[shard.source]
        n = shard_rows_of(shard)
        rows = _Results(n)
        if source.error is not None:
            rows.fail(0, source.error)
            return rows.to_table(self, shard, source, {})
        try:
            data = self.reader.read(source, shard.start, shard.stop)
        except OnnxAttrError as err:  # the whole range cannot be fed to the model
            for r in range(n):
                rows.fail(r, str(err))
            return rows.to_table(self, shard, source, {})
        for r, error in enumerate(data.errors):
            if error is not None:
                rows.fail(r, error)
        gaps = set(self.reader.options.missing)  # NaN read as missing values there (readers.reading_missing)
        held = [k for k, v in data.held.items() if not _usable(v, k in gaps)]
        for r in range(n):
            if rows.status[r] is None:
                bad = held + [k for k, v in data.arrays.items() if not _usable(v[r], k in gaps)]
                if bad:
                    rows.fail(r, f"input {bad[0]!r} holds NaN or infinite values")
        good = [r for r in range(n) if rows.status[r] is None]
        size = self.settings.batch_size
        for start in range(0, len(good), size):
            self._attribute(data, good[start:start + size], rows, split_on_error=True)
        return rows.to_table(self, shard, source, data.arrays)

    def _attribute(self, data: Rows, picked: list[int], rows: "_Results", split_on_error: bool) -> None:
        try:
            out = self._explain(self.reader.model_layout({k: v[picked] for k, v in data.arrays.items()}, data.held),
                                len(picked))
        except Exception as err:  # one bad row must not take its batch down: retry the rows one by one
            if split_on_error and len(picked) > 1:
                for r in picked:
                    self._attribute(data, [r], rows, split_on_error=False)
                return
            text = str(err) if isinstance(err, OnnxAttrError) else f"{type(err).__name__}: {err}"
            for r in picked:
                rows.fail(r, f"attribution failed: {text}")
            return
        attributions, delta, prediction, target = out
        import torch

        from onnx_attr.methods.deeplift import output_depth, relative_delta, rounded_in, rounding_magnitude

        dtype = rounded_in(self.model, self.output_index)
        for j, r in enumerate(picked):
            values = {k: v[j] for k, v in attributions.items()}
            if not all(np.isfinite(v).all() for v in values.values()):
                rows.fail(r, "non-finite attributions (the model's output or a rule overflowed for this row)")
                continue
            total = sum(float(np.sum(v, dtype=np.float64)) for v in values.values())
            change = total - float(delta[j])  # delta = sum(attributions) - (f(x) - f(x0))
            value = prediction[j][1]  # f(x) of the explained output; f(x0) = f(x) - change
            # the attributions' own size too: the rounding of a sum of large cancelling terms (relative_delta)
            spread = sum(float(np.abs(v).sum(dtype=np.float64)) for v in values.values())
            outputs = 0.0 if value is None else max(abs(value), abs(value - change))
            magnitude = rounding_magnitude(torch.tensor([outputs]), torch.tensor([spread]))
            relative = float(relative_delta(torch.tensor([float(delta[j])]), torch.tensor([change]), dtype,
                                            magnitude, output_depth(self.model, self.output_index))[0])
            rows.ok(r, values, float(delta[j]), relative, prediction[j], target[j])

    def _call(self, spec: Union[str, dict], attributed: dict, extra: dict, target: Any) -> tuple[dict, np.ndarray]:
        """The method on these rows from the baseline `spec` names, or from the reference `spec` holds."""
        from onnx_attr.app.attribute_job import _baseline, call_method

        if isinstance(spec, dict):
            baselines = spec
        elif spec in ("zeros", "blur"):  # per row: nothing to keep
            baselines = _baseline(spec, self.model, attributed, self.settings.method)
        else:
            if self._baselines is None:
                self._baselines = _baseline(spec, self.model, attributed, self.settings.method)
            baselines = self._baselines
        if isinstance(baselines, dict):
            baselines = {k: v for k, v in baselines.items() if k in attributed}
        return call_method(self.settings.method, self.explainer, attributed, baselines, target=target,
                           extra=extra, output=self.output_index, options=self.method_options)

    def _explain(self, inputs: dict, n: int) -> tuple[dict, np.ndarray, list, list]:
        """Attributions (each input's rows on axis 0), deltas, (predicted class, explained output
        value) and the target, for the `n` rows of `inputs` (as the model takes them).
        The target is `onnx-attr attribute`'s: the --target form (or the output layout's default)
        resolved on this batch's output (`target_forms.resolve`), on the output's batch axis."""
        from onnx_attr.app.attribute_job import (_graph_zeros, differs_at_the_reference, domain_reference, moves,
                                                 zeros_failed)
        from onnx_attr.errors import UnsupportedOpError
        from onnx_attr.methods.registry import entry
        from onnx_attr.deeplift.engine import Targets
        from onnx_attr.app.target_forms import resolve

        attributed = {k: v for k, v in inputs.items() if k in self.attributed}
        extra = {k: v for k, v in inputs.items() if k not in attributed}
        output = self.model.run(inputs)[self.output_index]
        classes = output.dim() == 2 and output.shape[1] > 1
        prediction = output.argmax(1).tolist() if classes else [None] * n
        resolved = resolve(self.settings.target, output, model=self.model, output_index=self.output_index,
                           inputs=inputs, examples=n, batch_axis=self.settings.batch_axis)
        target = resolved.target
        spec = self.settings.baseline
        shape = tuple((k, v.shape[1:]) for k, v in attributed.items())
        if spec == "auto":  # as `attribute` decides it, remembered per row shape once it is blur
            spec = self._blurred_shapes.get(shape, "zeros")
            if spec == "blur":
                spec = domain_reference(self.model, attributed, extra)[0]
            elif entry(self.settings.method).baselines and not entry(self.settings.method).distribution:
                found = _graph_zeros(self.model, attributed)  # raw pixels the graph normalises itself
                if found:
                    spec = {k: found.get(k, np.zeros_like(v[:1])) for k, v in attributed.items()}
        zeros = isinstance(spec, str) and spec == "zeros" and self.settings.baseline == "auto"
        reference = None
        try:
            result, delta = self._call(spec, attributed, extra, target)
            failed = zeros and zeros_failed(self.model, result.values(), attributed, extra,
                                            delta if entry(self.settings.method).delta else None)
        except UnsupportedOpError as err:  # comparisons the zeros take otherwise than the input
            if not zeros or not differs_at_the_reference(err):
                raise
            reference = domain_reference(self.model, attributed, extra)[0]
            if not moves(reference, attributed):
                raise
            failed = True
        if failed:
            self._blurred_shapes[shape] = "blur"
            if reference is None:
                reference = domain_reference(self.model, attributed, extra)[0]
            result, delta = self._call(reference, attributed, extra, target)
        attributions = self.reader.rows_first({k: result[k] for k in attributed})
        explained = Targets(target, n, resolved.detail.get("batch_axis", 0)).select(output).double().tolist()
        return attributions, delta, list(zip(prediction, explained)), row_targets(resolved, n)


def row_targets(resolved: Any, n: int) -> list:
    """What each row's target was, for its Parquet row: the index (an int, or a list for several
    axes), or for a form that picks more (a region, a greedy path, a top position) a dict of its
    per-row facts."""
    detail = resolved.detail
    per_row = {k: detail[k] for k in ("indices", "path", "mask_size", "threshold")
               if isinstance(detail.get(k), list) and len(detail[k]) == n}
    if detail.get("form") == "indices" or (detail.get("form") == "top" and "indices" in per_row
                                           and all(isinstance(i, int) for i in per_row["indices"])):
        from onnx_attr.deeplift.targets import Target

        shown = resolved.target.index if isinstance(resolved.target, Target) else resolved.target
        return [shown[j] if isinstance(shown, list) and len(shown) == n else shown for j in range(n)]
    if detail.get("form") == "output":
        return [None] * n
    return [{"form": detail.get("form"), **{k: v[j] for k, v in per_row.items()}} for j in range(n)]


def _explained(row: np.ndarray, target: Any) -> Optional[float]:
    """The output value a row's attributions explain: at the target, or the output's one value."""
    if target is None:
        return float(row.reshape(-1)[0]) if row.size == 1 else None
    index = tuple(target) if isinstance(target, (list, tuple)) else (target,)
    try:
        return float(row[index])
    except (IndexError, TypeError):
        return None


class _Results:
    """The rows of one shard as they are filled in: status None until attributed or failed."""

    def __init__(self, n: int):
        self.n = n
        self.status: list[Optional[str]] = [None] * n
        self.error: list[Optional[str]] = [None] * n
        self.values: list[Optional[dict]] = [None] * n
        self.delta = [float("nan")] * n
        self.relative = [float("nan")] * n
        self.prediction: list[Any] = [None] * n
        self.output: list[Optional[float]] = [None] * n
        self.target: list[Any] = [None] * n

    def fail(self, r: int, error: str) -> None:
        self.status[r], self.error[r] = "error", error

    def ok(self, r: int, values: dict, delta: float, relative: float, prediction: Any, target: Any) -> None:
        self.status[r], self.values[r] = "ok", values
        self.delta[r], self.relative[r], self.target[r] = delta, relative, target
        self.prediction[r], self.output[r] = prediction

    def to_table(self, worker: ShardWorker, shard: Shard, source: Source, arrays: dict):
        import pyarrow as pa

        dtype = np.dtype(worker.settings.attribution_dtype)
        columns: dict[str, Any] = {
            "row_id": pa.array(range(shard.first_row_id, shard.first_row_id + self.n), pa.int64()),
            "source": pa.array([source.row_name(shard.start + r) if source.error is None else source.name
                                for r in range(self.n)], pa.string()),
            "source_row": pa.array([shard.start + r if source.error is None else None for r in range(self.n)],
                                   pa.int64()),
            "status": pa.array(self.status, pa.string()),
            "error": pa.array(self.error, pa.string()),
            "prediction": pa.array(self.prediction, pa.int64()),
            "output": pa.array(self.output, pa.float64()),
            "target": pa.array([None if t is None else json.dumps(t) if isinstance(t, (list, tuple, dict)) else t
                                for t in self.target],
                               pa.int64() if _int_target(worker.settings.target, self.target) else pa.string()),
            "convergence_delta": pa.array(self.delta, pa.float64()),
            "relative_delta": pa.array(self.relative, pa.float64()),
        }
        several = len(worker.attributed) > 1
        for name in worker.attributed:
            spec_shape = _row_shape(worker, name, arrays, self.values)
            filled = np.zeros((self.n, *spec_shape), dtype=dtype)
            for r, values in enumerate(self.values):
                if values is not None:
                    filled[r] = values[name]
            columns[f"attributions_{name}" if several else "attributions"] = _tensor_column(
                filled, [v is None for v in self.values])
        return pa.table(columns)


def _int_target(spec: Optional[str], targets: Sequence[Any]) -> bool:
    """Row targets are class indices (an int column) when every row's is an int (the predicted class,
    one given int); other forms are JSON text (an index over several axes, a region's or a path's
    facts). A shard without one (every row failed) follows the form: the default or top, or an int."""
    from onnx_attr.app.target_forms import parse_form

    found = [t for t in targets if t is not None]
    if found:
        return all(isinstance(t, int) for t in found)
    form, value = ("top", None) if spec is None else parse_form(spec)
    return form == "top" or (form == "indices" and isinstance(value, int))


def _row_shape(worker: ShardWorker, name: str, arrays: dict, values: list) -> tuple[int, ...]:
    """The attributions' shape per row: the input's, except for token ids (their embedding's)."""
    found = next((v[name].shape for v in values if v is not None), None)
    if found is not None:
        return tuple(found)
    if name in arrays and np.issubdtype(arrays[name].dtype, np.floating):
        return tuple(arrays[name].shape[1:])
    spec = next(s for s in worker.model.inputs if s.name == name)
    dims = spec.shape[1:] if spec.shape else ()
    return tuple(d if isinstance(d, int) else 1 for d in dims)


def _tensor_column(values: np.ndarray, missing: list[bool]):
    """A FixedShapeTensor column (Arrow's canonical tensor extension), null where a row failed."""
    import pyarrow as pa

    shape = list(values.shape[1:]) or [1]
    size = int(np.prod(shape))
    flat = pa.array(values.reshape(-1) if values.size else np.zeros(0, values.dtype))
    storage = pa.FixedSizeListArray.from_arrays(flat, size, mask=pa.array(missing, pa.bool_()))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(flat.type, shape), storage)


def commit_shard(folder: Path, index: int, digest: str, table) -> Path:
    """Write the shard beside its final name, fsync, rename: complete or absent, never half."""
    import pyarrow.parquet as pq

    return atomic_write(Path(folder) / shard_name(index, digest), lambda tmp: pq.write_table(table, tmp))


# -- the driver --------------------------------------------------------------------------------------------------------

def attribute_dataset(model: Any, source: str, out: str, *, method: str = "deeplift", target: Optional[str] = None,
                      baseline: Optional[str] = None, output_name: Optional[str] = None,
                      columns: Optional[Sequence[str]] = None, inputs: Optional[InputOptions] = None,
                      shard_rows: int = DEFAULT_SHARD_ROWS,
                      batch_size: int = DEFAULT_BATCH_SIZE, attribution_dtype: str = "float32",
                      engine: str = "local", resume: bool = False, overwrite: bool = False,
                      gradient_fallback: bool = False, n_steps: Optional[int] = None,
                      internal_batch_size: Optional[int] = None, lrp: Optional[dict] = None,
                      strip_final_activation: bool = True, device: Optional[str] = None,
                      ray_options: Optional[dict] = None,
                      quiet: bool = False, report: Optional[ReportOptions] = None,
                      batch_axis: Optional[int] = None, auto_fallback: bool = False,
                      features: Optional[str] = None) -> dict:
    """Attribute every row of `source` (a file, folder or glob of .npz/.csv/.parquet files, image
    files or text files) into Parquet shards in `out`, and return the run's summary. `model` is a
    path to an .onnx file or a loaded model (a loaded model runs on the local engine only: Ray
    workers load the file themselves). `n_steps`, `internal_batch_size`, `gradient_fallback` and `lrp`
    (`{"rule": ..., "composite": ..., "bounds": "LOW,HIGH"}`) are the method options of `onnx-attr
    attribute`, for the methods whose registry entry takes them; the manifest records them, so a
    resume with others is refused. `inputs` says how images and text become inputs (its
    `columns` is `columns`). `report` (e.g. `ReportOptions()`) writes `report.html` beside the results
    at the end. `target` takes every form of `onnx-attr attribute` (`target_forms`; default: the
    output layout's), `batch_axis` the explained output's batch axis; both are in the manifest.
    `auto_fallback`: the method is the CLI's default, replaced where DeepLift refuses the explained
    output, as `onnx-attr attribute` does (`attribute_job.AUTO_FALLBACK`, in the manifest)."""
    from onnx_attr.app.attribute_job import METHOD_TITLES, method_options, model_fingerprint, prepare_out_dir, \
        resolve_baseline_spec

    if columns:
        inputs = replace(inputs or InputOptions(), columns=tuple(columns))
    settings, loaded = _settings(model, method, target, baseline, output_name, inputs, shard_rows, batch_size,
                                 attribution_dtype, engine, gradient_fallback, n_steps, internal_batch_size,
                                 strip_final_activation, device, batch_axis)
    settings = replace(settings, lrp=dict(lrp) if lrp else None, features=features)
    per_method = method_options(method, n_steps, internal_batch_size, lrp, features)
    resolve_baseline_spec(baseline, method)
    if loaded is None:
        from onnx_attr.importing.loader import load

        loaded = load(settings.model_path, strip_final_activation=strip_final_activation, device=device)
    fell_back = None
    if auto_fallback and method == "deeplift" and not gradient_fallback:
        from onnx_attr.app.attribute_job import AUTO_FALLBACK, FALLBACK_FEATURES, _explainer_or_fallback

        _, fell_back = _explainer_or_fallback(loaded, method, True, False, None, per_method, output_name, quiet)
        if fell_back:
            method = AUTO_FALLBACK
            settings = replace(settings, method=method, baseline=resolve_baseline_spec(baseline, method),
                               max_features=FALLBACK_FEATURES)
            per_method = method_options(method, n_steps, internal_batch_size, lrp)
    # empty cells as missing values where the model reads them and the method explains them
    from onnx_attr.methods.registry import entry

    settings = replace(settings, inputs=reading_audio(reading_missing(settings.inputs, loaded, entry(method).cls), loaded))
    _check_baseline_rows(settings, loaded)
    _check_target(settings, loaded)
    files = source_files(source, settings.inputs.text is not None)
    preprocessing = _preprocessing(settings.inputs, loaded.inputs, files)
    sources = describe_sources(files, loaded.inputs, settings.inputs)
    shards = plan_shards(sources, shard_rows)
    mean = _dataset_mean(loaded, settings, sources, shards, quiet) if settings.baseline == "mean" else None
    stripped = sorted(o.name for o in loaded.outputs if o.final_activation is not None and o.final_activation.stripped)
    from onnx_attr.app.attribute_job import mask_inputs
    from onnx_attr.importing.input_files import InputWarning

    masks = mask_inputs(loaded)
    if masks:
        warnings.warn(f"input(s) {masks} held as given, not attributed: floating masks beside the inputs explained "
                      "(as `onnx-attr attribute` holds them; the manifest's held_inputs says so)", InputWarning,
                      stacklevel=2)
    manifest = build_manifest(
        model_sha256=model_fingerprint(loaded), method=method, target=target, baseline=settings.baseline,
        baseline_sha256=file_sha256(settings.baseline) if settings.baseline.endswith(".npz") else
        mean[1] if mean is not None else None,
        output=output_name,
        options={"stripped_final_activations": stripped, "gradient_fallback": gradient_fallback,
                 "attribution_dtype": attribution_dtype, **per_method,
                 **({"method_fallback": fell_back} if fell_back else {}),
                 **({"batch_axis": batch_axis} if batch_axis is not None else {}),
                 **({"held_inputs": masks} if masks else {})})
    if mean is not None:
        manifest["baseline"]["rows_averaged"] = mean[2]
    manifest["preprocessing"] = {
        "columns": settings.inputs.describe_columns(),
        **preprocessing,
        "inputs": [s.to_dict() for s in loaded.inputs],
        "cast": "each input converted to the model's dtype; rows with NaN/Inf are error rows"
                + (" (but NaN in an input of empty_cells: a missing value)" if settings.inputs.missing else "")}
    manifest["dataset"] = {"sources": [s.to_dict() for s in sources], "shard_rows": shard_rows,
                           "rows": shards[-1].first_row_id + shard_rows_of(shards[-1]) if shards else 0,
                           "shards": [[s.source, s.start, s.stop] for s in shards]}
    manifest["execution"] = {"engine": engine, "batch_size": batch_size, "device": device or "cpu",
                             **({"ray": ray_options} if engine == "ray" else {}),
                             "model": settings.model_path, "input_root": input_root(sources),
                             **({"tokenizer": os.path.abspath(settings.inputs.text.tokenizer)}
                                if settings.inputs.text is not None else {})}  # where the report reads it again
    manifest = json.loads(json.dumps(manifest))  # as it reads back from manifest.json
    digest = manifest_hash(manifest)
    folder = prepare_out_dir(out)
    with FolderLock(folder):
        remove_leftover_temporaries(folder, depth=0)
        _check_earlier_run(folder, manifest, resume, overwrite)
        write_json(folder / MANIFEST, {**manifest, "hash": digest})
        if mean is not None:  # the workers read the mean row as a baseline file, as they read a user's
            path = atomic_write(folder / MEAN_BASELINE, lambda tmp: tmp.write_bytes(mean[0]))
            settings = replace(settings, baseline=str(path))
        done = committed_shards(folder, digest, shards) if resume else set()
        pending = [s for s in shards if s.index not in done]
        total_rows = manifest["dataset"]["rows"]
        started = time.monotonic()
        if engine == "ray":
            from onnx_attr.app.ray_engine import run_on_ray

            counts = run_on_ray(settings, sources, shards, pending, str(folder), digest, ray_options or {}, quiet)
        else:
            counts = _run_local(ShardWorker(settings, sources, shards, str(folder), digest, loaded),
                                pending, sum(shard_rows_of(s) for s in shards if s.index in done), total_rows,
                                METHOD_TITLES[method], quiet)
        seconds = time.monotonic() - started
        summary = _summary(folder, digest, shards, done, counts, seconds, total_rows)
        if report is not None:
            summary["verify"] = verify_sample(loaded, sources, settings.inputs)
        write_json(folder / SUMMARY, summary)
        if report is not None:  # the shards are committed: a report that fails costs the page, not the results
            try:
                summary["report"] = str(write_report(folder, report))
            except (OnnxAttrError, OSError) as err:
                summary["report_error"] = (f"the results are complete, but the report could not be written ({err}); "
                                           f"rebuild it with `onnx-attr report {folder}`")
    return summary


def _preprocessing(options: InputOptions, specs, files) -> dict:
    """The image / text preprocessing of these files; every shard of text needs one token count."""
    recorded = options.record(specs, kinds_of(files))
    for note in options.notes(specs, kinds_of(files)):
        warnings.warn(note, PixelRangeWarning, stacklevel=2)
    if "text" in recorded and recorded["text"]["length"] is None:
        raise InputError("the model's token input has no fixed length, and every row of a dataset needs the same "
                         "one: give --max-length N (tokens, padded and truncated to it)")
    if "audio" in recorded and len(next(s for s in specs if s.name == recorded["audio"]["input"]).shape or ()) == 1:
        raise InputError(f"input {recorded['audio']['input']!r} takes one clip's samples [T] without a batch axis, so "
                         "a dataset's rows cannot be stacked for it: explain each file with `onnx-attr attribute`")
    return recorded


def _settings(model, method, target, baseline, output_name, inputs, shard_rows, batch_size, attribution_dtype,
              engine, gradient_fallback, n_steps, internal_batch_size, strip, device,
              batch_axis: Optional[int] = None) -> tuple[Settings, Any]:
    from onnx_attr.app.attribute_job import resolve_baseline_spec
    from onnx_attr.methods.registry import dataset_methods
    from onnx_attr.app.target_forms import parse_form

    if method not in dataset_methods():
        raise InputError(f"unknown method {method!r} for a dataset job (layer and neuron methods do not give one "
                         f"value per input column); available: {sorted(dataset_methods())}")
    if target is not None:
        parse_form(target)  # any form `onnx-attr attribute` takes; one per example is refused on the output's rank
    if batch_axis is not None and (isinstance(batch_axis, bool) or not isinstance(batch_axis, int) or batch_axis < 0):
        raise InputError(f"--batch-axis must be an int >= 0, got {batch_axis!r}")
    spec = resolve_baseline_spec(baseline, method)
    for name, value in (("--shard-rows", shard_rows), ("--batch-size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if attribution_dtype not in ATTRIBUTION_DTYPES:
        raise InputError(f"--attribution-dtype {attribution_dtype!r}: use one of {ATTRIBUTION_DTYPES}")
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: use local or ray")
    loaded = None if isinstance(model, (str, Path)) else model
    path = str(model) if isinstance(model, (str, Path)) else (str(model.source) if model.source else None)
    if engine == "ray" and (loaded is not None and getattr(loaded, "smoothed_from", None) is not None or path is None):
        raise InputError("--engine ray loads the model from its .onnx file on each worker; give the file's path "
                         "(a model changed in memory, e.g. smoothed, runs with --engine local)")
    settings = Settings(path, strip, device, method, target, spec, output_name, batch_size, attribution_dtype,
                        gradient_fallback, n_steps, internal_batch_size, inputs or InputOptions(), batch_axis)
    return settings, loaded


def _check_target(settings: Settings, model) -> None:
    """A list target ("5,2") is one index over the output's axes after the batch: a dataset job
    explains the same target in every row, so one target per example does not fit its rows."""
    from onnx_attr.methods.base import output_index
    from onnx_attr.app.target_forms import parse_form

    form, value = ("default", None) if settings.target is None else parse_form(settings.target)
    if form != "indices" or not isinstance(value, list):
        return
    name = settings.output_name
    shape = model.outputs[output_index(model, int(name) if name is not None and name.isdigit() else name)].shape
    if shape is None or len(value) != len(shape) - 1:
        raise InputError(f"--target {settings.target!r}: a dataset job explains the same target in every row, so a "
                         "list is one index over the output's axes after the batch (t,c for [N, T, C]"
                         + (f"; this output has {len(shape) - 1}" if shape is not None else "") + "), never one "
                         "target per example")


def _usable(row: np.ndarray, gaps: bool) -> bool:
    """Whether one row of an input can be fed: finite, or NaN where it is a missing value (`gaps`)."""
    if not np.issubdtype(row.dtype, np.floating):
        return True
    return bool((np.isfinite(row) | np.isnan(row)).all()) if gaps else bool(np.isfinite(row).all())


def _dataset_mean(model, settings: Settings, sources: Sequence[Source], shards: Sequence[Shard],
                  quiet: bool) -> tuple[bytes, str, int]:
    """`--baseline mean`: a first pass over every readable, finite row, summed in float64 shard by
    shard in plan order, so the mean is the same however the rows are later batched or scheduled. A
    missing value (NaN in an input of `settings.inputs.missing`) is left out of its element's mean.
    Returns the mean row as .npz bytes (one row per floating input), their sha256 and the row count."""
    import io

    integer = [s.name for s in model.inputs if not s.differentiable]
    if integer:
        raise InputError(f"--baseline mean averages floating inputs; this model also takes {integer}, whose mean is no "
                         "valid value (a token id, a flag): give --baseline zeros or an .npz baseline")
    reader = RowReader(model.inputs, settings.inputs)
    gaps = set(settings.inputs.missing)  # NaN there is a missing value: averaged over the values present
    totals: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    count = 0
    bar = progress(sum(shard_rows_of(s) for s in shards), "row", "dataset mean (--baseline mean)", quiet)
    try:
        for shard in shards:
            source = sources[shard.source]
            if source.error is None:
                rows = reader.read(source, shard.start, shard.stop)
                keep = [r for r, e in enumerate(rows.errors)
                        if e is None and all(_usable(v[r], k in gaps) for k, v in rows.arrays.items())]
                for name, values in rows.arrays.items():
                    part = np.nansum(values[keep], axis=0, dtype=np.float64)
                    seen = np.sum(~np.isnan(values[keep]), axis=0) if values.dtype.kind == "f" else \
                        np.full(values.shape[1:], len(keep))
                    totals[name] = totals[name] + part if name in totals else part
                    present[name] = present[name] + seen if name in present else seen
                count += len(keep)
            bar.update(shard_rows_of(shard))
    finally:
        bar.close()
    if count == 0:
        raise InputError("--baseline mean: no row of the dataset can be read, so there is no mean to compare with")
    dtypes = {s.name: s.dtype for s in model.inputs}
    buffer = io.BytesIO()
    with np.errstate(invalid="ignore", divide="ignore"):  # a value missing in every row stays NaN: refused
        means = reader.model_layout({k: (v / present[k])[None] for k, v in totals.items()}, {})
        np.savez(buffer, **{k: v.astype(dtypes[k]) for k, v in means.items()})
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest(), count


def _check_baseline_rows(settings: Settings, model) -> None:
    """A baseline file serves every row: one row for DeepLift/IG, a distribution for DeepLiftShap."""
    if not settings.baseline.endswith(".npz"):
        return
    from onnx_attr.importing.inputs import read_npz

    from onnx_attr.methods.registry import entry

    arrays = read_npz(settings.baseline, model.inputs)
    axes = row_axes(model.inputs)  # each input's rows on its batch axis (a state [2, 1, 128] is one row)
    rows = {k: v.shape[axes[k]] for k, v in arrays.items() if axes.get(k) is not None and v.ndim > axes[k]}
    if not entry(settings.method).distribution and any(n != 1 for n in rows.values()):
        raise InputError(f"--baseline {settings.baseline!r} holds {rows} rows; a dataset job compares every row with "
                         "one baseline row: save one row (shape (1, ...), on the input's batch axis) per input, or "
                         "use --method deepliftshap for a distribution")


def _check_earlier_run(folder: Path, manifest: dict, resume: bool, overwrite: bool) -> None:
    earlier = folder / MANIFEST
    shard_files = sorted(folder.glob("shard-*.parquet"))
    if not earlier.exists() and not shard_files:
        return
    if overwrite:
        for path in shard_files:
            path.unlink(missing_ok=True)
        (folder / SUMMARY).unlink(missing_ok=True)
        return
    if not resume:
        raise OutputError(f"{str(folder)!r} holds the results of an earlier run; give --resume to finish it, "
                          "--overwrite to recompute it, or another --out")
    try:
        recorded = json.loads(earlier.read_text())
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict):
        recorded = {k: v for k, v in recorded.items() if k != "hash"}
    diffs = differences(recorded, manifest, ignore=("execution",))
    if diffs:
        lines = [f"--resume: the results in {str(folder)!r} were made with other settings, and results of "
                 "different settings are never mixed:"]
        lines += [f"  {d}" for d in diffs[:8]] + ([f"  ... and {len(diffs) - 8} more"] if len(diffs) > 8 else [])
        lines.append("Rerun with the same settings, give another --out, or --overwrite to recompute every shard.")
        raise InputError("\n".join(lines))


def _run_local(worker: ShardWorker, pending: Sequence[Shard], rows_done: int, total_rows: int, title: str,
               quiet: bool) -> dict:
    counts = {"rows": 0, "errors": 0, "above_tolerance": 0, "shards": 0}
    bar = progress(total_rows, "row", title, quiet)
    bar.update(rows_done)
    try:
        for shard in pending:
            result = worker.run(shard.index)
            counts["rows"] += result["rows"]
            counts["errors"] += result["errors"]
            counts["above_tolerance"] += result["above_tolerance"]
            counts["shards"] += 1
            bar.update(result["rows"])
            bar.set_postfix_str(f"errors {counts['errors']}")
    finally:
        bar.close()
    return counts


def _summary(folder: Path, digest: str, shards: Sequence[Shard], done: set[int], counts: dict, seconds: float,
             total_rows: int) -> dict:
    return {
        "rows": total_rows,
        "rows_computed": counts["rows"],
        "error_rows_computed": counts["errors"],
        "rows_above_delta_tolerance": counts["above_tolerance"],
        "delta_tolerance": DELTA_TOLERANCE,
        "shards": len(shards),
        "shards_computed": counts["shards"],
        "shards_kept": len(done),
        "seconds": round(seconds, 3),
        "rows_per_second": round(counts["rows"] / seconds, 2) if seconds > 0 else None,
        "files": [shard_name(s.index, digest) for s in shards],
        "hash": digest,
    }


def read_results(out: str | Path):
    """The run's result rows as one Arrow table, in row order: only the shards of the manifest's
    hash are read, so files of another run in the folder never mix in."""
    import pyarrow.parquet as pq

    folder = Path(out)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{str(folder)!r} holds no readable {MANIFEST}: not the output of a dataset run") from err
    digest = manifest["hash"]
    count = len(manifest["dataset"]["shards"])
    missing = [i for i in range(count) if not (folder / shard_name(i, digest)).exists()]
    if missing:
        raise InputError(f"{str(folder)!r} lacks {len(missing)} of {count} shards (first: {missing[0]}); the run "
                         "did not finish: rerun it with --resume")
    return _joined([pq.read_table(folder / shard_name(i, digest)) for i in range(count)])


def _joined(tables: list):
    """The shards as one table. A shard of failed rows alone could not know an attribution's shape (an
    unreadable file: [3, 1, 1] for a model's dynamic H, W) and its columns are all null: they take the
    type the shards with results have, so the tables concatenate (sweep 35: pyarrow's ArrowInvalid)."""
    import pyarrow as pa

    types: dict[str, Any] = {}
    for table in tables:
        for name in table.column_names:
            if table.column(name).null_count < len(table):
                types.setdefault(name, table.schema.field(name).type)
    fixed = []
    for table in tables:
        for name, wanted in types.items():
            column = table.column(name) if name in table.column_names else None
            if column is not None and column.type != wanted and column.null_count == len(table):
                extension = isinstance(wanted, pa.ExtensionType)
                storage = pa.nulls(len(table), wanted.storage_type if extension else wanted)
                nulls = pa.ExtensionArray.from_storage(wanted, storage) if extension else storage
                table = table.set_column(table.schema.get_field_index(name), pa.field(name, wanted), nulls)
        fixed.append(table)
    return pa.concat_tables(fixed)


def attribution_array(table, column: str = "attributions") -> np.ndarray:
    """A tensor column as one array of shape (rows, *shape); error rows (nulls) are NaN."""
    array = table.column(column).combine_chunks()
    shape = array.type.shape
    storage = array.storage
    values = storage.values.to_numpy(zero_copy_only=False)[storage.offset * int(np.prod(shape)):]
    out = values[:len(array) * int(np.prod(shape))].reshape(len(array), *shape).copy()
    missing = np.asarray(storage.is_null().to_pylist(), dtype=bool) if storage.null_count else None
    if missing is not None:
        out[missing] = np.nan
    return out


__all__ = ["attribute_dataset", "read_results", "attribution_array", "plan_shards", "Shard", "Settings", "ShardWorker",
           "commit_shard", "committed_shards", "manifest_hash", "shard_name"]
