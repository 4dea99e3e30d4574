"""Read and check an ONNX model, turning every library failure into a `ModelLoadError`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]

#: The most elements one tensor may declare (2^32: 16 GiB of float32). More is refused before any
#: allocation: a corrupted or hostile file must not exhaust memory.
MAX_ELEMENTS = 2**32


def read_model(source: ModelSource) -> tuple[onnx.ModelProto, Path | None]:
    """Return the checked model and the folder its external data lives in (None for bytes/protos)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        folder = None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = _parse(bytes(source), "the given bytes")
        folder = None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        model = _read_path(path)
        folder = path.resolve().parent
    else:
        raise ModelLoadError(
            f"cannot load a model from {type(source).__name__!r}: pass a path, bytes or onnx.ModelProto"
        )
    _check_sizes(model)
    _check(model)
    return model, folder


def _check_sizes(model: onnx.ModelProto) -> None:
    """Refuse, before any allocation or graph walk, what no valid export contains."""
    for node in model.graph.node:
        names = [node.name, node.op_type, node.domain, *node.input, *node.output]
        if not all(isinstance(n, str) for n in names):  # protobuf hands back bytes for invalid UTF-8
            raise ModelLoadError("a node of the graph has a name that is not valid UTF-8; the file is corrupted")
        for attr in node.attribute:
            try:
                for text in (attr.s, *attr.strings):
                    text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ModelLoadError(f"attribute {attr.name!r} of node {node.name!r} is not valid UTF-8 text; "
                                     "the file is corrupted") from err
    for tensor in model.graph.initializer:
        count = 1
        for d in tensor.dims:
            if d < 0:
                raise ModelLoadError(f"initializer {tensor.name!r} declares a negative dimension {list(tensor.dims)}")
            count *= d
        if count > MAX_ELEMENTS:
            raise ModelLoadError(
                f"initializer {tensor.name!r} declares {count:,} elements (dims {list(tensor.dims)}), more than "
                f"the {MAX_ELEMENTS:,} allowed; the file is corrupted or not meant for this tool"
            )


def _read_path(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a folder; pass the .onnx file inside it")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelLoadError(f"cannot read model file {str(path)!r}: {err.strerror or err}") from err
    model = _parse(data, repr(str(path)))
    try:  # a no-op for models without external data
        onnx.external_data_helper.load_external_data_for_model(model, str(path.resolve().parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise ModelLoadError(
            f"model {str(path)!r} keeps tensors in external data files that could not be read "
            f"({err}); keep the data files beside the model, under the names it records"
        ) from err
    return model


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{what} is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelLoadError(
            f"{what} is not an ONNX model, or it is truncated (protobuf parse failed: {err}); "
            "check that the file was fully copied and is a .onnx export"
        ) from err
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{what} parsed as protobuf but holds no ONNX graph (ir_version={model.ir_version}); "
            "it is not an ONNX model"
        )
    return model


def _check(model: onnx.ModelProto) -> None:
    try:
        if model.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"the model fails the ONNX checker: {first}\n"
            "The file is not valid ONNX; re-export it or repair the named node/tensor."
        ) from err
    except Exception as err:  # the checker's C++ layer raises plain exceptions on odd protos
        raise ModelLoadError(f"the model fails the ONNX checker: {err}") from err
