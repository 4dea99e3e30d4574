"""The one registration point for ONNX op -> torch module converters.

A converter is keyed by (domain, op type, since-version): the opset version in which the op's
current definition appeared, as `onnx.defs` reports it. Our converters take precedence over
onnx2torch's; a second registration of the same key is an error, so two families can never
silently fight over an op. The supported-ops table in the docs is generated from here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from onnx import defs
from onnx2torch.node_converters import get_converter as _onnx2torch_converter
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY as _ONNX2TORCH_REGISTRY
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]


class OpKey(NamedTuple):
    domain: str
    op_type: str
    since: int


_REGISTRY: dict[OpKey, Converter] = {}


def _canonical_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def register(op_type: str, *since: int, domain: str = "") -> Callable[[Converter], Converter]:
    """Register the decorated converter for each listed since-version of `op_type`."""
    if not since:
        raise ValueError(f"register({op_type!r}) needs at least one since-version")

    def deco(fn: Converter) -> Converter:
        for version in since:
            key = OpKey(_canonical_domain(domain), op_type, version)
            if key in _REGISTRY:
                other = _REGISTRY[key]
                raise ValueError(
                    f"duplicate converter for {op_type} (domain {domain or 'ai.onnx'!r}, since "
                    f"{version}): {fn.__module__}.{fn.__qualname__} and "
                    f"{other.__module__}.{other.__qualname__}"
                )
            _REGISTRY[key] = fn
        return fn

    return deco


def since_version(domain: str, op_type: str, opset: int) -> int | None:
    """The version of `op_type`'s definition in force at `opset`, or None if ONNX has no schema."""
    try:
        return defs.get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
    except Exception:  # SchemaError for unknown ops and domains
        return None


def find_converter(domain: str, op_type: str, opset: int) -> Converter | None:
    """Our converter for the op at this opset, else onnx2torch's; else one for an older version
    whose definition differs only in the types it accepts; else None."""
    domain = _canonical_domain(domain)
    since = since_version(domain, op_type, opset)
    if since is None:  # no schema (custom domain): take the newest registration not above opset
        ours = [k for k in _REGISTRY if k.domain == domain and k.op_type == op_type and k.since <= opset]
        return _REGISTRY[max(ours, key=lambda k: k.since)] if ours else None
    exact = _exact_converter(domain, op_type, since)
    if exact is not None:
        return exact
    older = since - 1
    while older > 0:
        previous = since_version(domain, op_type, older)
        if previous is None or not _same_signature(domain, op_type, previous, since):
            return None
        found = _exact_converter(domain, op_type, previous)
        if found is not None:
            return found
        older = previous - 1
    return None


def _exact_converter(domain: str, op_type: str, since: int) -> Converter | None:
    converter = _REGISTRY.get(OpKey(domain, op_type, since))
    if converter is not None:
        return converter
    try:
        return _onnx2torch_converter(operation_type=op_type, version=since, domain=domain)
    except NotImplementedError:
        return None


def _same_signature(domain: str, op_type: str, old: int, new: int) -> bool:
    """True when two versions of an op have the same inputs, outputs and attributes (names,
    optionality, defaults): the later one only widened the accepted types (bfloat16, float8, int4),
    so a converter of the earlier one computes it too."""

    def signature(version: int):
        schema = defs.get_schema(op_type, max_inclusive_version=version, domain=domain)
        params = lambda ps: [(p.name, p.option) for p in ps]  # noqa: E731
        attrs = sorted((name, a.type, a.required, a.default_value.SerializeToString())
                       for name, a in schema.attributes.items())
        return params(schema.inputs), params(schema.outputs), attrs, schema.min_input, schema.max_input

    try:
        return signature(old) == signature(new)
    except Exception:  # SchemaError: no comparison possible, so no reuse
        return False


def supported_ops() -> list[tuple[str, str, int, str]]:
    """Every (domain, op type, since-version, provider) we can import, sorted, for the docs."""
    rows = {(k.domain, k.op_type, k.since): "onnx-attr" for k in _REGISTRY}
    for key in _ONNX2TORCH_REGISTRY:
        rows.setdefault((key.domain, key.operation_type, key.version), "onnx2torch")
    return sorted((d or "ai.onnx", t, v, p) for (d, t, v), p in rows.items())


def supported_ops_markdown() -> str:
    """The docs/supported_ops.md table, generated so it never drifts from the code."""
    lines = [
        "# Supported ONNX ops",
        "",
        "Generated by `python -m onnx_attr.importing.converters > docs/supported_ops.md`; a test keeps it in sync.",
        "An op imports at opset N when a row has its since-version <= N and no later since-version <= N",
        "exists in ONNX. Old models are upgraded to opset 17 first when they cannot be imported as they are.",
        "",
        "| domain | op | since | converter |",
        "|---|---|---|---|",
    ]
    lines += [f"| {d} | {t} | {v} | {p} |" for d, t, v, p in supported_ops()]
    from onnx_attr.importing.unfused import BLOCK_GATHER_OP, EMBED_OP, MICROSOFT

    from onnx_attr.importing.legacy import EXPERIMENTAL_OPS, MODERN

    lines += ["", f"Written out as the ONNX ops they fuse before conversion (`importing/unfused.py`): {MICROSOFT} "
              f"{EMBED_OP} (Gather, Add, LayerNormalization, ReduceSum) and {BLOCK_GATHER_OP} of constant uint4, int4 or "
              "packed uint8 tables (a Gather of the table dequantized at import). 4- and 2-bit integer initializers "
              "under a DequantizeLinear are stored as 8-bit integers of the same values.",
              "", "Written out as standard ops before conversion (`importing/legacy.py`), the experimental ops of "
              "opsets 1-9: " + ", ".join(op if since is None else f"{op} (below opset {since})"
                                         for op, since in sorted(EXPERIMENTAL_OPS.items())) + ". Files at opsets "
              f"1-{MODERN - 1} are rewritten as opset {MODERN} first (broadcast/axis, consumed_inputs, is_test, "
              "the attributes later made inputs)."]
    return "\n".join(lines) + "\n"

