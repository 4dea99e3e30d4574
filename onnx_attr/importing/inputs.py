"""Turn what a user passes (arrays, tensors, dicts, .npz files) into checked model inputs.

Every mismatch with the model's declared inputs is an `InputError` naming the ONNX input and
what it expects, raised before any compute.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from onnx_attr.errors import InputError
from onnx_attr.importing.specs import TensorSpec


def arrange(inputs: Any, specs: Sequence[TensorSpec], what: str = "input") -> list[Any]:
    """Order inputs as the model declares them: one value, a sequence, or a dict by ONNX name."""
    names = [s.name for s in specs]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise InputError(
                f"{what}s do not match the model's inputs {names}: "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {extra}" if extra else "")
            )
        return [inputs[n] for n in names]
    if isinstance(inputs, (np.ndarray, torch.Tensor)) or np.isscalar(inputs):
        inputs = [inputs]
    values = list(inputs)
    if len(values) != len(specs):
        raise InputError(f"the model takes {len(specs)} {what}(s) {names}, got {len(values)}")
    return values


def check_inputs(values: Sequence[Any], specs: Sequence[TensorSpec], what: str = "input",
                 any_batch: bool | Sequence[int | None] = False,
                 finite: Sequence[bool] | bool = True, ids_as_integers: bool = False,
                 missing: Sequence[bool] | bool = False, hint: str = "") -> list[torch.Tensor]:
    """Validate shape, dtype and finiteness against the specs; return tensors of the declared dtype.

    With `any_batch` axis 0 may have any size whatever the spec says: the attribution engine
    feeds an export with a fixed batch size in chunks of that size (given as one batch axis per
    input, that axis too: a state [2, 4, 128] fixed at 4 on axis 1). `finite` says which inputs
    must be finite (all, none, or one flag per input): an attributed input must be, since its
    attributions would be meaningless, while a forward pass takes what the graph takes (an IsNaN
    model, an attention mask of -inf). With `ids_as_integers`, an input of ids held as floats
    (`TensorSpec.integer_ids`) comes back as int64, the values the graph's Cast makes, so the
    attribution methods treat it as the token ids it is. `missing` says which of the finite ones may
    hold NaN all the same, as missing values the method explains (`importing.missing_values`; an
    infinity is still refused); `hint` ends the refusal of a NaN.
    """
    finite = [finite] * len(specs) if isinstance(finite, bool) else list(finite)
    missing = [missing] * len(specs) if isinstance(missing, bool) else list(missing)
    # the batch's symbol must agree across inputs (rows are examples); other names are hints that
    # onnxruntime does not check, and exports repeat one dynamic_axes dict over unlike inputs
    # (LORE's cells [batch, height, width] beside their boxes [batch, height, width] of other widths)
    symbols: dict[str, tuple[int, str]] = {s: (-1, "") for s in _batch_symbols(specs)}
    out = []
    batch = list(any_batch) if not isinstance(any_batch, bool) else [0 if any_batch else None] * len(specs)
    values = _scalars_broadcast(values, specs, what)
    for value, spec, must_be_finite, may_miss, axis in zip(values, specs, finite, missing, batch):
        tensor = _to_tensor(value, spec, what)
        if spec.shape == () and tensor.dim() > 0 and tensor.numel() == 1:
            tensor = tensor.reshape(())  # a one-element array where a scalar is declared
        _check_shape(tensor, spec, what, symbols, skip_batch=not isinstance(any_batch, bool) or any_batch,
                     batch_axis=axis)
        if must_be_finite and tensor.is_floating_point() and not all_finite(tensor):
            nan_only = not bool(torch.isinf(tensor).any())
            if may_miss and nan_only:  # missing values, which the method explains
                out.append(as_ids(tensor, spec, what) if ids_as_integers and spec.integer_ids else tensor)
                continue
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(
                f"{what} {spec.name!r} has {bad} NaN or infinite value(s); "
                "attributions of non-finite inputs are meaningless: clean or impute them first"
                + (hint if nan_only else "")
            )
        out.append(as_ids(tensor, spec, what) if ids_as_integers and spec.integer_ids else tensor)
    return out


def _scalars_broadcast(values: Sequence[Any], specs: Sequence[TensorSpec], what: str) -> list[Any]:
    """A Python (or numpy) number given for an input declared with axes, broadcast to the declared
    shape as a Python forward would broadcast it (Captum's `additional_forward_args=(0,)` for an
    input the export declares [batch, 3]): each axis's size is the declared one, or the size another
    input has under the same name. An axis with neither is a clear error."""
    if not any(_is_number(v) and s.shape for v, s in zip(values, specs)):
        return list(values)
    sizes: dict[str, int] = {}
    for value, spec in zip(values, specs):
        shape = getattr(value, "shape", None) if not isinstance(value, (list, tuple)) else np.shape(value)
        if shape is not None and spec.shape and len(shape) == len(spec.shape):
            for dim, size in zip(spec.shape, shape):
                if isinstance(dim, str) and dim:
                    sizes.setdefault(dim, int(size))
    out = list(values)
    for i, (value, spec) in enumerate(zip(values, specs)):
        if not (_is_number(value) and spec.shape):
            continue
        shape = [d if isinstance(d, int) and d > 0 else sizes.get(d) if isinstance(d, str) else None
                 for d in spec.shape]
        if None in shape:
            axis = shape.index(None)
            raise InputError(f"{what} {spec.name!r} is the number {value!r}, but the model declares it with shape "
                             f"{_declared(spec)}, and the size of its axis {axis} is neither declared nor named like "
                             "an axis of another input: pass an array of that shape")
        if math.prod(shape) > _MAX_FILLED:  # the shape is the file's word: bounded as any size it computes
            raise InputError(f"{what} {spec.name!r} is the number {value!r}, and the model declares it with shape "
                             f"{shape} ({math.prod(shape)} elements, more than {_MAX_FILLED}): pass the array itself")
        kind = "floating" if _kind(spec.dtype) == "floating" else None
        number = float(value) if kind else value
        out[i] = np.full(shape, number, dtype=np.asarray(number).dtype if not kind else np.float64)
    return out


#: elements a number may be broadcast to (the Budget's default for sizes a file computes)
_MAX_FILLED = 2**28


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _declared(spec: TensorSpec) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"


def as_ids(tensor: torch.Tensor, spec: TensorSpec, what: str) -> torch.Tensor:
    """Float ids as int64, truncated toward zero as ONNX's Cast truncates them."""
    if not tensor.is_floating_point():
        return tensor.to(torch.int64)
    if not all_finite(tensor):
        raise InputError(f"{what} {spec.name!r} holds ids (the model casts it to integers) but has NaN or infinite "
                         "values; pass whole numbers")
    return tensor.to(torch.int64)


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in a floating tensor. A finite sum settles it in one float pass (a NaN or
    infinity always spoils the sum); only a sum that overflows is checked element by element
    (on CPU the elementwise test writes a bool mask, which costs as much as several passes)."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _to_tensor(value: Any, spec: TensorSpec, what: str) -> torch.Tensor:
    if spec.dtype is None:
        raise InputError(f"{what} {spec.name!r} is not a tensor (sequence or map inputs are not supported)")
    if isinstance(value, torch.Tensor):
        array_kind = _torch_kind(value.dtype)  # from the dtype alone: no copy of the data
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and _kind(spec.dtype) == "floating":
        value, array_kind = np.asarray(float(value)), "floating"  # a literal 0 for a float input: no dtype meant
    else:
        try:
            value = np.asarray(value)
        except Exception as err:
            raise InputError(f"{what} {spec.name!r} cannot be read as an array: {err}") from err
        if value.dtype == object:
            raise InputError(f"{what} {spec.name!r} is an object array; pass a numeric array")
        array_kind = _kind(value.dtype)
    want = _kind(spec.dtype)
    if spec.integer_ids and array_kind == "integer":
        array_kind = want  # ids: integer arrays are what they hold
    if array_kind != want:
        got = value.dtype
        raise InputError(
            f"{what} {spec.name!r} expects {spec.dtype} values ({want}), got {got} ({array_kind})"
            + ("; token ids must be integers" if want == "integer" else "")
        )
    torch_dtype = _torch_dtype(spec)
    if isinstance(value, torch.Tensor):
        return value.to(torch_dtype)
    if spec.dtype.name == "bfloat16":  # numpy has no bfloat16; torch reads it through float32 exactly
        return torch.from_numpy(np.asarray(value, dtype=np.float32)).to(torch.bfloat16)
    array = np.ascontiguousarray(value.astype(spec.dtype, copy=False))
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _torch_dtype(spec: TensorSpec) -> torch.dtype:
    if spec.dtype.name == "bfloat16":
        return torch.bfloat16
    try:
        return torch.from_numpy(np.zeros(0, spec.dtype)).dtype
    except TypeError as err:
        raise InputError(f"input {spec.name!r} has dtype {spec.dtype}, which PyTorch cannot hold") from err


def _torch_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_floating_point:
        return "floating"
    return "integer" if not dtype.is_complex else str(dtype)


def _kind(dtype: np.dtype) -> str:
    if dtype.name in ("bfloat16",) or dtype.name.startswith("float8"):
        return "floating"
    if np.issubdtype(dtype, np.bool_):
        return "boolean"
    if np.issubdtype(dtype, np.floating):
        return "floating"
    if np.issubdtype(dtype, np.integer):
        return "integer"
    return str(dtype)


def _check_shape(tensor: torch.Tensor, spec: TensorSpec, what: str, symbols: dict[str, tuple[int, str]],
                 skip_batch: bool = False, batch_axis: int | None = None) -> None:
    if spec.shape is None:
        return
    shape = tuple(tensor.shape)
    expected = _declared(spec)
    if len(shape) != len(spec.shape):
        raise InputError(
            f"{what} {spec.name!r} expects rank {len(spec.shape)} {expected}, got shape {list(shape)}"
        )
    wrong = [(axis, dim) for axis, (got, dim) in enumerate(zip(shape, spec.shape))
             if not (skip_batch and axis in (0, batch_axis)) and isinstance(dim, int) and dim > 0 and got != dim]
    if wrong:
        raise InputError(f"{what} {spec.name!r} expects shape {expected}, got {list(shape)} ("
                         + ", ".join(f"axis {axis} must be {dim}" for axis, dim in wrong) + ")")
    for axis, (got, dim) in enumerate(zip(shape, spec.shape)):
        if skip_batch and axis in (0, batch_axis):
            continue
        if isinstance(dim, str) and dim in symbols:
            if symbols[dim][0] < 0:  # its first input
                symbols[dim] = (got, spec.name)
            seen = symbols[dim]
            if seen[0] != got:
                raise InputError(
                    f"{what} {spec.name!r} axis {axis} ({dim!r}) is {got}, but {seen[1]!r} has {dim!r} = {seen[0]}"
                )


def _batch_symbols(specs: Sequence[TensorSpec]) -> set[str]:
    """The named dims on the inputs' batch axes (`batch.batch_axes`)."""
    from onnx_attr.importing.batch import batch_axes

    return {s.shape[a] for s, a in zip(specs, batch_axes(specs)) if a is not None and s.shape
            and a < len(s.shape) and isinstance(s.shape[a], str)}


def sample_inputs(specs: Sequence[TensorSpec], seed: int = 0, symbolic_size: int = 2,
                  batch_size: Optional[int] = None) -> list[np.ndarray]:
    """A seeded random sample of the declared shapes/dtypes (symbolic and unknown dims -> `symbolic_size`,
    those on an input's batch axis -> `batch_size` when given)."""
    rng = np.random.default_rng(seed)
    out = []
    axes = [None] * len(specs)
    if batch_size is not None:
        from onnx_attr.importing.batch import batch_axes

        axes = batch_axes(specs)
    for spec, axis in zip(specs, axes):
        if spec.dtype is None:
            raise InputError(f"cannot sample input {spec.name!r}: it is not a tensor; pass inputs explicitly")
        if spec.shape is None:
            raise InputError(f"cannot sample input {spec.name!r}: its rank is unknown; pass inputs explicitly")
        shape = tuple(d if isinstance(d, int) and d > 0 else batch_size if i == axis else symbolic_size
                      for i, d in enumerate(spec.shape))
        if int(np.prod(shape, dtype=np.float64)) > 2**28:
            raise InputError(f"input {spec.name!r} declares shape {list(shape)}, too large to sample at random; "
                             "pass inputs explicitly")
        kind = _kind(spec.dtype)
        if kind == "floating" and spec.integer_ids:  # ids held as floats: small whole numbers
            out.append(rng.integers(0, 2, shape).astype(spec.dtype))
        elif kind == "floating":
            out.append(rng.standard_normal(shape).astype(spec.dtype))
        elif kind == "boolean":
            out.append(rng.random(shape) < 0.5)
        elif kind == "integer":  # small ids: valid for embeddings and index inputs of any size
            out.append(rng.integers(0, 2, shape).astype(spec.dtype))
        else:
            raise InputError(f"cannot sample input {spec.name!r} of dtype {spec.dtype}; pass inputs explicitly")
    return out


def sampling_specs(model) -> list[TensorSpec]:
    """The model's input specs with each free dim a weight fixes filled in (`weight_fixed_dims`), for a
    random sample: a Whisper encoder's mel input declared [batch, n_frames, 3000] takes exactly the 80
    channels its first Conv's weight has, which no guessed size (2, 32, ...) gives."""
    from dataclasses import replace

    graph = getattr(getattr(model, "onnx_model", None), "graph", None)
    fixed = weight_fixed_dims(graph) if graph is not None else {}
    out = []
    for spec in model.inputs:
        sizes = fixed.get(spec.name, {})
        if sizes and spec.shape is not None:
            spec = replace(spec, shape=tuple(sizes.get(i, d) if not (isinstance(d, int) and d > 0) else d
                                             for i, d in enumerate(spec.shape)))
        out.append(spec)
    return out


#: ops a graph input passes through unchanged on the way to the op whose weight fixes its size
_THROUGH = frozenset({"Cast", "Identity", "Transpose", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"})


def weight_fixed_dims(graph) -> dict[str, dict[int, int]]:
    """Input name -> {axis: size} where a constant weight fixes a dim of that input: a Conv's input
    channels (axis 1 of what it reads), a MatMul's or Gemm's inner size, a recurrent op's input size,
    reached from the input directly or through casts, quantizers and transposes (followed axis by axis)."""
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, position))
    found: dict[str, dict[int, int]] = {}
    for value in graph.input:
        rank = len(value.type.tensor_type.shape.dim)
        stack = [(value.name, list(range(rank)), 0)]  # (tensor, its axis -> the input's axis, hops)
        while stack:
            name, axes, depth = stack.pop()
            for node, position in consumers.get(name, ()):
                if position != 0:
                    continue
                rank_axis = _weight_fixed_axis(node, inits)
                if rank_axis is not None:
                    axis, size = rank_axis
                    at = axes[axis] if -len(axes) <= axis < len(axes) else None
                    if at is not None and size > 0:
                        found.setdefault(value.name, {}).setdefault(at, size)
                elif node.op_type in _THROUGH and depth < 4 and node.output:
                    if node.op_type == "Transpose":
                        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                        if perm is None:
                            continue
                        if len(axes) != len(perm):
                            continue
                        stack.append((node.output[0], [axes[p] for p in perm], depth + 1))
                    else:
                        stack.append((node.output[0], axes, depth + 1))
    return found


def _weight_fixed_axis(node, inits: dict) -> Optional[tuple[int, int]]:
    """(axis of input 0, the size its constant weight demands) for the ops whose weight fixes one."""
    attrs = {a.name: a for a in node.attribute}
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type in ("Conv", "ConvInteger") and weight is not None and len(weight) >= 3:
        group = attrs["group"].i if "group" in attrs else 1
        return 1, weight[1] * group
    if node.op_type in ("MatMul", "MatMulInteger") and weight is not None and len(weight) == 2:
        return -1, weight[0]
    if node.op_type == "Gemm" and weight is not None and len(weight) == 2:
        trans_a = attrs["transA"].i if "transA" in attrs else 0
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        return (0 if trans_a else 1), weight[1 if trans_b else 0]
    if node.op_type in ("LSTM", "GRU", "RNN") and weight is not None and len(weight) == 3:
        return 2, weight[2]  # X [seq, batch, input] (layout 1 is rare: [batch, seq, input] keeps axis 2)
    return None


def read_npz(path: str | os.PathLike, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Arrays keyed by ONNX input name, from an .npz (or an .npy for a one-input model).

    A single unnamed array (an .npy, or `numpy.savez(path, x)`'s `arr_0`) goes to a one-input
    model. Any other key that names no input is an error (a typo such as `img` for `image` would
    otherwise be fed as something else). A dtype that differs from the model's within its kind
    (float64 for float32) is converted with an `InputCastWarning`; another kind is an error later.
    """
    from onnx_attr.importing.input_files import InputCastWarning, read_arrays

    arrays = read_arrays(path)
    names = [s.name for s in specs]
    unnamed = [k for k in arrays if k is None or (k == "arr_0" and "arr_0" not in names)]
    if unnamed and len(arrays) == 1 and len(names) == 1:
        arrays = {names[0]: arrays[unnamed[0]]}
    elif None in arrays:
        raise InputError(f"{str(path)!r} is a single .npy array, but the model takes {len(names)} inputs {names}; "
                         "save them with numpy.savez(path, **{onnx_input_name: array})")
    unknown = [k for k in arrays if k not in names]
    if unknown:
        raise InputError(f"{str(path)!r} holds array(s) {unknown} that name no input of the model; its inputs are "
                         f"{names}: save with numpy.savez(path, **{{onnx_input_name: array}})")
    for spec in specs:
        value = arrays.get(spec.name)
        if value is None or spec.dtype is None or value.dtype == spec.dtype:
            continue
        if _kind(value.dtype) == _kind(spec.dtype):
            warnings.warn(f"input {spec.name!r} in {str(path)!r} is {value.dtype}; the model takes {spec.dtype}, so "
                          "it is converted (values may round); save it as " + str(spec.dtype) + " to silence this",
                          InputCastWarning, stacklevel=2)
    return arrays  # type: ignore[return-value]
