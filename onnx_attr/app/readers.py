"""Rows of a dataset, read source by source: `.npz` files (one row per example along the batch
axis), CSV files and Parquet files (columns named by the model's inputs, or the chosen / all
numeric columns for a one-input tabular model), image files (PNG/JPEG, one row each, through
`preprocess.ImagePreprocessing`), audio files (one row each, through `audio_inputs.AudioRows`) and
text files (one row per line, through the user's tokenizer).
`attribute` reads each of its input files as one source; `dataset` cuts the sources into shards.

A dataset is a sorted list of sources, so that the shard plan (fixed row ranges of fixed sources)
is the same on every run and every worker. The image files found (a folder is searched with its
subfolders, as class folders are) form one source whose rows are the files in sorted order. Counting
a source's rows is cheap (an .npz member header, a Parquet footer, a CSV line count, a file list);
the rows themselves are read per shard. A cell that does not parse or an image that does not decode
makes an error for its row only, never for the run.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.fileio import regular_file
from onnx_attr.app.audio_inputs import AudioPreprocessing, AudioRows, fed_back_states
from onnx_attr.app.preprocess import IMAGE_SUFFIXES, ImagePreprocessing, image_input, load_image
from onnx_attr.importing.input_files import AUDIO_SUFFIXES
from onnx_attr.importing.specs import TensorSpec
from onnx_attr.app.text_inputs import TEXT_SUFFIXES, TextEncoder, TextPreprocessing, read_lines

#: File name suffix -> reader kind.
KINDS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
         **{s: "images" for s in IMAGE_SUFFIXES}, **{s: "text" for s in TEXT_SUFFIXES},
         **{s: "audio" for s in AUDIO_SUFFIXES}}
TABLES = ("csv", "parquet")
#: Largest CSV or text input read whole (its rows become Python strings, ~10x the bytes); a larger
#: table goes in as Parquet, read a row group at a time
MAX_TEXT_TABLE_BYTES = 512 * 2**20
_GIVE = "give .npz, .csv, .parquet, .png/.jpg, .wav or .txt files"


@dataclass(frozen=True)
class InputOptions:
    """How files become model inputs, beyond the .npz that already holds them (picklable for Ray)."""

    columns: Optional[tuple[str, ...]] = None
    image: ImagePreprocessing = field(default_factory=ImagePreprocessing)
    image_input: Optional[str] = None
    text: Optional[TextPreprocessing] = None
    audio: AudioPreprocessing = field(default_factory=AudioPreprocessing)
    #: inputs whose empty table cells are missing values (NaN), where the model reads them as such and the
    #: method explains them (`importing.missing_values`); anywhere else an empty cell is the row's error
    missing: tuple[str, ...] = ()

    def describe_columns(self) -> Any:
        return list(self.columns) if self.columns else "named after the inputs, in order, or all (one input)"

    def notes(self, specs: Sequence[TensorSpec], kinds: set[str]) -> list[str]:
        """What a job says once about how these kinds of source become inputs (raw 0..255 pixels fed
        to a floating input), for its console and its reports."""
        if "images" not in kinds:
            return []
        spec = image_input(specs, self.image_input)
        note = self.image.resolved(spec).unscaled(spec)
        return [note] if note else []

    def record(self, specs: Sequence[TensorSpec], kinds: set[str]) -> dict[str, Any]:
        """The preprocessing of these kinds of source as reports and manifests record it, every
        default resolved against the model; a setting the model cannot take is refused here."""
        out: dict[str, Any] = {}
        if kinds & set(TABLES):
            out["columns"] = self.describe_columns()
            if self.missing:
                out["empty_cells"] = {"inputs": list(self.missing), "read_as": "NaN (missing values)"}
        if "images" in kinds:
            spec = image_input(specs, self.image_input)
            others = [s.name for s in specs if s.name != spec.name]
            if others:
                raise InputError(f"image files feed input {spec.name!r}; the model also takes {others}, which an image "
                                 "cannot give: save all inputs in an .npz instead")
            out["image"] = {"input": spec.name, **self.image.resolved(spec).to_dict()}
        if "audio" in kinds:
            audio = AudioRows(specs, self.audio, row_axes(specs))  # refuses a model audio cannot feed, here
            out["audio"] = {"input": audio.spec.name, **audio.prep.to_dict(),
                            **({"rate_inputs": [s.name for s in audio.rate_inputs]} if audio.rate_inputs else {})}
        if "text" in kinds:
            if self.text is None:
                raise InputError("text files (.txt, one example per line) need the model's tokenizer: give "
                                 "--tokenizer tokenizer.json")
            encoder = TextEncoder(self.text, specs)
            out["text"] = {**self.text.to_dict(), "length": encoder.length, "inputs": [s.name for s in encoder.fed]}
        return out


@dataclass(frozen=True)
class Source:
    """One input file of a dataset (or the image files, together): how many rows, or why it cannot be read."""

    path: str
    name: str  # path below the sources' common folder: what result rows name as their source
    kind: str
    rows: int
    sha256: Optional[str] = None
    error: Optional[str] = None
    members: tuple[str, ...] = ()  # image files: one row each
    member_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "rows": self.rows, "sha256": self.sha256,
                **({"error": self.error} if self.error else {})}

    def row_name(self, row: int) -> str:
        """What a result row names as its source: the image file, or the source's file."""
        return self.member_names[row] if self.member_names else self.name


@dataclass
class Rows:
    """Rows [start, stop) of one source as model inputs; `errors[i]` is None for a readable row.
    `display` holds image inputs' pixels as given (for pictures), `channels_last` the inputs fed
    NHWC, `feature_names` the columns of a table input, `tokens` each text row's token strings
    and `vocab` the tokenizer's (id -> token)."""

    arrays: dict[str, np.ndarray]
    errors: list[Optional[str]] = field(default_factory=list)
    display: dict[str, np.ndarray] = field(default_factory=dict)
    channels_last: set[str] = field(default_factory=set)
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    tokens: Optional[list[list[str]]] = None
    vocab: Optional[dict[int, str]] = None
    #: inputs with no rows (no batch axis: a 0-d sample rate), fed as given with every batch of rows
    held: dict[str, np.ndarray] = field(default_factory=dict)
    #: inputs read from audio files: pictures draw them over time
    signals: set[str] = field(default_factory=set)


def row_axes(specs: Sequence[TensorSpec]) -> dict[str, Optional[int]]:
    """Where each input's rows are, as its declared shape says (`batch.batch_axes`): an .npz holds
    each input as the model takes it, so a recurrent state [2, N, 128] has its rows on axis 1. None:
    the input has no rows (a 0-d sample rate), and its one value goes with every row."""
    from onnx_attr.importing.batch import batch_axes

    return {s.name: a for s, a in zip(specs, batch_axes(specs))}


def source_files(spec: str, text: bool = False) -> list[Path]:
    """One file, a folder (its data files, and image files in it and its subfolders), or a glob;
    sorted, so every run agrees. A folder's .txt files are inputs only with `text` (a tokenizer
    given), so notes beside the data are not read as examples."""
    path = Path(spec)
    if path.is_dir():
        skip = {"images"} if text else {"images", "text"}
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in KINDS and KINDS[p.suffix.lower()] not in skip
                       and not p.name.startswith(".") and not p.is_dir())
        files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts))
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in KINDS and not Path(p).is_dir())
    else:
        if not path.exists():
            raise InputError(f"--input {spec!r} does not exist")
        files = [path]
    if not files:
        raise InputError(f"--input {spec!r} matches no input file; {_GIVE}")
    wrong = [str(f) for f in files if f.suffix.lower() not in KINDS]
    if wrong:
        raise InputError(f"--input {wrong[0]!r}: {_GIVE}")
    return files


def kind_of(file: str | Path) -> str:
    """The reader of a file by its suffix; any other suffix is read as arrays (.npz / .npy)."""
    return KINDS.get(Path(file).suffix.lower(), "npz")


def kinds_of(files: Sequence[Path]) -> set[str]:
    return {kind_of(f) for f in files}


def describe_sources(files: Sequence[Path], specs: Sequence[TensorSpec],
                     options: Optional[InputOptions] = None) -> list[Source]:
    """Each file's row count and sha256 (the image files together as one source); a file that
    cannot be read is described by its error."""
    from onnx_attr.app.manifest import file_sha256

    options = options or InputOptions()
    absolute = [os.path.abspath(f) for f in files]
    base = os.path.commonpath([os.path.dirname(p) for p in absolute])
    out = []
    images: list[tuple[str, str]] = []
    for file, path in zip(files, absolute):
        name = Path(os.path.relpath(path, base)).as_posix()
        kind = KINDS[file.suffix.lower()]
        if kind == "images":
            if not images:
                out.append(None)  # the images' place in the sorted order
            images.append((path, name))
            continue
        try:
            _bounded(regular_file(file, "input file"), kind)
            digest = file_sha256(file)
            rows = _count_rows(file, kind, specs, options)
        except (InputError, OSError, ValueError) as err:
            out.append(Source(str(file), name, kind, 0, None, f"cannot read {name!r}: {err}"))
            continue
        out.append(Source(str(file), name, kind, rows, digest))
    if images:
        out[out.index(None)] = _image_source(images, base)
    return out


def _image_source(images: list[tuple[str, str]], base: str) -> Source:
    """The image files as one source; each file's content is hashed (an unreadable one by its
    error, which its row will carry)."""
    from onnx_attr.app.manifest import file_sha256

    digest = hashlib.sha256()
    for path, name in images:
        try:
            content = file_sha256(regular_file(path, "image file"))
        except (InputError, OSError) as err:
            content = f"unreadable: {err}"
        digest.update(f"{name}\0{content}\n".encode())
    return Source(base, Path(base).name or base, "images", len(images), digest.hexdigest(),
                  members=tuple(p for p, _ in images), member_names=tuple(n for _, n in images))


def _bounded(file: Path, kind: str) -> Path:
    """A CSV or text file within `MAX_TEXT_TABLE_BYTES` (the others are read in bounded parts)."""
    size = file.stat().st_size
    if kind in ("csv", "text") and size > MAX_TEXT_TABLE_BYTES:
        raise InputError(f"{size:,} bytes is more than the {MAX_TEXT_TABLE_BYTES // 2**20} MiB read whole from a "
                         f"{kind} file; split it, or save the rows as Parquet (read a row group at a time)")
    return file


def _count_rows(file: Path, kind: str, specs: Sequence[TensorSpec], options: InputOptions) -> int:
    columns = options.columns
    if kind == "npz":
        return _npz_rows(file, specs)
    if kind == "audio":  # one example per file, its samples read when its row is
        return 1
    if kind == "text":
        return len(read_lines(str(file)))
    if kind == "csv":
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, None)
                if header is None:
                    raise InputError("the CSV file is empty; it needs a header row naming its columns")
                _table_columns(header, specs, columns, f"{file.name!r}")
                return sum(1 for row in reader if row)
            except csv.Error as err:
                raise _not_csv(file, err) from err
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file)
    except Exception as err:  # pyarrow raises its own error types for a corrupt file
        raise InputError(f"not a Parquet file ({type(err).__name__}: {err})") from err
    _table_columns(meta.schema_arrow.names, specs, columns, f"{file.name!r}")
    return meta.metadata.num_rows


def _npz_rows(file: Path, specs: Sequence[TensorSpec]) -> int:
    """The batch size, from the members' .npy headers only (no data read): each input's size on
    its batch axis (`row_axes`); an input without one has no rows to count."""
    names = [s.name for s in specs]
    axes = row_axes(specs)
    try:
        with zipfile.ZipFile(file) as archive:
            sizes = {}
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    shape = (np.lib.format.read_array_header_1_0(stream) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(stream))[0]
                key = member.filename[:-4]
                if key == "arr_0" and len(names) == 1:
                    key = names[0]
                axis = axes.get(key, 0)
                sizes[key] = shape[axis] if axis is not None and len(shape) > axis else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise InputError(f"not an .npz of arrays ({type(err).__name__}: {err})") from err
    if not any(n in sizes for n in names):
        raise InputError(f"holds none of the model's inputs {names}")
    counts = {sizes[n] for n in names if sizes.get(n) is not None}
    if len(counts) != 1:
        where = {n: f"{sizes[n]} on axis {axes[n]}" for n in names if sizes.get(n) is not None}
        raise InputError(f"its arrays disagree on the number of rows (each on its input's batch axis): {where}"
                         if counts else f"none of its arrays has rows on its input's batch axis ({axes})")
    return int(counts.pop())


def _table_columns(header: Sequence[str], specs: Sequence[TensorSpec], columns: Optional[Sequence[str]],
                   where: str) -> dict[str, list[str]]:
    """Model input -> the columns that feed it: a column per input named like it, or else (one
    input) the chosen columns, or every column when none are chosen."""
    header = list(header)
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(f"{where} has no column(s) {missing}; its columns are {header[:20]}")
        if len(specs) != 1:
            raise InputError("--columns feeds a one-input model; name the columns after the model's inputs instead")
        return {specs[0].name: list(columns)}
    named = [s.name for s in specs if s.name in header]
    if named:
        missing = [s.name for s in specs if s.name not in header]
        if missing:
            raise InputError(f"{where} has columns for inputs {named} but none for {missing}")
        return {s.name: [s.name] for s in specs}
    if len(specs) != 1:
        if len(header) == len(specs):  # no names to go by: in order, one column per input
            return {s.name: [c] for s, c in zip(specs, header)}
        raise InputError(f"{where}: the model takes inputs {[s.name for s in specs]}; name one column after each "
                         f"(or give exactly {len(specs)} columns, one per input in order)")
    return {specs[0].name: header}


def _empty_cell(column: str) -> str:
    """A row's error for an empty cell, in a CSV or a Parquet file alike."""
    return (f"column {column!r} is empty in this row (a missing value, which only a model reading NaN as one "
            "takes, with DeepLift or a perturbation method: see `onnx-attr inspect`)")


class RowReader:
    """Reads row ranges of sources; keeps the last source it read, since shards run in order."""

    def __init__(self, specs: Sequence[TensorSpec], options: Optional[InputOptions] = None):
        self.specs = list(specs)
        self.options = options or InputOptions()
        self.columns = list(self.options.columns) if self.options.columns else None
        self._cached: Optional[tuple[str, object]] = None
        self._image: Optional[tuple[TensorSpec, ImagePreprocessing]] = None
        self._aspect_size: Optional[tuple[int, int]] = None  # what the run's first image made of a free side
        self._text: Optional[TextEncoder] = None
        self.axes = row_axes(self.specs)
        self._audio: Optional[AudioRows] = None

    def read(self, source: Source, start: int, stop: int) -> Rows:
        """Rows [start, stop): each array with its rows on axis 0, whatever its input's batch axis
        (`model_layout` moves them back), and the inputs without rows as `held`."""
        if source.kind == "npz":
            arrays = self._load(source, self._read_npz)
            rows = {k: np.moveaxis(v, self.axes[k], 0)[start:stop] for k, v in arrays.items()
                    if self.axes.get(k) is not None and v.ndim > self.axes[k]}
            return Rows(rows, [None] * (stop - start), held={k: v for k, v in arrays.items() if k not in rows})
        if source.kind == "images":
            return self._image_rows(source.members[start:stop])
        if source.kind == "audio":  # one row: a file that cannot be read fails that row (an InputError)
            if self._audio is None:
                self._audio = AudioRows(self.specs, self.options.audio, self.axes)
            rows, held = self._audio.rows(source.path)
            return Rows(rows, [None], held=held, signals={self._audio.spec.name})
        if source.kind == "text":
            lines = self._load(source, lambda path: read_lines(str(_bounded(path, "text"))))
            arrays, tokens = self.text_encoder.encode(lines[start:stop])
            return Rows(arrays, [None] * (stop - start), tokens=tokens, vocab=self.text_encoder.vocab)
        if source.kind == "csv":
            header, lines = self._load(source, _read_csv)
            feeds = _table_columns(header, self.specs, self.columns, f"{source.name!r}")
            return self._named(self._csv_rows(header, lines[start:stop], feeds), feeds)
        parquet = self._load(source, _open_parquet)
        feeds = _table_columns(parquet.schema_arrow.names, self.specs, self.columns, f"{source.name!r}")
        table = _parquet_slice(parquet, start, stop, list(dict.fromkeys(c for cols in feeds.values() for c in cols)))
        return self._named(self._parquet_rows(table, feeds), feeds)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            if self.options.text is None:
                raise InputError("text files need the model's tokenizer: give --tokenizer tokenizer.json")
            self._text = TextEncoder(self.options.text, self.specs)
        return self._text

    def _image_rows(self, files: Sequence[str]) -> Rows:
        """One row per image file; a file that does not decode is an error row (zeros in its place)."""
        if self._image is None:
            spec = image_input(self.specs, self.options.image_input)
            self._image = spec, self.options.image.resolved(spec)
        spec, prep = self._image
        values: list[Optional[np.ndarray]] = []
        shown: list[Optional[np.ndarray]] = []
        errors: list[Optional[str]] = []
        for file in files:
            try:
                value, display = load_image(file, prep)
                self._same_size(file, display, prep)
            except InputError as err:
                value, display = None, None
                errors.append(str(err))
            else:
                errors.append(None)
            values.append(value)
            shown.append(display)
        model_shape, display_shape = _image_shapes(prep, self._aspect_size)
        arrays = np.stack([v if v is not None else np.zeros(model_shape, prep.dtype) for v in values]) \
            if values else np.zeros((0, *model_shape), prep.dtype)
        display = np.stack([d if d is not None else np.zeros(display_shape, np.uint8) for d in shown]) \
            if shown else np.zeros((0, *display_shape), np.uint8)
        return Rows({spec.name: arrays}, errors, display={spec.name: display},
                    channels_last={spec.name} if prep.layout == "NHWC" else set())

    def _same_size(self, file: str, display: np.ndarray, prep: ImagePreprocessing) -> None:
        """Where a side follows each image's aspect ratio (`ImagePreprocessing.size`), the run's rows
        share the size its first image took: one of another aspect is an error row, not a row of
        another width."""
        if prep.size is None or None not in prep.size:
            return
        found = tuple(display.shape[-2:])
        if self._aspect_size is None:
            self._aspect_size = found
        elif found != self._aspect_size:
            height, width = self._aspect_size
            raise InputError(f"image {str(file)!r} is {found[0]}x{found[1]} once resized to the side the model fixes "
                             f"(aspect kept), where the run's first image made {height}x{width}: rows of one run share "
                             f"a size; give --image-size {height}x{width} to resize every image to it")

    def _named(self, rows: Rows, feeds: dict[str, list[str]]) -> Rows:
        rows.feature_names = {name: list(cols) for name, cols in feeds.items() if len(cols) > 1}
        return rows

    def model_layout(self, rows: dict[str, np.ndarray], held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from rows on axis 0 (`read`): each input's rows back on its batch axis,
        and the held values as they are."""
        return {**{k: np.moveaxis(v, 0, self.axes.get(k) or 0) for k, v in rows.items()}, **held}

    def rows_first(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`model_layout` undone: values shaped as the model's inputs (attributions) with their rows on axis 0."""
        return {k: np.moveaxis(np.asarray(v), self.axes.get(k) or 0, 0) for k, v in values.items()}

    def _load(self, source: Source, read):
        if self._cached is None or self._cached[0] != source.path:
            self._cached = None  # drop the old one before reading the next
            self._cached = (source.path, read(Path(source.path)))
        return self._cached[1]

    def _read_npz(self, path: Path) -> dict[str, np.ndarray]:
        from onnx_attr.importing.inputs import read_npz

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cast is recorded in the manifest's preprocessing
            arrays = read_npz(path, self.specs)
        return {s.name: np.asarray(arrays[s.name], dtype=s.dtype) for s in self.specs if s.name in arrays}

    def _row_shape(self, spec: TensorSpec, features: int) -> tuple[int, ...]:
        dims = spec.shape[1:] if spec.shape else ()
        if dims and all(isinstance(d, int) for d in dims):
            if int(np.prod(dims)) != features:
                raise InputError(f"input {spec.name!r} takes {int(np.prod(dims))} values per row "
                                 f"(shape {list(dims)}), the columns give {features}; choose them with --columns")
            return tuple(dims)  # type: ignore[return-value]
        return (features,)

    def _csv_rows(self, header: list[str], lines: list[list[str]], feeds: dict[str, list[str]]) -> Rows:
        index = {c: i for i, c in enumerate(header)}
        errors: list[Optional[str]] = [None] * len(lines)
        arrays = {}
        for spec in self.specs:
            cols = [index[c] for c in feeds[spec.name]]
            values = np.zeros((len(lines), len(cols)), dtype=np.float64)
            number = _cell_or_missing if spec.name in self.options.missing else float
            for r, line in enumerate(lines):
                try:
                    values[r] = [number(line[c]) for c in cols]
                except (ValueError, IndexError) as err:
                    empty = next((header[c] for c in cols if c < len(line) and not line[c].strip()), None)
                    errors[r] = errors[r] or (_empty_cell(empty) if empty is not None else
                                              f"row does not parse as numbers ({type(err).__name__}: {err})")
            shape = self._row_shape(spec, len(cols))
            arrays[spec.name] = values.reshape(len(lines), *shape).astype(spec.dtype or np.float32)
        return Rows(arrays, errors)

    def _parquet_rows(self, table, feeds: dict[str, list[str]]) -> Rows:
        import pyarrow as pa

        n = table.num_rows
        errors: list[Optional[str]] = [None] * n
        arrays = {}
        for spec in self.specs:
            cols = feeds[spec.name]
            gaps = spec.name in self.options.missing  # None cells are NaN (missing values)
            if len(cols) == 1 and (pa.types.is_list(table.schema.field(cols[0]).type)
                                   or pa.types.is_fixed_size_list(table.schema.field(cols[0]).type)
                                   or isinstance(table.schema.field(cols[0]).type, pa.ExtensionType)):
                cells = table.column(cols[0]).to_pylist()
                lengths = {len(c) for c in cells if c is not None}
                features = max(lengths) if lengths else 0
                values = np.zeros((n, features), dtype=np.float64)
                for r, cell in enumerate(cells):
                    if cell is None or len(cell) != features or (not gaps and any(v is None for v in _flat(cell))):
                        errors[r] = f"column {cols[0]!r} is empty or of another length in this row"
                    else:
                        values[r] = np.asarray([np.nan if v is None else v for v in _flat(cell)], dtype=np.float64)
            else:
                values = np.zeros((n, len(cols)), dtype=np.float64)
                for j, name in enumerate(cols):
                    column = table.column(name)
                    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                            or pa.types.is_boolean(column.type)):
                        raise InputError(f"column {name!r} is {column.type}, not numeric; leave it out with "
                                         "--columns")
                    cells = column.to_pylist()
                    for r, v in enumerate(cells):
                        if v is None and not gaps:
                            errors[r] = errors[r] or _empty_cell(name)
                        else:
                            values[r, j] = np.nan if v is None else v
            shape = self._row_shape(spec, values.shape[1])
            arrays[spec.name] = values.reshape(n, *shape).astype(spec.dtype or np.float32)
        return Rows(arrays, errors)


def reading_missing(options: InputOptions, model: Any, explainer: Any) -> InputOptions:
    """`options` with the inputs whose empty table cells are missing values for this model and method:
    those the graph reads NaN from as one, where the method explains missing values."""
    from onnx_attr.importing.missing_values import missing_value_inputs

    takes = getattr(explainer, "missing_values", None) is not None
    return replace(options, missing=tuple(sorted(missing_value_inputs(model))) if takes else ())


def reading_audio(options: InputOptions, model: Any) -> InputOptions:
    """`options` with the recurrent states this model feeds back, which an audio file's row starts at
    zeros (`audio_inputs.fed_back_states`)."""
    return replace(options, audio=replace(options.audio, states=fed_back_states(model)))


def _cell_or_missing(cell: str) -> float:
    """A CSV cell as a number, an empty one as a missing value (NaN)."""
    return float(cell) if cell.strip() else np.nan


def _image_shapes(prep: ImagePreprocessing, found: Optional[tuple[int, int]] = None
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One example's shape as the model takes it, and as `load_image` shows it (`found`: the size
    the run's first image took where a side follows the aspect ratio; square before it)."""
    height, width = prep.size  # type: ignore[misc]
    if height is None or width is None:  # a side that follows the image: the run's first image's, else a stand-in
        height, width = found or (height or width or 1, height or width or 1)
    count = prep.channel_count
    shapes = {"NCHW": (count, height, width), "NHWC": (height, width, count), "NHW": (height, width)}
    model = shapes[prep.layout or "NCHW"]
    return model, ((height, width) if count == 1 else (3, height, width))


def read_input_file(file: Path, specs: Sequence[TensorSpec], options: InputOptions) -> Rows:
    """Every row of one input file of `attribute` (a table, text or an image), or the error of its
    first bad row: an attribution job explains a whole file or nothing of it."""
    source = describe_sources([file], specs, options)[0]
    if source.error is not None:
        raise InputError(source.error)
    rows = RowReader(specs, options).read(source, 0, source.rows)
    bad = [(i, e) for i, e in enumerate(rows.errors) if e is not None]
    if bad:
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        where = "" if source.kind == "images" else f" row {bad[0][0]}"
        raise InputError(f"{str(file)!r}{where}: {bad[0][1]}{more}")
    if source.rows == 0:
        raise InputError(f"{str(file)!r} holds no rows to attribute")
    return rows


def read_inputs(path: str | os.PathLike, model: Any, options: Optional[InputOptions] = None) -> dict[str, np.ndarray]:
    """The Python API's way in: a model's inputs (by ONNX name, each input's rows on its batch axis,
    and the values that go with every row: an audio file's sample rate) from one file of any kind
    `attribute` reads, with the same preprocessing; `model` is a loaded model or its input specs
    (a loaded model also gives the states an audio file's row starts at zeros)."""
    specs = list(getattr(model, "inputs", model))
    if kind_of(path) == "npz":
        from onnx_attr.importing.inputs import read_npz

        return read_npz(path, specs)
    options = options or InputOptions()
    if hasattr(model, "outputs"):
        options = reading_audio(options, model)
    rows = read_input_file(Path(path), specs, options)
    return RowReader(specs, options).model_layout(rows.arrays, rows.held)


def picture_arrays(rows: Rows, attributions: dict[str, np.ndarray],
                   inputs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What pictures draw: image inputs as the user gave them (pixels before normalisation), and
    the attributions of channels-last inputs turned channels-first, as the pictures expect."""
    attributions, inputs = dict(attributions), dict(inputs)
    for name, display in rows.display.items():
        inputs[name] = display.astype(np.float32)
        if name in rows.channels_last and name in attributions:
            attributions[name] = np.moveaxis(np.asarray(attributions[name]), -1, 1)
    return attributions, inputs


def _flat(cell) -> list:
    out: list = []
    for v in cell:
        out.extend(_flat(v) if isinstance(v, (list, tuple)) else [v])
    return out


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(_bounded(path, "csv"), newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
            return header, [row for row in reader if row]
        except csv.Error as err:
            raise _not_csv(path, err) from err


def _not_csv(path: Path, err: csv.Error) -> InputError:
    """The csv module's own refusal (a field over its 128 KiB, a NUL byte), as the user's error."""
    return InputError(f"{str(path)!r} does not parse as CSV ({err}); give one example per row, numbers in "
                      "columns named after the inputs")


def _open_parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def _parquet_slice(parquet, start: int, stop: int, columns: list[str]):
    """Rows [start, stop) of the columns wanted, reading only the row groups that hold them: a shard
    of a large table costs its own rows, not the whole file's."""
    groups, first, at = [], None, 0
    for index in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(index).num_rows
        if at < stop and at + rows > start:
            groups.append(index)
            first = at if first is None else first
        at += rows
    if not groups:
        return parquet.schema_arrow.empty_table().select(columns)
    return parquet.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
