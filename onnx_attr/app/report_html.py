"""The run report of a dataset job: one self-contained static HTML file people browse.

`write_report(folder)` reads a results folder (`manifest.json`, `summary.json`, the Parquet
shards) and writes `report.html` beside them, with the full pictures of a few examples in
`report_files/`. Nothing is fetched over the network: CSS, script and thumbnails are inline.

Large runs stay small: the shards are streamed a record batch at a time, and only aggregates are
kept (delta histograms, error counts, per-class sums of |attribution| for images, per-feature sums
for tabular rows), so memory grows with the classes and the input's size, never with the rows.
The gallery holds at most `gallery_rows` rows: the rows of largest relative delta (a tenth of the
cap) plus every k-th row by row id, k chosen so the rest fits; `pictures` of them (largest delta
first, then in row order) get a full picture drawn by `visualize.plot` over their input, read again
with the preprocessing the manifest records when the source files are still where the run read them
and unchanged (their sha256 is checked; image files are found by name, not hashed again): an image's
heat map over the picture the model saw, a text row's tokens (by the run's tokenizer) shaded.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.fileio import atomic_write

REPORT = "report.html"
FILES = "report_files"
#: Decades of the delta histograms: |delta| in [1e-12, 1e2), one bin a decade, zeros apart.
DECADES = tuple(range(-12, 3))
#: Error rows listed one by one (all are counted), and distinct messages counted apart.
ERRORS_LISTED = 200
MESSAGES_COUNTED = 50
#: Thumbnails are block-averaged down to at most this many pixels a side.
THUMBNAIL_SIDE = 64
#: Parquet rows per record batch while streaming a shard.
READ_ROWS = 1024


@dataclass(frozen=True)
class ReportOptions:
    """`gallery_rows`: rows shown in the gallery (at most); `pictures`: full pictures drawn."""

    gallery_rows: int = 500
    pictures: int = 24

    def __post_init__(self) -> None:
        for name in ("gallery_rows", "pictures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"report option {name} must be an integer >= 0, got {value!r}")


# -- the run as recorded ---------------------------------------------------------------------------------------------

@dataclass
class Column:
    """One attributions column: the input it explains, its per-row shape and the picture kind."""

    name: str
    input: str
    shape: tuple[int, ...]
    kind: Optional[str]  # 'image', 'bars', 'tokens' or None (no picture fits)
    features: list[str] = field(default_factory=list)


@dataclass
class Run:
    folder: Path
    manifest: dict
    summary: dict
    shards: list[Path]
    columns: list[Column]
    specs: list  # TensorSpec of the model's inputs, as the manifest records them


def load_run(folder: str | os.PathLike) -> Run:
    """The manifest, summary and shard files of a finished dataset run, or an InputError saying why not."""
    import pyarrow.parquet as pq

    from onnx_attr.app.dataset_job import MANIFEST, SUMMARY, shard_name

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        digest, plan = manifest["hash"], manifest["dataset"]["shards"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{str(folder)!r} holds no readable {MANIFEST}: not the output of "
                         "`onnx-attr dataset`") from err
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        summary = {}
    shards = [folder / shard_name(i, digest) for i in range(len(plan))]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise InputError(f"{str(folder)!r} lacks {len(missing)} of {len(shards)} shards (first: {missing[0]}); "
                         "finish the run with `onnx-attr dataset ... --resume`, then build the report")
    specs = _specs(manifest)
    columns: list[Column] = []
    if shards:
        schema = pq.read_schema(shards[0])
        attributed = [n for n in schema.names if n == "attributions" or n.startswith("attributions_")]
        for name in attributed:
            shape = tuple(int(d) for d in schema.field(name).type.shape)
            input_name = name[len("attributions_"):] if name != "attributions" else _only_attributed(specs)
            columns.append(Column(name, input_name, shape, _kind(shape, specs, input_name, manifest)))
    run = Run(folder, manifest, summary, shards, columns, specs)
    for column in run.columns:
        if column.kind == "bars":
            column.features = feature_names(run, column)
    return run


def _specs(manifest: dict) -> list:
    from onnx_attr.importing.specs import TensorSpec

    out = []
    for spec in manifest.get("preprocessing", {}).get("inputs", []):
        shape = None if spec.get("shape") is None else tuple(spec["shape"])
        dtype = None if spec.get("dtype") is None else np.dtype(spec["dtype"])
        out.append(TensorSpec(spec["name"], shape, dtype, ids=bool(spec.get("ids"))))
    return out


def _only_attributed(specs: Sequence) -> str:
    """The one attributed input of a single `attributions` column: the floating one, else the first."""
    floating = [s.name for s in specs if s.differentiable]
    return floating[0] if floating else (specs[0].name if specs else "input")


def _kind(shape: tuple[int, ...], specs: Sequence, input_name: str, manifest: Optional[dict] = None) -> Optional[str]:
    from onnx_attr.app.visualize import picture_kind

    spec = next((s for s in specs if s.name == input_name), None)
    integer = spec is not None and spec.dtype is not None and not np.issubdtype(spec.dtype, np.floating)
    if integer:
        return "tokens"
    audio = ((manifest or {}).get("preprocessing") or {}).get("audio") or {}
    return picture_kind((1, *shape), False, signal=audio.get("input") == input_name)


def feature_names(run: Run, column: Column) -> list[str]:
    """Names of a tabular column's features: the CSV/Parquet columns that fed it, else `input[i]`."""
    from onnx_attr.app.readers import _table_columns

    size = int(np.prod(column.shape))
    fallback = [f"{column.input}[{i}]" for i in range(size)]
    sources = run.manifest.get("dataset", {}).get("sources", [])
    table = next((s for s in sources if s.get("kind") in ("csv", "parquet") and not s.get("error")), None)
    path = None if table is None else source_path(run.manifest, table["name"])
    if path is None or not path.exists():
        return fallback
    try:
        header = _header(path, table["kind"])
        columns = run.manifest.get("preprocessing", {}).get("columns")
        feeds = _table_columns(header, run.specs, columns if isinstance(columns, list) else None, table["name"])
    except (InputError, OSError, ValueError):
        return fallback
    names = feeds.get(column.input, [])
    return names if len(names) == size else fallback


def _header(path: Path, kind: str) -> list[str]:
    if kind == "csv":
        import csv

        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def source_path(manifest: dict, name: str) -> Optional[Path]:
    """Where the run read source `name`: below the folder the run recorded (`execution.input_root`)."""
    root = manifest.get("execution", {}).get("input_root")
    return None if root is None else Path(root) / name


# -- streaming the shards --------------------------------------------------------------------------------------------

class Histogram:
    """Counts of |values| by decade (DECADES), zeros and values beyond the range apart."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(DECADES) - 1, dtype=np.int64)
        self.zeros = self.below = self.above = 0
        self.largest = 0.0
        self.total = 0.0
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        values = np.abs(values[np.isfinite(values)])
        self.n += values.size
        if not values.size:
            return
        self.total += float(values.sum())
        self.largest = max(self.largest, float(values.max()))
        zero = values == 0
        self.zeros += int(zero.sum())
        exponent = np.floor(np.log10(values[~zero]))
        self.below += int((exponent < DECADES[0]).sum())
        self.above += int((exponent >= DECADES[-1]).sum())
        inside = exponent[(exponent >= DECADES[0]) & (exponent < DECADES[-1])].astype(np.int64) - DECADES[0]
        self.counts += np.bincount(inside, minlength=self.counts.size)

    def bins(self) -> list[tuple[str, int]]:
        """(label, count): "e-7" counts values in [1e-7, 1e-6)."""
        out = [("0", self.zeros), (f"<e{DECADES[0]}", self.below)]
        out += [(f"e{d}", int(c)) for d, c in zip(DECADES[:-1], self.counts)]
        out.append((f"≥e{DECADES[-1]}", self.above))
        return out


class ImageAggregate:
    """Per class: the sum of |attribution| (channels summed) over ok rows, and their count."""

    def __init__(self) -> None:
        self.sums: dict[Any, np.ndarray] = {}
        self.counts: Counter = Counter()
        self.other_shapes = 0  # rows whose map has another size than the first rows' (not averaged in)

    def add(self, values: np.ndarray, classes: Sequence[Any]) -> None:
        magnitude = np.abs(values.astype(np.float64))
        if magnitude.ndim == 4:  # [rows, C, H, W]: one map per row
            magnitude = magnitude.sum(1)
        first = next(iter(self.sums.values()), None)
        if first is not None and first.shape != magnitude.shape[1:]:
            self.other_shapes += len(magnitude)
            return
        for key in set(classes):
            picked = np.asarray([c == key for c in classes])
            total = magnitude[picked].sum(0)
            self.sums[key] = self.sums[key] + total if key in self.sums else total
            self.counts[key] += int(picked.sum())

    def mean_maps(self) -> dict[Any, np.ndarray]:
        """Class -> mean |attribution| map, classes sorted, and 'all' (every ok row) first."""
        if not self.sums:
            return {}
        everything = sum(self.sums.values()) / sum(self.counts.values())
        out = {"all": everything}
        for key in sorted(self.sums, key=_sort_key):
            out[key] = self.sums[key] / self.counts[key]
        return out


def border_profile(mean_map: np.ndarray) -> list[float]:
    """Mean of `mean_map` over the pixels at each distance from the nearest border (ring 0 is
    the outermost row and column), from the border to the centre: padding bias shows as a
    profile that rises toward ring 0."""
    height, width = mean_map.shape
    rings = []
    for d in range((min(height, width) + 1) // 2):
        inner = mean_map[d:height - d, d:width - d]
        core = inner[1:-1, 1:-1] if min(inner.shape) > 2 else inner[:0, :0]
        rings.append((float(inner.sum()) - float(core.sum())) / (inner.size - core.size))
    return rings


class FeatureAggregate:
    """Sums of |attribution| and of attribution per feature over ok rows; rows of another length than
    the column's (a dataset of audio files or sequences of several lengths) have no feature j to add
    to, and are counted in `other_shapes`."""

    def __init__(self, size: int) -> None:
        self.magnitude = np.zeros(size)
        self.signed = np.zeros(size)
        self.n = 0
        self.other_shapes = 0

    def add(self, values: np.ndarray) -> None:
        if not len(values):  # a batch of shards with no ok row
            return
        flat = values.reshape(len(values), -1).astype(np.float64)
        if flat.shape[1] != self.magnitude.size:
            self.other_shapes += len(flat)
            return
        self.magnitude += np.abs(flat).sum(0)
        self.signed += flat.sum(0)
        self.n += len(flat)


@dataclass
class GalleryRow:
    row_id: int
    source: str
    source_row: Optional[int]
    status: str
    prediction: Optional[int]
    target: Any
    output: Optional[float]
    delta: float
    relative: float
    error: Optional[str] = None
    thumbnails: dict[str, str] = field(default_factory=dict)  # column -> HTML
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # token columns: score per position
    picture: Optional[str] = None


class Collector:
    """Everything the page shows, gathered in one pass over the shards."""

    def __init__(self, run: Run, options: ReportOptions) -> None:
        self.run, self.options = run, options
        rows = int(run.manifest.get("dataset", {}).get("rows", 0))
        self.worst_cap = options.gallery_rows // 10
        spread = options.gallery_rows - self.worst_cap
        self.stride = max(1, math.ceil(rows / spread)) if spread > 0 else 0
        self.spread: list[GalleryRow] = []
        self.worst: list[tuple[float, int, GalleryRow]] = []  # a min-heap of the largest relative deltas
        self.deltas, self.relative = Histogram(), Histogram()
        self.rows = self.ok = 0
        self.above_tolerance = 0
        self.errors: list[GalleryRow] = []
        self.error_count = 0
        self.messages: Counter = Counter()
        self.predictions: Counter = Counter()
        self.images = {c.name: ImageAggregate() for c in run.columns if c.kind == "image"}
        self.features = {c.name: FeatureAggregate(int(np.prod(c.shape))) for c in run.columns if c.kind == "bars"}

    def collect(self) -> "Collector":
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path in self.run.shards:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS):
                self._batch(pa.Table.from_batches([batch]))
        return self

    def _batch(self, table) -> None:
        from onnx_attr.app.dataset_job import DELTA_TOLERANCE, attribution_array

        fields = {name: table.column(name).to_pylist() for name in
                  ("row_id", "source", "source_row", "status", "error", "prediction", "output", "target")}
        delta = table.column("convergence_delta").to_numpy(zero_copy_only=False).astype(np.float64)
        relative = table.column("relative_delta").to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.asarray([s == "ok" for s in fields["status"]], dtype=bool)
        self.rows += table.num_rows
        self.ok += int(ok.sum())
        self.deltas.add(delta[ok])
        self.relative.add(relative[ok])
        self.above_tolerance += int(np.sum(relative[ok] > DELTA_TOLERANCE))
        classes = [_class_of(p, t) for p, t in zip(fields["prediction"], fields["target"])]
        self.predictions.update(p for p, good in zip(fields["prediction"], ok) if good and p is not None)
        values = {c.name: attribution_array(table, c.name) for c in self.run.columns}
        for column in self.run.columns:
            good = values[column.name][ok]
            if column.name in self.images:
                self.images[column.name].add(good, [c for c, g in zip(classes, ok) if g])
            elif column.name in self.features:
                self.features[column.name].add(good)

        def row(i: int) -> GalleryRow:
            out = GalleryRow(fields["row_id"][i], fields["source"][i], fields["source_row"][i], fields["status"][i],
                             fields["prediction"][i], _target(fields["target"][i]), fields["output"][i],
                             float(delta[i]), float(relative[i]), fields["error"][i])
            if ok[i]:
                for column in self.run.columns:
                    self._thumbnail(out, column, values[column.name][i])
            return out

        for i in range(table.num_rows):
            if not ok[i]:
                self.error_count += 1
                message = fields["error"][i] or "(no message)"
                if message in self.messages or len(self.messages) < MESSAGES_COUNTED:
                    self.messages[message] += 1
                else:
                    self.messages["(other messages)"] += 1
                if len(self.errors) < ERRORS_LISTED:
                    self.errors.append(GalleryRow(fields["row_id"][i], fields["source"][i], fields["source_row"][i],
                                                  "error", None, None, None, math.nan, math.nan, message))
            picked = self.stride and fields["row_id"][i] % self.stride == 0
            if picked:
                self.spread.append(row(i))
            elif ok[i] and self.worst_cap and np.isfinite(relative[i]) and (
                    len(self.worst) < self.worst_cap or relative[i] > self.worst[0][0]):
                entry = (float(relative[i]), -int(fields["row_id"][i]), row(i))
                (heapq.heappush if len(self.worst) < self.worst_cap else heapq.heapreplace)(self.worst, entry)

    def _thumbnail(self, row: GalleryRow, column: Column, values: np.ndarray) -> None:
        if column.kind == "image":
            row.thumbnails[column.name] = f'<img class="thumb" alt="" src="{image_data_uri(values)}">'
        elif column.kind == "bars":
            flat = values.reshape(-1)
            top = np.argsort(-np.abs(flat), kind="stable")[:3]
            row.thumbnails[column.name] = "<br>".join(
                f'<span class="{"pos" if flat[j] > 0 else "neg"}">{html.escape(_feature(column, j))} '
                f'{flat[j]:+.3g}</span>' for j in top)
        elif column.kind == "tokens":
            scores = values.reshape(values.shape[0], -1).sum(1) if values.ndim > 1 else values.reshape(-1)
            row.scores[column.name] = scores.astype(np.float64)

    def gallery(self) -> list[GalleryRow]:
        """The worst rows first (largest relative delta), then the spread rows in row order."""
        worst = [entry[2] for entry in sorted(self.worst, reverse=True)]
        return worst + self.spread

    def mean_relative(self) -> float:
        return self.relative.total / self.relative.n if self.relative.n else math.nan


def _feature(column: Column, j: int) -> str:
    return column.features[j] if j < len(column.features) else f"{column.input}[{j}]"


def _class_of(prediction: Any, target: Any) -> Any:
    """The class a row is grouped under: its target when that is one class index, else its prediction."""
    parsed = _target(target)
    if isinstance(parsed, int):
        return parsed
    return prediction if prediction is not None else "no class"


def _target(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


# -- small pictures, inline --------------------------------------------------------------------------------------------

def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _shrink(values: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Block means down to at most `side` pixels a side (sums kept in proportion)."""
    factor = max(1, math.ceil(max(values.shape) / side))
    if factor == 1:
        return values
    height, width = (values.shape[0] // factor) * factor, (values.shape[1] // factor) * factor
    trimmed = values[:height, :width]
    return trimmed.reshape(height // factor, factor, width // factor, factor).mean((1, 3))


def image_data_uri(values: np.ndarray) -> str:
    """A signed map (channels summed) as a small PNG: red +, blue -, clipped as the full pictures are."""
    from onnx_attr.app.visualize import clip_scale, signed_colors

    attr = np.asarray(values, dtype=np.float64)
    attr = attr.sum(0) if attr.ndim == 3 else attr
    attr = _shrink(attr)
    return _png_data_uri(signed_colors(attr, clip_scale(attr)))


def magnitude_data_uri(mean_map: np.ndarray) -> str:
    """A mean |attribution| map as a PNG, white at 0 and full red at its largest value."""
    from onnx_attr.app.visualize import signed_colors

    shrunk = _shrink(np.asarray(mean_map, dtype=np.float64))
    largest = float(shrunk.max()) if shrunk.size else 0.0
    return _png_data_uri(signed_colors(shrunk, largest if largest > 0 else 1.0))


# -- full pictures for a bounded number of rows ------------------------------------------------------------------------

def draw_pictures(run: Run, rows: Sequence[GalleryRow], budget: int) -> list[str]:
    """Full pictures (visualize.plot) of up to `budget` ok rows, in the order given, over their input
    where it can be read again: an image's heat map over the picture as the model saw it (resized,
    before normalisation), a text row's tokens shaded; token rows get their tokens for the gallery's
    token view. Returns notes for the page (inputs not found...)."""
    from onnx_attr.app.readers import picture_arrays
    from onnx_attr.app.visualize import plot

    wanted = [r for r in rows if r.status == "ok"]
    drawn = wanted[:budget]
    tokens = [r for r in wanted if r.scores]
    needed = list({id(r): r for r in drawn + tokens}.values())
    notes: list[str] = []
    inputs = _picture_inputs(run, needed, notes)
    if drawn:
        (run.folder / FILES).mkdir(exist_ok=True)
    figures: dict = {}
    columns = [c for c in run.columns if c.kind is not None]
    table_rows = _rows_by_id(run, [r.row_id for r in drawn])
    for row in drawn:
        values = table_rows.get(row.row_id)
        if values is None or not columns:
            continue
        column = columns[0]
        read = inputs.get(row.row_id)
        attribution, x = values[column.name], None
        if read is not None:
            turned, shown = picture_arrays(read, {column.input: attribution[None]}, read.arrays)
            attribution, x = turned[column.input][0], shown.get(column.input, [None])[0]
        names = column.features or None
        if names is not None and len(names) != np.size(attribution):  # a row of another length than the first's
            names = None
        if column.kind == "tokens":
            names = _token_labels(read, x)
        title = "\n".join([f"{run.manifest.get('method')}, row {row.row_id} ({row.source} row {row.source_row})",
                           *([f"predicted {row.prediction}"] if row.prediction is not None else []),
                           f"target {_target_text(row.target)}, output {_number(row.output)}",
                           f"convergence delta {row.delta:+.2e}, relative {row.relative:.2e}"])
        path = plot(run.folder / FILES / f"row_{row.row_id}", attribution, x, kind=column.kind,
                    names=names, title=title, figures=figures)
        row.picture = f"{FILES}/{path.name}"
    for row in tokens:
        read = inputs.get(row.row_id)
        for name, scores in row.scores.items():
            column = next(c for c in run.columns if c.name == name)
            ids = None if read is None else read.arrays.get(column.input, [None])[0]
            row.thumbnails[name] = token_spans(scores, ids, _token_labels(read, ids))
    return notes


def _token_labels(read: Any, ids: Optional[np.ndarray]) -> Optional[list[str]]:
    """A text row's token strings (from its tokenizer), else its ids as `#id`, else None."""
    if read is not None and read.tokens:
        return list(read.tokens[0])
    return None if ids is None else [f"#{int(v)}" for v in np.asarray(ids).reshape(-1)]


def _picture_inputs(run: Run, rows: Sequence[GalleryRow], notes: list[str]) -> dict[int, Any]:
    """Each row's input read again as the run read it (`readers.Rows` of that one row), with the
    preprocessing the manifest records: tables and .npz files and text files when their sha256 is
    unchanged, image files by name below the recorded image folder."""
    from onnx_attr.app.readers import RowReader, Source

    sources = {s["name"]: s for s in run.manifest.get("dataset", {}).get("sources", [])}
    images = next((s["name"] for s in sources.values() if s.get("kind") == "images"), None)
    files = _readable_sources(run, {r.source for r in rows if r.source in sources}, sources, notes)
    reader = RowReader(run.specs, _input_options(run.manifest, notes))
    out: dict[int, Any] = {}
    for row in sorted(rows, key=lambda r: (r.source, r.source_row or 0)):
        if row.source_row is None:
            continue
        if row.source in sources:
            path = files.get(row.source)
            if path is None or (sources[row.source]["kind"] == "text" and reader.options.text is None):
                continue  # noted once, above
            source, start = Source(str(path), row.source, sources[row.source]["kind"], 0), row.source_row
        elif images is not None:
            folder, file = source_path(run.manifest, images), None
            file = None if folder is None else folder / row.source
            if file is None or not file.is_file():
                notes.append(f"image {row.source!r} is not at {str(file) if file else 'a recorded place'}: its "
                             "picture shows the attributions without the image")
                continue
            source, start = Source(str(folder), images, "images", 1, members=(str(file),)), 0
        else:
            continue
        try:
            read = reader.read(source, start, start + 1)
        except (InputError, OSError, ValueError) as err:
            notes.append(f"could not read row {row.source_row} of {row.source!r} again: {err}")
            continue
        if read.errors and read.errors[0] is None:
            out[row.row_id] = read
    return out


def _input_options(manifest: dict, notes: list[str]) -> Any:
    """The run's `InputOptions` from its manifest: columns, the image and audio preprocessing, the
    tokenizer (found where the run read it, and used only if its sha256 is the recorded one)."""
    from onnx_attr.app.audio_inputs import AudioPreprocessing
    from onnx_attr.app.manifest import file_sha256
    from onnx_attr.app.preprocess import image_preprocessing
    from onnx_attr.app.readers import InputOptions
    from onnx_attr.app.text_inputs import TextPreprocessing

    recorded = manifest.get("preprocessing", {})
    columns = _columns(manifest)
    image, image_input = recorded.get("image"), None
    prep = None
    if isinstance(image, dict):
        image_input = image.get("input")
        prep = image_preprocessing(None, **{k: v for k, v in image.items() if k != "input"})
    text, tokenizer = recorded.get("text"), manifest.get("execution", {}).get("tokenizer")
    text_prep = None
    if isinstance(text, dict):
        if tokenizer is None or not Path(tokenizer).is_file():
            notes.append(f"the tokenizer is not at {tokenizer or 'a recorded place'}: text rows show token positions")
        elif file_sha256(tokenizer) != text.get("tokenizer_sha256"):
            notes.append(f"the tokenizer {tokenizer!r} changed since the run (sha256 differs): text rows show "
                         "token positions")
        else:
            text_prep = TextPreprocessing(tokenizer, text["tokenizer_sha256"], text.get("length"))
    audio = recorded.get("audio")
    audio_prep = AudioPreprocessing.recorded(audio) if isinstance(audio, dict) else AudioPreprocessing()
    return InputOptions(columns=tuple(columns) if columns else None,
                        **({"image": prep} if prep is not None else {}), image_input=image_input, text=text_prep,
                        audio=audio_prep)


def _columns(manifest: dict) -> Optional[list[str]]:
    columns = manifest.get("preprocessing", {}).get("columns")
    return columns if isinstance(columns, list) else None


def _readable_sources(run: Run, names: set, sources: dict, notes: list[str]) -> dict[str, Path]:
    """Sources still at their recorded place with the recorded sha256 (others are not read)."""
    from onnx_attr.app.manifest import file_sha256

    found = {}
    for name in sorted(names):
        path = source_path(run.manifest, name)
        recorded = sources.get(name, {}).get("sha256")
        if path is None or not path.is_file():
            notes.append(f"input {name!r} is not at {str(path) if path else 'a recorded place'}: its pictures show "
                         "the attributions without the input")
            continue
        if recorded is not None and file_sha256(path) != recorded:
            notes.append(f"input {str(path)!r} changed since the run (sha256 differs): its pictures show the "
                         "attributions without the input")
            continue
        found[name] = path
    return found


def _rows_by_id(run: Run, row_ids: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """The attributions of a few rows, read from the shards that hold them (by the shard plan)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from onnx_attr.app.dataset_job import attribution_array

    plan = run.manifest["dataset"]["shards"]
    firsts, first = [], 0
    for _, start, stop in plan:
        firsts.append(first)
        first += max(1, stop - start)
    wanted = sorted(set(row_ids))
    out: dict[int, dict[str, np.ndarray]] = {}
    by_shard: dict[int, list[int]] = {}
    for row_id in wanted:
        index = int(np.searchsorted(firsts, row_id, side="right")) - 1
        by_shard.setdefault(index, []).append(row_id)
    for index, ids in by_shard.items():
        table = pq.read_table(run.shards[index])
        table = table.filter(pc.is_in(table.column("row_id"), value_set=_int_array(ids)))
        arrays = {c.name: attribution_array(table, c.name) for c in run.columns}
        for i, row_id in enumerate(table.column("row_id").to_pylist()):
            out[row_id] = {name: values[i] for name, values in arrays.items()}
    return out


def _int_array(values: Sequence[int]):
    import pyarrow as pa

    return pa.array(values, pa.int64())


def token_spans(scores: np.ndarray, ids: Optional[np.ndarray], labels: Optional[Sequence[str]] = None) -> str:
    """Tokens (their strings, else their ids, else positions when neither can be read) shaded by their score."""
    from onnx_attr.app.visualize import clip_scale, signed_colors

    colors = signed_colors(scores, clip_scale(scores))
    if labels is None or len(labels) != scores.size:
        labels = [f"#{int(i)}" for i in np.asarray(ids).reshape(-1)] if ids is not None else \
            [f"[{i}]" for i in range(scores.size)]
    return '<span class="tokens">' + "".join(
        f'<span class="tok" title="{s:+.4g}" style="background: rgb({c[0]},{c[1]},{c[2]})">{html.escape(t)}</span>'
        for t, s, c in zip(labels, scores, colors)) + "</span>"


# -- the page ----------------------------------------------------------------------------------------------------------

def write_report(folder: str | os.PathLike, options: Optional[ReportOptions] = None) -> Path:
    """Build `report.html` (and `report_files/`) in a finished dataset run's folder; returns its path."""
    from onnx_attr.app.report_page import render

    options = options or ReportOptions()
    run = load_run(folder)
    collected = Collector(run, options).collect()
    gallery = collected.gallery()
    notes = draw_pictures(run, gallery, options.pictures)
    page = render(run, collected, gallery, notes, options)
    path = run.folder / REPORT
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def verify_sample(model: Any, sources: Sequence, inputs: Any = None, rows: int = 16) -> dict:
    """onnxruntime against the imported model on the first rows of the first readable source: the
    verify figures the report shows (an error is recorded, never raised). `inputs`: the run's
    `readers.InputOptions` (columns, image and text preprocessing)."""
    from onnx_attr.errors import OnnxAttrError
    from onnx_attr.app.readers import RowReader
    from onnx_attr.importing.verify import verify

    source = next((s for s in sources if s.error is None and s.rows > 0), None)
    if source is None:
        return {"error": "no readable rows to verify on"}
    try:
        data = RowReader(model.inputs, inputs).read(source, 0, min(rows, source.rows))
        good = [i for i, e in enumerate(data.errors) if e is None]
        if not good:
            return {"error": f"the first rows of {source.name!r} do not parse"}
        report = verify(model, {k: v[good] for k, v in data.arrays.items()}, locate=False)
    except OnnxAttrError as err:
        return {"error": str(err)}
    return {"passed": report.passed, "rows": len(good), "source": source.name, "atol": report.atol,
            "rtol": report.rtol,
            "outputs": [{"name": o.name, "max_abs": o.max_abs, "max_rel": o.max_rel, "passed": o.passed}
                        for o in report.outputs]}


def _text(value: Any) -> str:
    return "—" if value is None else str(value)


def _target_text(value: Any) -> str:
    """A row's target as a picture title reads it: a form with its region (`region, 6588 values > 0`),
    not the dict it is stored as."""
    if not isinstance(value, dict):
        return _text(value)
    form = value.get("form", "target")
    facts = [f"{value['mask_size']} values" + (f" > {value['threshold']:.4g}" if "threshold" in value else "")
             if "mask_size" in value else None]
    facts += [f"{k} {v}" for k, v in value.items() if k not in ("form", "mask_size", "threshold") and v is not None
              and not isinstance(v, (list, dict))]
    return ", ".join([str(form), *filter(None, facts)])


def _number(value: Optional[float]) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"


def input_root(sources: Sequence) -> Optional[str]:
    """The folder the sources' names are relative to (recorded so a report can find them again)."""
    for source in sources:
        parts = len(Path(source.name).parts)
        return str(Path(os.path.abspath(source.path)).parents[parts - 1])
    return None


__all__ = ["ReportOptions", "write_report", "load_run", "border_profile", "verify_sample", "input_root"]
