"""Rows of a dataset, read source by source: `.npz` files (one row per example along the batch
axis), CSV files and Parquet files (columns named by the model's inputs, or the chosen / all
numeric columns for a one-input tabular model).

A dataset is a sorted list of source files, so that the shard plan (fixed row ranges of fixed
sources) is the same on every run and every worker. Counting a source's rows is cheap (an .npz
member header, a Parquet footer, a CSV line count); the rows themselves are read per shard. A
cell that does not parse makes an error for its row only, never for the run.
"""

from __future__ import annotations

import csv
import glob
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError
from .fileio import regular_file
from .specs import TensorSpec

#: File name suffix -> reader kind.
KINDS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Source:
    """One input file of a dataset: how many rows it holds, or why it cannot be read."""

    path: str
    name: str  # path below the sources' common folder: what result rows name as their source
    kind: str
    rows: int
    sha256: Optional[str] = None
    error: Optional[str] = None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "rows": self.rows, "sha256": self.sha256,
                **({"error": self.error} if self.error else {})}


@dataclass
class Rows:
    """Rows [start, stop) of one source as model inputs; `errors[i]` is None for a readable row."""

    arrays: dict[str, np.ndarray]
    errors: list[Optional[str]] = field(default_factory=list)


def source_files(spec: str) -> list[Path]:
    """One file, a folder of .npz/.csv/.parquet files, or a glob; sorted, so every run agrees."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in KINDS and not p.name.startswith("."))
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in KINDS and not Path(p).is_dir())
    else:
        if not path.exists():
            raise InputError(f"--input {spec!r} does not exist")
        files = [path]
    if not files:
        raise InputError(f"--input {spec!r} matches no .npz, .csv or .parquet file")
    wrong = [str(f) for f in files if f.suffix.lower() not in KINDS]
    if wrong:
        raise InputError(f"--input {wrong[0]!r}: give .npz, .csv or .parquet files")
    return files


def describe_sources(files: Sequence[Path], specs: Sequence[TensorSpec],
                     columns: Optional[Sequence[str]] = None) -> list[Source]:
    """Each file's row count and sha256; a file that cannot be read is described by its error."""
    from .manifest import file_sha256

    absolute = [os.path.abspath(f) for f in files]
    base = os.path.commonpath([os.path.dirname(p) for p in absolute])
    out = []
    for file, path in zip(files, absolute):
        name = Path(os.path.relpath(path, base)).as_posix()
        kind = KINDS[file.suffix.lower()]
        try:
            regular_file(file, "input file")
            digest = file_sha256(file)
            rows = _count_rows(file, kind, specs, columns)
        except (InputError, OSError, ValueError) as err:
            out.append(Source(str(file), name, kind, 0, None, f"cannot read {name!r}: {err}"))
            continue
        out.append(Source(str(file), name, kind, rows, digest))
    return out


def _count_rows(file: Path, kind: str, specs: Sequence[TensorSpec], columns: Optional[Sequence[str]]) -> int:
    if kind == "npz":
        return _npz_rows(file, specs)
    if kind == "csv":
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputError("the CSV file is empty; it needs a header row naming its columns")
            _table_columns(header, specs, columns, f"{file.name!r}")
            return sum(1 for row in reader if row)
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file)
    except Exception as err:  # pyarrow raises its own error types for a corrupt file
        raise InputError(f"not a Parquet file ({type(err).__name__}: {err})") from err
    _table_columns(meta.schema_arrow.names, specs, columns, f"{file.name!r}")
    return meta.metadata.num_rows


def _npz_rows(file: Path, specs: Sequence[TensorSpec]) -> int:
    """The batch size, from the members' .npy headers only (no data read)."""
    names = [s.name for s in specs]
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
                sizes[key] = shape[0] if shape else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise InputError(f"not an .npz of arrays ({type(err).__name__}: {err})") from err
    counts = {sizes.get(n) for n in names if n in sizes}
    if not counts:
        raise InputError(f"holds none of the model's inputs {names}")
    if len(counts) != 1 or None in counts:
        raise InputError(f"its arrays disagree on the number of rows (axis 0): {sizes}")
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
        raise InputError(f"{where}: the model takes inputs {[s.name for s in specs]}; name one column after each")
    return {specs[0].name: header}


class RowReader:
    """Reads row ranges of sources; keeps the last source it read, since shards run in order."""

    def __init__(self, specs: Sequence[TensorSpec], columns: Optional[Sequence[str]] = None):
        self.specs = list(specs)
        self.columns = list(columns) if columns else None
        self._cached: Optional[tuple[str, object]] = None

    def read(self, source: Source, start: int, stop: int) -> Rows:
        if source.kind == "npz":
            arrays = self._load(source, self._read_npz)
            return Rows({k: v[start:stop] for k, v in arrays.items()}, [None] * (stop - start))
        if source.kind == "csv":
            header, lines = self._load(source, _read_csv)
            feeds = _table_columns(header, self.specs, self.columns, f"{source.name!r}")
            return self._csv_rows(header, lines[start:stop], feeds)
        table = self._load(source, _read_parquet)
        feeds = _table_columns(table.schema.names, self.specs, self.columns, f"{source.name!r}")
        return self._parquet_rows(table.slice(start, stop - start), feeds)

    def _load(self, source: Source, read):
        if self._cached is None or self._cached[0] != source.path:
            self._cached = None  # drop the old one before reading the next
            self._cached = (source.path, read(Path(source.path)))
        return self._cached[1]

    def _read_npz(self, path: Path) -> dict[str, np.ndarray]:
        import warnings

        from .inputs import read_npz

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
            for r, line in enumerate(lines):
                try:
                    values[r] = [float(line[c]) for c in cols]
                except (ValueError, IndexError) as err:
                    errors[r] = errors[r] or f"row does not parse as numbers ({type(err).__name__}: {err})"
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
            if len(cols) == 1 and (pa.types.is_list(table.schema.field(cols[0]).type)
                                   or pa.types.is_fixed_size_list(table.schema.field(cols[0]).type)
                                   or isinstance(table.schema.field(cols[0]).type, pa.ExtensionType)):
                cells = table.column(cols[0]).to_pylist()
                lengths = {len(c) for c in cells if c is not None}
                features = max(lengths) if lengths else 0
                values = np.zeros((n, features), dtype=np.float64)
                for r, cell in enumerate(cells):
                    if cell is None or len(cell) != features or any(v is None for v in _flat(cell)):
                        errors[r] = f"column {cols[0]!r} is empty or of another length in this row"
                    else:
                        values[r] = np.asarray(_flat(cell), dtype=np.float64)
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
                        if v is None:
                            errors[r] = errors[r] or f"column {name!r} is empty in this row"
                        else:
                            values[r, j] = v
            shape = self._row_shape(spec, values.shape[1])
            arrays[spec.name] = values.reshape(n, *shape).astype(spec.dtype or np.float32)
        return Rows(arrays, errors)


def _flat(cell) -> list:
    out: list = []
    for v in cell:
        out.extend(_flat(v) if isinstance(v, (list, tuple)) else [v])
    return out


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, [row for row in reader if row]


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)
