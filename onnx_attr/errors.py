"""The errors onnx-attr raises on purpose.

Every failure a user can cause (a bad file, an op we cannot import, a wrong input) is one of
these, with a message that says what is wrong and what to do. Anything else escaping the
package is a bug in onnx-attr.
"""

from __future__ import annotations


class OnnxAttrError(Exception):
    """Base class: a problem with what the user gave us, explained in the message."""


class ModelLoadError(OnnxAttrError):
    """The model could not be read: missing, not ONNX, truncated, or rejected by the checker."""


class UnsupportedOpError(OnnxAttrError):
    """A node that no converter can import.

    Carries every unsupported node of the model (not just the first), so a user sees the whole
    list at once: ``nodes`` holds ``(op_type, domain, opset, node_name, reason)`` tuples.
    """

    def __init__(self, nodes: list[tuple[str, str, int, str, str]],
                 hint: str = "Re-export the model without these ops, or add a converter (docs/adding_an_op.md).",
                 action: str = "cannot import"):
        self.nodes = list(nodes)
        op_type, domain, opset, name, reason = self.nodes[0]
        self.op_type, self.domain, self.opset, self.node_name = op_type, domain, opset, name
        lines = [
            f"  - {_describe(t, d, o, n)}" + (f": {r}" if r else "") for t, d, o, n, r in self.nodes
        ]
        kinds = sorted({(t, d or "ai.onnx", o) for t, d, o, _, _ in self.nodes})
        summary = ", ".join(f"{t} ({d} opset {o})" if not d.startswith("onnx_attr.") else
                            f"{t} (ONNX nodes onnx-attr fused into one: see each node below)" for t, d, o in kinds)
        super().__init__(
            f"{action} {len(self.nodes)} node(s); unsupported: {summary}\n"
            + "\n".join(lines[:20])
            + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
            + "\n" + hint
        )


class ConversionError(OnnxAttrError):
    """A converter exists for the node but failed on its attributes or inputs."""

    def __init__(self, op_type: str, domain: str, opset: int, node_name: str, cause: BaseException):
        self.op_type, self.domain, self.opset, self.node_name = op_type, domain, opset, node_name
        super().__init__(
            f"could not import {_describe(op_type, domain, opset, node_name)}: "
            f"{type(cause).__name__}: {cause}"
        )


class ForwardError(OnnxAttrError):
    """The imported module failed while running; names the ONNX node where it failed."""


class BaselineForwardError(ForwardError):
    """The forward pass fails at the baseline though it runs at the input: the baseline lies outside
    what the model computes (a zero speed that predicts no frames, a zero length). The CLI's
    `--baseline auto` then takes the blurred input instead."""


class InputError(OnnxAttrError):
    """Inputs, baselines or targets that do not fit the model's declared inputs."""


class NoGradientPathError(InputError):
    """The explained output does not follow the attributed inputs through any differentiable step
    (a binned feature's ArgMax, a vote): gradient-based multipliers are all 0. A perturbation method
    explains it; the CLI's default method falls back to one."""


class ValueShapedError(InputError):
    """A tensor's size follows the input's values (NonZero, a count of boxes above a threshold), so
    DeepLift's reference pass has no element to pair with each of the input's. A perturbation method
    explains it; the CLI's default method falls back to one."""


class OutputError(OnnxAttrError):
    """A result could not be written where the user asked."""


class ExportError(OnnxAttrError):
    """The imported module could not be saved as a PyTorch artifact."""


def _describe(op_type: str, domain: str, opset: int, node_name: str) -> str:
    return f"node {node_name!r} (op {op_type}, domain {domain or 'ai.onnx'!r}, opset {opset})"


class BudgetError(OnnxAttrError):
    """The model asks for more memory, iterations or nesting than its `onnx_attr.Budget` allows."""


class ReferenceRuntimeError(OnnxAttrError):
    """onnxruntime, the reference `verify` compares against, could not run the model."""


class ReferenceLoadError(ReferenceRuntimeError):
    """onnxruntime could not even load the model (its session refused the file): no input shape mends that."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's out-of-memory error, or the CPU allocator's, which torch raises as a plain RuntimeError
    ("DefaultCPUAllocator: can't allocate memory"): both mend with fewer rows per pass."""
    return type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


OUT_OF_MEMORY_ADVICE = ("out of memory, even on one row per pass: lower --batch-size, --internal-batch-size or "
                        "--n-steps, or use a machine with more memory")
