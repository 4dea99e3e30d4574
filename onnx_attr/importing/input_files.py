"""Read arrays from `.npz` and `.npy` files that may be hostile, with every size bounded first.

A member's header (shape and dtype) is read and checked against the budget and against the bytes
the member really holds before the array is allocated, so a header that claims 4 TiB or a small
zip that inflates to gigabytes is refused with a clear message instead of a MemoryError. Pickled
objects are never loaded; FIFOs and devices are refused before they are opened.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import IO, Optional

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.fileio import regular_file

#: Largest total of array bytes read from one input file (2 GiB); more is refused before reading.
MAX_INPUT_BYTES = 2 * 1024**3
#: Most arrays one .npz may hold.
MAX_MEMBERS = 4096

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_HOW_TO_SAVE = "save inputs with numpy.savez(path, **{onnx_input_name: array})"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
#: audio files are read by `attribute` and `dataset` (app/audio_inputs.py); elsewhere arrays are given
_AUDIO_HINT = ("audio files are read by `attribute` and `dataset` (--sample-rate, --audio-scale); here, load its "
               "samples at the rate, channels and scale the model takes (the standard library's `wave`, or soundfile), "
               "then ")


class InputWarning(UserWarning):
    """Something about an input file a result should carry with it (reports list them)."""


class InputCastWarning(InputWarning):
    """An input array's dtype differs from the model's and was converted."""


def read_arrays(path: str | os.PathLike, what: str = "input file",
                budget: int = MAX_INPUT_BYTES) -> dict[Optional[str], np.ndarray]:
    """Arrays by name from an .npz (its member names) or an .npy (one array, named None)."""
    path = regular_file(path, what)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
            handle.seek(0)
            if magic == _NPY_MAGIC:
                size = os.fstat(handle.fileno()).st_size
                return {None: _read_member(handle, size, budget, f"{what} {str(path)!r}")}
            if magic[:2] != _ZIP_MAGIC:
                raise InputError(f"cannot read {str(path)!r}: it is neither an .npz nor an .npy file; "
                                 + (_AUDIO_HINT if path.suffix.lower() in AUDIO_SUFFIXES else "") + _HOW_TO_SAVE)
            return _read_zip(handle, budget, f"{str(path)!r}")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            MemoryError) as err:
        raise InputError(f"cannot read {str(path)!r} as an .npz of arrays ({type(err).__name__}: {err}); "
                         f"{_HOW_TO_SAVE}") from err


def _read_zip(handle: IO[bytes], budget: int, where: str) -> dict[Optional[str], np.ndarray]:
    with zipfile.ZipFile(handle) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_MEMBERS:
            raise InputError(f"{where} holds {len(members)} arrays, more than the {MAX_MEMBERS} allowed")
        declared = sum(m.file_size for m in members)
        if declared > budget:
            raise InputError(f"{where} expands to {declared:,} bytes, more than the {budget:,} allowed for one "
                             "input file; split it into several files")
        arrays: dict[Optional[str], np.ndarray] = {}
        for member in members:
            if not member.filename.endswith(".npy"):
                raise InputError(f"{where} holds {member.filename!r}, which is not an array (.npy); {_HOW_TO_SAVE}")
            with archive.open(member) as stream:  # reads at most member.file_size bytes, CRC checked
                arrays[member.filename[:-4]] = _read_member(stream, member.file_size, budget,
                                                            f"array {member.filename[:-4]!r} of {where}")
        return arrays


def _read_member(stream: IO[bytes], available: int, budget: int, where: str) -> np.ndarray:
    """One .npy: header first, then the data only if the header's size fits what is there."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise InputError(f"{where}: unsupported .npy format version {version}")
    if dtype.hasobject:
        raise InputError(f"cannot read {where}: it holds Python objects, which are never loaded (no pickle); "
                         "pass a numeric array")
    count = 1
    for dim in shape:
        count *= int(dim)
    needed = count * dtype.itemsize
    if needed > budget:
        raise InputError(f"{where} declares shape {list(shape)} of {dtype} ({needed:,} bytes), more than the "
                         f"{budget:,} allowed")
    if needed > available:
        raise InputError(f"{where} declares shape {list(shape)} of {dtype} ({needed:,} bytes) but holds only "
                         f"{available:,} bytes: the file is truncated or corrupt")
    data = stream.read(needed)
    if len(data) != needed:
        raise InputError(f"{where} ends after {len(data):,} of {needed:,} bytes: the file is truncated")
    array = np.frombuffer(data, dtype=dtype)
    if fortran:
        return array.reshape(shape[::-1]).transpose().copy()
    return array.reshape(shape).copy()
