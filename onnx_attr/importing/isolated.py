"""ONNX's C++ shape inference, run where an assertion inside it cannot end the process.

The onnx wheels keep libstdc++'s assertions: a graph whose inferred dims go negative (a
convolution with a kernel longer than its input, then a Slice along that axis, whose inference
clamps its bounds into [0, dim]) aborts the whole interpreter (SIGABRT, exit 134), from a 1 kB
file or from an input a few frames too short. On Linux the inference therefore runs in a forked
child that hands back the inferred graph's bytes; a child that dies is an `InferenceAborted`
error here, which every caller already treats as "no shapes" (the import carries on without
them, the batch walk leaves the question to the probe's runs, whose forward names the node).
Elsewhere, or where fork is unavailable, it runs in this process as before.

A fork costs ~45 ms from a process holding torch and a model (3 ms is a whole inference in this
one), so only graphs with an op whose inference was found to assert (`ABORTING`: of 17 ops
tried after a negative dim, only Slice) are isolated; the batch walk also skips the child on
shapes the model has already run on (`batch_graph._onnx_shapes`).
"""

from __future__ import annotations

import os
import sys
import warnings

import onnx


class InferenceAborted(RuntimeError):
    """ONNX's shape inference ended its process (an assertion in its C++ code)."""


#: how long the child may take: a fork copies no other thread, so a lock one of them held at that
#: moment stays held in the child forever (a rare hang, but a hang); past this it is killed
CHILD_SECONDS = 120.0

#: ops whose ONNX shape inference aborts the process on a negative input dim (add any found)
ABORTING = frozenset({"Slice"})


def infer_shapes(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    """`onnx.shape_inference.infer_shapes(model, **kwargs)`, isolated on Linux where the graph has an
    op in `ABORTING` (see the module)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork") or not _has_aborting_op(model.graph):
        return onnx.shape_inference.infer_shapes(model, **kwargs)
    data = model.SerializeToString()  # before the fork: the child only parses, infers and writes
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns of fork in a threaded process: the child runs C++ and exits
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        status = 1
        try:
            os.close(read)
            try:
                out = b"\x00" + onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(data),
                                                                 **kwargs).SerializeToString()
            except Exception as err:  # a Python-level failure: the parent raises it as its own
                out = b"\x01" + f"{type(err).__name__}: {err}".encode("utf-8", "replace")
            with os.fdopen(write, "wb") as pipe:
                pipe.write(out)
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    out = _read_within(read, pid, CHILD_SECONDS)
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code == -9:  # killed here, past CHILD_SECONDS
        raise InferenceAborted(f"ONNX's shape inference did not finish within {CHILD_SECONDS:g} s")
    if not out or code != 0:
        raise InferenceAborted("ONNX's shape inference aborted on this graph (" + (
            f"signal {-code}" if code < 0 else f"exit {code}") + "): its dims are inconsistent somewhere "
            "(a kernel longer than its input?)")
    if out[:1] == b"\x01":
        raise RuntimeError(out[1:].decode("utf-8", "replace"))
    return onnx.ModelProto.FromString(out[1:])


def _has_aborting_op(graph: onnx.GraphProto) -> bool:
    """An op of `ABORTING` anywhere in the graph or its subgraphs."""
    for node in graph.node:
        if node.op_type in ABORTING and node.domain in ("", "ai.onnx"):
            return True
        for attribute in node.attribute:
            if any(_has_aborting_op(g) for g in (*([attribute.g] if attribute.HasField("g") else []),
                                                  *attribute.graphs)):
                return True
    return False


def _read_within(fd: int, pid: int, seconds: float) -> bytes:
    """Everything the child writes to `fd` until it closes it; b"" (the child killed) past `seconds`."""
    import select
    import signal
    import time

    chunks, deadline = [], time.monotonic() + seconds
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([pipe], [], [], max(left, 0.0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return b""
            chunk = pipe.read(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
