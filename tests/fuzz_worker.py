"""Field-aware fuzzer: mutated ONNX models and inputs through load, run, verify and DeepLift.

    python tests/fuzz_worker.py --cases N [--first I] [--seed S] [--log cases.jsonl] [--summary out.json]
                                [--timeout 30] [--memory-mib 3072] [--progress] [--summarize-only]

A fork server: torch, onnxruntime and every onnx-attr module a case touches are imported once
(and one intact seed is run) in a small warm parent; each case runs in a forked child under an address-space limit (RLIMIT_AS) and a wall-clock timeout, so a signal, a hang or a
runaway allocation is seen, not suffered. Each case is classified:

    result  - it ran all the way (load, run, verify, DeepLift)
    clear   - it ended in an `OnnxAttrError` (a documented error with a message)
    raw     - any other exception escaped (a bug)
    crash   - the child died of a signal (SIGSEGV, SIGFPE, ...)
    hang    - it ran past the timeout
    memory  - it hit the memory limit (MemoryError or an allocator failure)

Mutations are structure-aware, on the ModelProto: op types, attributes (edge values), dims,
dtypes, names (confusable, reserved, duplicated), graph inputs, initializers (edge values, wrong
lengths, sparse), opsets, plus byte-level damage and mutated input arrays. Seeds are the samples,
the onnx wheel's model data and hand-built graphs with data-sized ops and control flow.
Case i is a function of (--seed, i) alone, so a campaign runs in ranges (--first, --cases) that
add up; with --log each case is appended as one JSON line when it ends, a rerun skips the cases
already there (resume), and the log refuses to mix code versions. Prints (and with --summary
writes) one JSON summary of the whole log; peak RSS per case is reported, absolute and as growth
over the child's RSS right after the fork (what the case itself allocated).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import select
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children must not inherit a running thread pool
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

#: The budget every case runs under: small, so a blow-up past it is visible under the memory limit.
FUZZ_ELEMENTS = 2**24

EDGE_INTS = [0, 1, -1, 2, 3, -2, 7, 2**31 - 1, -2**31, 2**31, 2**32, 2**62, -2**63, 2**63 - 1, 10**4]
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e30, -1e30, 1e-30, float("nan"), float("inf"), float("-inf"), 3.0e38]
CONFUSABLE = ["self", "\uff58", "x", "def", "__class__", "double", "to", "", "a b", "\u212a", "forward", "initializers"]
OPS = sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain == ""})
DTYPES = [v for v in TensorProto.DataType.values()] + [99, -1]


# -- seeds ----------------------------------------------------------------------------------

def _vi(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _built_seeds() -> list[onnx.ModelProto]:
    """Small graphs reaching the data-sized ops, integer division and control flow."""
    F, I = TensorProto.FLOAT, TensorProto.INT64
    m = []

    def model(nodes, inputs, outputs, inits=(), opset=13):
        g = helper.make_graph(nodes, "seed", inputs, outputs, list(inits))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])

    x = _vi("x", F, [1, 2, 3, 4])
    y = _vi("y", F, None)
    shape4 = helper.make_tensor("s", I, [4], [1, 2, 3, 4])
    m.append(model([helper.make_node("Expand", ["x", "s"], ["e"]), helper.make_node("Relu", ["e"], ["y"])], [x], [y], [shape4]))
    m.append(model([helper.make_node("Tile", ["x", "s"], ["t"]), helper.make_node("Sigmoid", ["t"], ["y"])], [x], [y], [shape4]))
    m.append(model([helper.make_node("ConstantOfShape", ["s"], ["c"], value=helper.make_tensor("v", F, [1], [2.0])),
                    helper.make_node("Mul", ["c", "x"], ["y"])], [x], [y], [shape4]))
    m.append(model([helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")], [x], [y],
                   [helper.make_tensor("p", I, [8], [0, 0, 1, 1, 0, 0, 1, 1])]))
    m.append(model([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear")], [x], [y],
                   [helper.make_tensor("sc", F, [4], [1, 1, 2, 2])]))
    m.append(model([helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=F),
                    helper.make_node("Add", ["rf", "x"], ["y"])], [x], [y],
                   [helper.make_tensor("a", I, [], [0]), helper.make_tensor("b", I, [], [4]), helper.make_tensor("d", I, [], [1])]))
    xi = _vi("xi", I, [4])
    m.append(model([helper.make_node("Div", ["xi", "k"], ["q"]), helper.make_node("Mod", ["q", "k"], ["y"])], [xi], [y],
                   [helper.make_tensor("k", I, [4], [-1, 2, -3, 5])]))
    m.append(model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])], [x], [y],
                   [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")]))
    m.append(model([helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2), helper.make_node("Sub", ["a", "b"], ["y"])],
                   [x], [y], opset=18))
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["v", "one"], ["v2"]),
         helper.make_node("Concat", ["v2", "v2"], ["s2"], axis=0)],
        "body", [_vi("i", I, []), _vi("c", TensorProto.BOOL, []), _vi("v", F, [1])],
        [_vi("c2", TensorProto.BOOL, []), _vi("v2", F, [1]), _vi("s2", F, [2])])
    m.append(model([helper.make_node("Loop", ["n", "cond", "x0"], ["y", "scan"], body=body)], [_vi("x0", F, [1])],
                   [y, _vi("scan", F, None)],
                   [helper.make_tensor("n", I, [], [3]), helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
                    helper.make_tensor("one", F, [], [1.0])]))
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", F, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["o"])], "else", [], [_vi("o", F, None)])
    m.append(model([helper.make_node("ReduceSum", ["x"], ["s0"], keepdims=0), helper.make_node("Greater", ["s0", "zero"], ["g"]),
                    helper.make_node("If", ["g"], ["y"], then_branch=then, else_branch=other)], [x], [y],
                   [helper.make_tensor("zero", F, [], [0.0])]))
    m.append(model([helper.make_node("DFT", ["x3", ""], ["y"], axis=1)], [_vi("x3", F, [1, 8, 1])], [y], opset=17))
    return m


def load_seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted(SAMPLES.glob("*.onnx"))]
    for folder in ("simple", "pytorch-operator", "pytorch-converted", "real"):
        for path in sorted((ONNX_DATA / folder).glob("*/model.onnx")):
            if path.stat().st_size <= 300_000:
                seeds.append(path.read_bytes())
    seeds += [s.SerializeToString() for s in _built_seeds()]
    return seeds


# -- mutations ------------------------------------------------------------------------------

def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                found += _graphs(attr.g)
            for g in attr.graphs:
                found += _graphs(g)
    return found


def _names(graph: onnx.GraphProto) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    for node in graph.node:
        names += list(node.output)
    return names or ["x"]


def _mut_op(rng, model, graph):
    if graph.node:
        rng.choice(graph.node).op_type = rng.choice(OPS)


def _mut_attr(rng, model, graph):
    if not graph.node:
        return
    node = rng.choice(graph.node)
    if node.attribute and rng.random() < 0.8:
        attr = rng.choice(node.attribute)
        if attr.type == onnx.AttributeProto.INT:
            attr.i = max(-2**63, min(2**63 - 1, rng.choice(EDGE_INTS)))
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = rng.choice(EDGE_FLOATS)
        elif attr.type == onnx.AttributeProto.INTS and attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = max(-2**63, min(2**63 - 1, rng.choice(EDGE_INTS)))
        elif attr.type == onnx.AttributeProto.INTS:
            attr.ints.extend([rng.choice(EDGE_INTS) for _ in range(rng.randint(1, 4))])
        elif attr.type == onnx.AttributeProto.STRING:
            attr.s = rng.choice([b"", b"constant", b"reflect", b"edge", b"nearest", b"linear", b"cubic", b"DCR",
                                 b"CRD", b"\xff\xfe", b"wrap"])
        elif rng.random() < 0.5:
            node.attribute.remove(attr)
    else:
        name = rng.choice(["axis", "axes", "num_outputs", "keepdims", "perm", "group", "strides", "pads", "to",
                           "mode", "fmod", "detect_negative", "blocksize", "k", "epsilon", "alpha"])
        value = rng.choice([rng.choice(EDGE_INTS), [rng.choice(EDGE_INTS)] * rng.randint(1, 4), rng.choice(EDGE_FLOATS)])
        try:
            node.attribute.append(helper.make_attribute(name, value))
        except (ValueError, TypeError, OverflowError):
            pass


def _mut_dims(rng, model, graph):
    choices = [v for v in (*graph.input, *graph.output, *graph.value_info) if v.type.HasField("tensor_type")]
    if rng.random() < 0.5 and graph.initializer:
        t = rng.choice(graph.initializer)
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = max(0, min(2**62, abs(rng.choice(EDGE_INTS))))
        return
    if choices:
        shape = rng.choice(choices).type.tensor_type.shape
        if shape.dim:
            dim = rng.choice(shape.dim)
            if rng.random() < 0.3:
                dim.dim_param = rng.choice(["N", "batch", "\uff4e", ""])
            else:
                dim.dim_value = rng.choice([0, 1, 2, 3, 5, 2**31, 2**40])
        else:
            shape.dim.add().dim_value = rng.choice([0, 1, 2, 7])


def _mut_dtype(rng, model, graph):
    if graph.initializer and rng.random() < 0.5:
        rng.choice(graph.initializer).data_type = rng.choice(DTYPES) & 0x7FFFFFFF
    else:
        values = [v for v in (*graph.input, *graph.output) if v.type.HasField("tensor_type")]
        if values:
            rng.choice(values).type.tensor_type.elem_type = rng.choice(DTYPES) & 0x7FFFFFFF


def _mut_name(rng, model, graph):
    names = _names(graph)
    if not graph.node:
        return
    node = rng.choice(graph.node)
    pick = rng.random()
    if pick < 0.4 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(names + CONFUSABLE)
    elif pick < 0.6 and node.output:
        node.output[rng.randrange(len(node.output))] = rng.choice(names + CONFUSABLE)
    elif pick < 0.8:
        node.name = rng.choice(CONFUSABLE + [n.name for n in graph.node])
    elif graph.input:
        old = graph.input[0].name
        new = rng.choice(CONFUSABLE[:-2])
        graph.input[0].name = new
        for n in graph.node:
            n.input[:] = [new if i == old else i for i in n.input]


def _mut_inputs(rng, model, graph):
    pick = rng.random()
    if pick < 0.3 and graph.input:
        graph.input.remove(rng.choice(graph.input))
    elif pick < 0.6:
        graph.input.append(_vi(rng.choice(CONFUSABLE[:4] + ["extra"]), rng.choice([1, 6, 7, 9]), [rng.choice([1, 2, "N"])]))
    elif graph.initializer:  # a weight becomes a graph input too (IR<4 style) or only an input
        t = rng.choice(graph.initializer)
        graph.input.append(helper.make_tensor_value_info(t.name, t.data_type if t.data_type in (1, 6, 7, 9) else 1,
                                                         list(t.dims)))
        if rng.random() < 0.5:
            graph.initializer.remove(t)


def _mut_initializer(rng, model, graph):
    if not graph.initializer:
        return
    t = rng.choice(graph.initializer)
    pick = rng.random()
    try:
        array = numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - already broken: break it further
        array = None
    if pick < 0.45 and array is not None and array.size and array.size <= 4096 and array.dtype.kind in "iuf":
        flat = array.reshape(-1).copy()
        if flat.dtype.kind == "f":
            flat[rng.randrange(flat.size)] = rng.choice(EDGE_FLOATS)
        else:
            info = np.iinfo(flat.dtype)
            flat[rng.randrange(flat.size)] = rng.choice([info.min, info.max, -1, 0, 2**20 % (info.max + 1)])
        t.CopyFrom(numpy_helper.from_array(flat.reshape(array.shape), t.name))
    elif pick < 0.65 and t.HasField("raw_data"):
        data = bytearray(t.raw_data)
        t.raw_data = bytes(data[: rng.randrange(len(data) + 1)]) if rng.random() < 0.5 else bytes(data) + bytes(rng.randint(1, 9))
    elif pick < 0.75 and array is not None and array.size and array.size <= 4096 and array.dtype.kind in "if":
        flat = array.reshape(-1)
        nz = np.flatnonzero(flat)
        sparse = helper.make_sparse_tensor(numpy_helper.from_array(flat[nz], t.name),
                                           numpy_helper.from_array(nz.astype(np.int64), t.name + "_idx"), list(array.shape))
        graph.initializer.remove(t)
        graph.sparse_initializer.append(sparse)
    elif pick < 0.85:
        onnx.external_data_helper.set_external_data(t, rng.choice(["w.bin", "../etc/passwd", "a" * 5000, "/dev/zero"]))
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
    else:
        graph.initializer.remove(t)


def _mut_opset(rng, model, graph):
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = rng.choice([1, 6, 7, 9, 10, 11, 13, 17, 18, 21, 25, 99])
    if rng.random() < 0.2:
        model.ir_version = rng.choice([1, 3, 4, 8, 10, 99])


def _mut_function(rng, model, graph):
    if graph.node:
        node = rng.choice(graph.node)
        model.functions.append(helper.make_function(rng.choice(["", "ai.onnx", "local"]), node.op_type, ["a"], ["b"],
                                                    [helper.make_node("Neg", ["a"], ["b"])], [helper.make_opsetid("", 13)]))


MUTATIONS = [_mut_op, _mut_attr, _mut_attr, _mut_dims, _mut_dtype, _mut_name, _mut_inputs, _mut_initializer,
             _mut_initializer, _mut_opset, _mut_function]


def _byte_damage(rng, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(max(len(data), 1))
        kind = rng.choice(["flip", "truncate", "insert", "duplicate"])
        if kind == "flip" and data:
            data[at] = rng.randrange(256)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            data[at:at] = data[at:at + rng.randint(1, 64)]
    return bytes(data)


def mutate(rng: random.Random, seed: bytes) -> tuple[bytes, list[str]]:
    """A mutated model and the names of the mutations applied (none: the intact seed)."""
    roll = rng.random()
    if roll < 0.15:
        return seed, []
    if roll < 0.25:
        return _byte_damage(rng, seed), ["bytes"]
    model = onnx.ModelProto()
    model.ParseFromString(seed)
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        graph = rng.choice(_graphs(model.graph))
        try:
            mutation(rng, model, graph)
        except (ValueError, TypeError, IndexError, OverflowError):  # onnx's helpers refuse some combinations
            continue
        done.append(mutation.__name__[5:])
    try:
        return model.SerializeToString(), done
    except Exception:  # noqa: BLE001 - protobuf refuses some values: send the intact seed
        return seed, []


def mutate_inputs(rng: random.Random, arrays: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for a in arrays:
        roll = rng.random()
        a = np.array(a)
        if roll < 0.6 or a.size == 0:
            out.append(a)
            continue
        if roll < 0.85:
            flat = a.reshape(-1).copy()
            if flat.dtype.kind == "f":
                flat[rng.randrange(flat.size)] = rng.choice(EDGE_FLOATS)
            elif flat.dtype.kind in "iu":
                info = np.iinfo(flat.dtype)
                flat[:] = rng.choice([info.min, max(-1, info.min), 0, info.max, 2**20 % (info.max + 1)])
            out.append(flat.reshape(a.shape))
        elif roll < 0.95:
            out.append(a.reshape(-1)[: rng.randrange(a.size + 1)])
        else:
            out.append(a.astype(rng.choice([np.int64, np.float64, np.bool_, np.float16, np.uint8])))
    return out


# -- one case -------------------------------------------------------------------------------

def exercise(model_bytes: bytes, case_seed: int) -> tuple[str, str]:
    """(class, detail) of load -> run -> verify -> DeepLift on one mutated model."""
    import warnings

    import onnx_attr
    from onnx_attr.importing.inputs import sample_inputs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx_attr.load(model_bytes, budget=onnx_attr.Budget(max_elements=FUZZ_ELEMENTS,
                                                                         max_loop_iterations=2000))
            arrays = mutate_inputs(random.Random(case_seed), sample_inputs(model.inputs, case_seed))
            feeds = {s.name: a for s, a in zip(model.inputs, arrays)}
            model.run(feeds)
            model.verify(feeds)
            if any(s.differentiable for s in model.inputs):
                onnx_attr.DeepLift(model).attribute(feeds, target=0 if model.outputs[0].shape else None)
        return "result", ""
    except onnx_attr.OnnxAttrError as err:
        return "clear", type(err).__name__
    except MemoryError:
        return "memory", "MemoryError"
    except Exception as err:  # noqa: BLE001 - an undocumented exception is what this looks for
        if "can't allocate memory" in str(err) or "not enough memory" in str(err):
            return "memory", f"{type(err).__name__}: {str(err)[:200]}"
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "onnx_attr" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return "raw", f"{type(err).__name__} at {where}: {str(err)[:300]}"


def _status_kib(field: str) -> int:
    """A size from /proc/self/status (VmSize, VmRSS), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_case(model_bytes: bytes, case_seed: int, timeout: float, memory: int) -> dict:
    """Fork, run `exercise` in the child under the limits, classify how the child ended."""
    read_end, write_end = os.pipe()
    limit = _status_kib("VmSize") * 1024 + memory
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        start_rss = _status_kib("VmRSS") / 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            kind, detail = exercise(model_bytes, case_seed)
        except MemoryError:
            kind, detail = "memory", "MemoryError"
        except BaseException as err:  # noqa: BLE001 - report, never let the child escape into the server
            kind, detail = "raw", f"{type(err).__name__}: {str(err)[:300]}"
        report = {"kind": kind, "detail": detail, "start_rss_mib": round(start_rss, 1)}
        os.write(write_end, json.dumps(report).encode()[:60000])
        os._exit(0)
    os.close(write_end)
    chunks, hung = [], False
    while True:
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([read_end], [], [], left)
        if ready:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_end)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    out = {"seconds": round(seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if hung:
        return {**out, "kind": "hang", "detail": f"over {timeout:g} s"}
    if os.WIFSIGNALED(status):
        return {**out, "kind": "crash", "detail": signal.Signals(os.WTERMSIG(status)).name}
    try:
        return {**out, **json.loads(b"".join(chunks))}
    except ValueError:
        return {**out, "kind": "crash", "detail": f"exit {os.WEXITSTATUS(status)} without a report"}


def warm(seeds: list[bytes]) -> None:
    """Import, once in the server, everything a case touches: `import onnx_attr` is lazy, and a
    child that imported the loader (onnx2torch, torchvision, torch._dynamo), the methods and
    verify itself paid ~2 s of every case for it. One intact seed run in the server also fills
    the registries and caches the first call builds."""
    import importlib

    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    for name in ("importing.loader", "methods", "importing.verify", "deeplift.engine", "importing.inputs",
                 "deeplift.rewrite", "importing.converters"):
        importlib.import_module(f"onnx_attr.{name}")
    exercise(seeds[0], 0)


def _code_version() -> str:
    """The commit the cases ran on (with '+dirty' when the code differs from it): a log resumed on
    other code would add up cases of two programs."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "onnx_attr", "tests/fuzz_worker.py")
    return commit + ("+dirty" if dirty else "")


def case_plan(seed: int, index: int, n_seeds: int) -> tuple[int, int]:
    """(case seed, seed model) of case `index`: a function of the index alone, so any range of
    indices can run in any process, in any order, and the ranges add up to one campaign."""
    rng = random.Random(seed * 1_000_003 + index)
    return rng.randrange(2**31), rng.randrange(n_seeds)


def campaign(first: int, cases: int, seed: int, timeout: float, memory: int, progress: bool,
             log_path: str | None) -> list[dict]:
    """Run cases first..first+cases-1 (those not yet in the log), appending one JSON line per case."""
    seeds = load_seeds()
    warm(seeds)
    version = _code_version()
    done_before = set()
    log = None
    if log_path:
        for line in _read_log(log_path, seed, version):
            done_before.add(line["case"])
        log = open(log_path, "a")
        if not done_before and os.path.getsize(log_path) == 0:
            log.write(json.dumps({"header": True, "seed": seed, "code": version, "timeout_s": timeout,
                                  "memory_limit_mib_over_server": memory // 2**20,
                                  "elements_budget": FUZZ_ELEMENTS, "seed_models": len(seeds)}) + "\n")
    records: list[dict] = []
    started = time.monotonic()
    todo = [i for i in range(first, first + cases) if i not in done_before]
    for n, index in enumerate(todo, 1):
        case_seed, which = case_plan(seed, index, len(seeds))
        data, done = mutate(random.Random(case_seed), seeds[which])
        outcome = run_case(data, case_seed, timeout, memory)
        record = {"case": index, "case_seed": case_seed, "seed_model": which, "mutations": done,
                  **outcome}
        records.append(record)
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if progress and n % 500 == 0:
            print(f"{n}/{len(todo)} {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    if log:
        log.close()
    return records


def _read_log(path: str, seed: int, version: str) -> list[dict]:
    """The case records of a log, after checking it belongs to this seed and this code."""
    if not os.path.exists(path):
        open(path, "w").close()
        return []
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and lines[0].get("header"):
        head = lines[0]
        if head["seed"] != seed or head["code"] != version:
            raise SystemExit(f"{path} was written with seed {head['seed']} on code {head['code']}; this is seed "
                             f"{seed} on {version}: use another log")
    return [line for line in lines if not line.get("header")]


def summarize(records: list[dict], header: dict | None = None) -> dict:
    """One summary over case records: outcome counts, clear-error kinds, failures to reproduce,
    peak RSS per case (absolute, and its growth over the child's RSS right after the fork)."""
    counts = collections.Counter(r["kind"] for r in records)
    clear = collections.Counter(r["detail"] for r in records if r["kind"] == "clear")
    mutated = collections.Counter(m for r in records for m in (r["mutations"] or ["none"]))
    peaks = sorted(r["peak_rss_mib"] for r in records) or [0.0]
    growth = sorted(round(r["peak_rss_mib"] - r["start_rss_mib"], 1) for r in records if "start_rss_mib" in r) or [0.0]
    indices = sorted(r["case"] for r in records)

    def spread(values: list[float]) -> dict:
        return {"p50": values[len(values) // 2], "p99": values[int(len(values) * 0.99)], "max": values[-1]}

    heavy = sorted(records, key=lambda r: r["peak_rss_mib"], reverse=True)[:10]
    return {
        **({k: v for k, v in header.items() if k != "header"} if header else {}),
        "cases": len(records), "case_indices": f"{indices[0]}..{indices[-1]}" if indices else "",
        "outcomes": dict(counts), "clear_errors": dict(clear), "mutations": dict(mutated),
        "peak_rss_mib": spread(peaks), "peak_rss_growth_mib": spread(growth),
        "case_seconds": {**spread(sorted(r["seconds"] for r in records) or [0.0]),
                         "total": round(sum(r["seconds"] for r in records), 1)},
        "heaviest": [{k: r[k] for k in ("case", "case_seed", "seed_model", "mutations", "peak_rss_mib", "kind")}
                     for r in heavy],
        **{kind: [r for r in records if r["kind"] == kind][:100] for kind in ("raw", "crash", "hang", "memory")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="how many cases, from --first on")
    parser.add_argument("--first", type=int, default=0, help="index of the first case (ranges add up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--memory-mib", type=int, default=3072)
    parser.add_argument("--log", help="JSON lines, one per case; cases already in it are skipped (resume)")
    parser.add_argument("--summary", help="write the summary of the whole log (or of this run) here")
    parser.add_argument("--summarize-only", action="store_true", help="summarize --log without running cases")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        records = campaign(args.first, args.cases, args.seed, args.timeout, args.memory_mib * 2**20, args.progress,
                           args.log)
    header = None
    if args.log:
        lines = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip()]
        header = lines[0] if lines and lines[0].get("header") else None
        records = [line for line in lines if not line.get("header")]
    summary = summarize(records, header)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
