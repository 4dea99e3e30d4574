"""onnxruntime's session, and its first run of each model in a child process.

onnxruntime is a native library: a file it mishandles can end the process that runs it (a
segfault in one of its kernels: a ViT through its own transformer optimizer and fp16 conversion
crashes its CPU session), and with it our command, with no message and no report. So the first
run of each model in a process happens in a child forked from a small server that has imported
only onnxruntime and numpy (multiprocessing's forkserver): if the child dies, the caller gets a
clear error naming the signal; if it succeeds, the later runs of that model (verify's jittered
runs, the perturbation methods on the graph itself) stay in this process. Where the platform has
no forkserver (Windows, or ONNX_ATTR_ORT_IN_PROCESS=1), every run stays in this process.

This module imports no torch, so the server starts in a fraction of a second.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from typing import Any, Optional, Sequence

import numpy as np

#: ops whose onnxruntime result depends on its thread count (a one-thread run is their definition):
#: DynamicQuantizeLSTM quantizes h over the whole batch on one thread, over one chunk of rows per thread
#: past a few rows (each chunk its own range), so a batch of two differs by whole quantization steps
THREAD_DEPENDENT = frozenset({"DynamicQuantizeLSTM"})

_checked: set = set()  # the models (id, size) whose first run in a child came back


class SessionLoadError(RuntimeError):
    """onnxruntime refused to create a session for the file (before any input was fed)."""


def session_run(model_bytes: bytes, feeds: dict[str, Any], outputs: Sequence[str], optimize: bool,
                folder: Optional[str], one_thread: bool) -> list:
    """One onnxruntime CPU session over the serialised model, run once on `feeds`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # its errors come back as exceptions; its log would repeat them raw
    # its workers sleep between ops instead of spinning: on a shared machine a spinning pool takes
    # the cores the running op needs (the results do not change: same threads, same partitioning)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if folder is not None:  # weights left in their files: onnxruntime reads them there
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if one_thread:
        options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own Fail / InvalidGraph / ... types
        raise SessionLoadError(str(err)) from err
    return session.run(list(outputs), {name: _typed(value) for name, value in feeds.items()})


def _typed(value: Any) -> Any:
    """onnxruntime's Python API refuses ml_dtypes' bfloat16 arrays; their bits go in typed by hand."""
    if isinstance(value, np.ndarray) and value.dtype.name == "bfloat16":
        import onnx
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(value).view(np.uint16),
                                                               onnx.TensorProto.BFLOAT16)
    return value


def first_run_survives(key: tuple, model_bytes: bytes, feeds: dict[str, Any], outputs: Sequence[str],
                       optimize: bool, folder: Optional[str], one_thread: bool) -> Optional[str]:
    """None where this model's first run (here, in a child) came back, with an answer or an error of
    onnxruntime's own (which the caller meets again in this process); else what ended the child."""
    if key in _checked:
        return None
    context = _context()
    if context is None:
        return None
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, model_bytes, feeds, outputs, optimize, folder, one_thread),
                            daemon=True)
    # multiprocessing would have the child import the caller's main script first (its "safe importing of
    # main" idiom): a user's script without the idiom would run again there, and a console script would
    # import torch. The child needs nothing of it, so it starts from an empty __main__
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        child.start()
    except (AssertionError, OSError):  # a daemonic caller (a multiprocessing pool's worker), no processes left
        send.close()
        receive.close()
        return None
    finally:
        if main is not None:
            sys.modules["__main__"] = main
    send.close()
    try:
        receive.recv()  # the child's answer: an "ok" or onnxruntime's error message
        came_back = True
    except EOFError:  # it died before answering
        came_back = False
    finally:
        receive.close()
        child.join()
    if came_back and child.exitcode == 0:
        _checked.add(key)
        return None
    code = child.exitcode or 0
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _child(send, model_bytes, feeds, outputs, optimize, folder, one_thread) -> None:
    try:
        session_run(model_bytes, feeds, outputs, optimize, folder, one_thread)
        send.send("ok")
    except Exception as err:  # onnxruntime's own error: the caller's in-process run raises it with context
        send.send(f"error: {err}")
    send.close()


_CONTEXT: list = []


def _context():
    """multiprocessing's forkserver context, preloading this module; None where there is none."""
    if _CONTEXT:
        return _CONTEXT[0]
    found = None
    if os.environ.get("ONNX_ATTR_ORT_IN_PROCESS", "") not in ("1", "true", "yes"):
        import multiprocessing

        try:
            found = multiprocessing.get_context("forkserver")
            found.set_forkserver_preload(["onnx_attr.importing.ort_session", "onnxruntime"])
        except ValueError:
            found = None
    _CONTEXT.append(found)
    return found
