"""Random small graphs for the batch walk's property test (tests/test_batch_graph.py): chains of the
ops the walk knows (and some it must decline), with the edge attributes exporters write (negative
axes, keepdims 0/1, axes as attributes or inputs across opsets, shape values built from Shape ->
Gather/Slice -> Concat, the batch on axis 1 beside a state [2, n, 4], batch sizes 1 and 3).
`build(random.Random(seed))` gives (model, feeds) or None; `check` compares the walk with the
probe's own runs. The builder tracks shapes only as far as it needs to pick valid attributes:
the probe is the oracle, not the builder."""

from __future__ import annotations

import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnx_attr
from onnx_attr.importing import batch, batch_graph
FLOAT, I64 = TensorProto.FLOAT, TensorProto.INT64

def build(rng: random.Random):
    opset = rng.choice([11, 13, 13, 15, 17, 18])
    n = rng.choice([1, 3])
    inits, nodes = {}, []
    cnt = [0]
    def fresh(p="t"):
        cnt[0] += 1; return f"{p}{cnt[0]}"
    def const(arr, p="c"):
        name = fresh(p); inits[name] = arr; return name
    def w(*s): return (np.random.default_rng(rng.randrange(1 << 30)).standard_normal(s) * rng.choice([1, 5, 30])).astype(np.float32)
    layout = rng.choice(["img", "seq", "state"])
    if layout == "img":
        inputs = [("x", ["n", 2, 4, 4])]; cur, shape, bax = "x", [n, 2, 4, 4], 0
        feeds = {"x": w(n, 2, 4, 4)}
    elif layout == "seq":
        inputs = [("x", ["n", 5, 4])]; cur, shape, bax = "x", [n, 5, 4], 0
        feeds = {"x": w(n, 5, 4)}
    else:
        inputs = [("h", [2, "n", 4]), ("x", [2, "n", 4])]; cur, shape, bax = "x", [2, n, 4], 1
        feeds = {"h": w(2, n, 4), "x": w(2, n, 4)}
    shape_value = None
    def batch_value():
        s = fresh("s"); g = fresh("g"); u = fresh("u")
        nodes.append(helper.make_node("Shape", [cur], [s]))
        nodes.append(helper.make_node("Gather", [s, const(np.array(bax - len(shape) if rng.random() < .5 else bax, np.int64))], [g], axis=0))
        if opset >= 13:
            nodes.append(helper.make_node("Unsqueeze", [g, const(np.array([0], np.int64))], [u]))
        else:
            nodes.append(helper.make_node("Unsqueeze", [g], [u], axes=[0]))
        return u
    for _ in range(rng.randint(1, 5)):
        r = len(shape)
        op = rng.choice(["unary", "addc", "transpose", "softmax", "reduce", "unsqueeze", "squeeze", "reshapeB",
                         "flatten", "matmul", "slice", "concat", "cumsum", "topk", "pad", "gather", "layernorm",
                         "expandB", "tile", "split", "argmax", "mulB", "reshape0", "shapeslice", "conv", "resize", "where",
                         "gemm", "lstm", "quant", "expandx", "castlike", "clip", "prelu"])
        out = fresh()
        ax = rng.randrange(-r, r) if r else 0
        axp = ax % r if r else 0
        try:
            if op == "unary":
                nodes.append(helper.make_node(rng.choice(["Relu", "Tanh", "Sigmoid", "Abs", "Neg", "Exp"]), [cur], [out]))
            elif op == "addc":
                k = rng.randint(0, r)
                cs = [rng.choice([1, d]) for d in shape[r - k:]]
                nodes.append(helper.make_node(rng.choice(["Add", "Mul", "Sub"]), [cur, const(w(*cs) if cs else w(1).reshape(()))] if rng.random() < .5 else [const(w(*cs) if cs else w(1).reshape(())), cur], [out]))
            elif op == "transpose":
                perm = list(range(r)); rng.shuffle(perm)
                nodes.append(helper.make_node("Transpose", [cur], [out], perm=perm)); shape = [shape[p] for p in perm]; bax = perm.index(bax)
            elif op == "softmax":
                nodes.append(helper.make_node(rng.choice(["Softmax", "LogSoftmax"]), [cur], [out], axis=ax))
            elif op in ("reduce", "argmax"):
                keep = rng.choice([0, 1])
                if op == "argmax":
                    nodes.append(helper.make_node("ArgMax", [cur], [fresh("a")], axis=ax, keepdims=keep))
                    nodes.append(helper.make_node("Cast", [nodes[-1].output[0]], [out], to=FLOAT))
                    axes = [axp]
                else:
                    axes = sorted(set(rng.sample(range(r), rng.randint(1, r))))
                    sax = [a - r if rng.random() < .5 else a for a in axes]
                    name = rng.choice(["ReduceSum", "ReduceMean", "ReduceMax"])
                    if (name == "ReduceSum" and opset >= 13) or opset >= 18:
                        nodes.append(helper.make_node(name, [cur, const(np.array(sax, np.int64))], [out], keepdims=keep))
                    else:
                        nodes.append(helper.make_node(name, [cur], [out], keepdims=keep, axes=sax))
                if keep:
                    shape = [1 if i in axes else d for i, d in enumerate(shape)]
                else:
                    if bax in axes: bax = None
                    else: bax -= sum(a < bax for a in axes)
                    shape = [d for i, d in enumerate(shape) if i not in axes]
                    if not shape: return None
            elif op == "unsqueeze":
                a = rng.randrange(-(r + 1), r + 1); ap = a % (r + 1)
                if opset >= 13: nodes.append(helper.make_node("Unsqueeze", [cur, const(np.array([a], np.int64))], [out]))
                else: nodes.append(helper.make_node("Unsqueeze", [cur], [out], axes=[a]))
                shape = shape[:ap] + [1] + shape[ap:]; bax = bax + (ap <= bax)
            elif op == "squeeze":
                ones = [i for i, d in enumerate(shape) if d == 1 and i != bax]
                if not ones: continue
                a = rng.choice(ones)
                if opset >= 13: nodes.append(helper.make_node("Squeeze", [cur, const(np.array([a - r], np.int64))], [out]))
                else: nodes.append(helper.make_node("Squeeze", [cur], [out], axes=[a]))
                shape = shape[:a] + shape[a + 1:]; bax -= a < bax
            elif op == "reshapeB":
                u = batch_value(); t = fresh()
                pre = rng.choice([[], [1]] if bax == 0 else [[shape[0]] if bax == 1 else [-1]])
                nodes.append(helper.make_node("Concat", ([const(np.array(pre, np.int64))] if pre else []) + [u, const(np.array([-1], np.int64))], [t], axis=0))
                nodes.append(helper.make_node("Reshape", [cur, t], [out]))
                rest = int(np.prod(shape)) // n // max(1, int(np.prod(pre)) if pre and pre != [-1] else 1)
                shape = (pre if pre != [-1] else [1]) + [n, rest] if pre else [n, int(np.prod(shape)) // n]
                bax = 1 if pre else 0
                if pre == [-1]: return None
            elif op == "flatten":
                a = rng.randrange(-r, r + 1)
                nodes.append(helper.make_node("Flatten", [cur], [out], axis=a))
                ap = a % r if a < 0 else a
                shape = [int(np.prod(shape[:ap])), int(np.prod(shape[ap:]))]; bax = None  # oracle decides
                return finish(nodes, inputs, out, inits, opset, feeds)
            elif op == "matmul":
                k = shape[-1]; m = rng.choice([2, 3])
                extra = rng.choice([[], [1], [2, 1], [1, 1]])
                if rng.random() < .5:
                    nodes.append(helper.make_node("MatMul", [cur, const(w(*extra, k, m))], [out]))
                    rank = max(r, len(extra) + 2); bax += rank - r
                    shape = [1] * (rank - r) + shape[:-1] + [m]
                    # broadcast: recompute lazily by oracle
                else:
                    nodes.append(helper.make_node("MatMul", [const(w(*extra, m, shape[-2] if r > 1 else 1)), cur], [out]))
                return finish(nodes, inputs, out, inits, opset, feeds)
            elif op == "slice":
                d = shape[axp]
                if d < 2: continue
                if opset >= 11:
                    nodes.append(helper.make_node("Slice", [cur, const(np.array([1], np.int64)), const(np.array([d], np.int64)), const(np.array([ax], np.int64))], [out]))
                shape[axp] = d - 1
            elif op == "concat":
                nodes.append(helper.make_node("Concat", [cur, cur], [out], axis=ax)); shape[axp] *= 2
            elif op == "cumsum":
                nodes.append(helper.make_node("CumSum", [cur, const(np.array(ax, np.int64))], [out], reverse=rng.choice([0, 1])))
            elif op == "topk":
                k = rng.randint(1, shape[axp]) if shape[axp] else 1
                nodes.append(helper.make_node("TopK", [cur, const(np.array([k], np.int64))], [out, fresh("ix")], axis=ax)); shape[axp] = k
            elif op == "pad":
                p = [0] * (2 * r); p[axp] = rng.randint(0, 1); p[r + axp] = rng.randint(0, 2)
                if opset >= 11: nodes.append(helper.make_node("Pad", [cur, const(np.array(p, np.int64))], [out], mode=rng.choice(["constant", "edge"])))
                else: nodes.append(helper.make_node("Pad", [cur], [out], pads=p))
                shape[axp] += p[axp] + p[r + axp]
            elif op == "gather":
                idx = np.array(rng.choice([[0], [-1], [0, -1], 0]), np.int64)
                nodes.append(helper.make_node("Gather", [cur, const(idx)], [out], axis=ax))
                shape = shape[:axp] + list(idx.shape) + shape[axp + 1:]
                if bax is not None and axp < bax: bax += idx.ndim - 1
                elif axp == bax: bax = None
            elif op == "layernorm":
                if opset < 17: continue
                nodes.append(helper.make_node("LayerNormalization", [cur, const(w(*shape[axp:]))], [out], axis=ax))
            elif op in ("expandB", "mulB", "tile"):
                if bax is None: continue
                u = batch_value(); t = fresh()
                ent = [const(np.array([d], np.int64)) if i != bax else u for i, d in enumerate(shape)]
                if op == "tile":
                    ent = [const(np.array([1], np.int64)) if i != bax else u for i in range(r)]
                    nodes.append(helper.make_node("Concat", ent, [t], axis=0))
                    c = [d if i != bax else 1 for i, d in enumerate(shape)]
                    e = fresh(); nodes.append(helper.make_node("Tile", [const(w(*c)), t], [e]))
                    nodes.append(helper.make_node("Add", [cur, e], [out]))
                elif op == "expandB":
                    nodes.append(helper.make_node("Concat", ent[rng.randint(0, bax):], [t], axis=0))
                    c = [1] * rng.randint(0, 2) + [d if i != bax and rng.random() < .5 else 1 for i, d in enumerate(shape)]
                    e = fresh(); nodes.append(helper.make_node("Expand", [const(w(*c)), t], [e]))
                    nodes.append(helper.make_node("Add", [cur, e], [out]))
                    return finish(nodes, inputs, out, inits, opset, feeds)
                else:
                    nodes.append(helper.make_node("Concat", ent, [t], axis=0))
                    e = fresh(); nodes.append(helper.make_node("ConstantOfShape", [t], [e], value=numpy_helper.from_array(np.array([0.5], np.float32))))
                    nodes.append(helper.make_node("Mul", [cur, e], [out]))
            elif op == "reshape0":
                if bax is None or bax > 1: continue
                t = [0] * (bax + 1) + [-1]
                if rng.random() < .5 and bax == 0 and r > 2: t = [0, shape[1], -1]
                nodes.append(helper.make_node("Reshape", [cur, const(np.array(t, np.int64))], [out]))
                return finish(nodes, inputs, out, inits, opset, feeds)
            elif op == "shapeslice":
                if bax is None: continue
                s_ = fresh("s"); t = fresh()
                st, en = rng.choice([(0, bax + 1), (-r, bax + 1 - r if bax + 1 - r < 0 else r), (bax, bax + 1)])
                if opset >= 15 and rng.random() < .5:
                    nodes.append(helper.make_node("Shape", [cur], [s_], start=st, end=en))
                else:
                    s0 = fresh("s"); nodes.append(helper.make_node("Shape", [cur], [s0]))
                    nodes.append(helper.make_node("Slice", [s0, const(np.array([st], np.int64)), const(np.array([en], np.int64))], [s_]))
                nodes.append(helper.make_node("Concat", [s_, const(np.array([-1], np.int64))], [t], axis=0))
                nodes.append(helper.make_node("Reshape", [cur, t], [out]))
                return finish(nodes, inputs, out, inits, opset, feeds)
            elif op == "conv":
                if r != 4: continue
                nodes.append(helper.make_node("Conv", [cur, const(w(3, shape[1], 3, 3))], [out], pads=[1, 1, 1, 1]))
                shape = [shape[0], 3] + shape[2:]
            elif op == "resize":
                if r != 4: continue
                sc = [1.0, 1.0, 2.0, 2.0] if rng.random() < .7 else [2.0, 1.0, 1.0, 1.0]
                if opset >= 11:
                    nodes.append(helper.make_node("Resize", [cur, const(np.zeros(0, np.float32)), const(np.array(sc, np.float32))], [out], mode=rng.choice(["nearest", "linear"])))
                shape = [int(d * f) for d, f in zip(shape, sc)]
            elif op == "where":
                cs = [rng.choice([1, d]) for d in shape[rng.randint(0, r):]]
                nodes.append(helper.make_node("Where", [const(np.random.default_rng(rng.randrange(99)).random(cs) > .5), cur, const(w(1))], [out]))
            elif op == "gemm":
                if r != 2: continue
                ta = rng.random() < .3
                src = cur
                if ta:
                    src = fresh(); nodes.append(helper.make_node("Transpose", [cur], [src], perm=[1, 0])); bax = 1 - bax; shape = shape[::-1]
                c = w(*rng.choice([[3], [1, 3], [shape[1 - ta if ta else 0], 3]]))
                nodes.append(helper.make_node("Gemm", [src, const(w(shape[0] if ta else shape[1], 3)), const(c)], [out], transA=int(ta)))
                return finish(nodes, inputs, out, inits, opset, feeds)
            elif op == "lstm":
                if r != 3 or opset < 14: continue
                lay = rng.choice([0, 1])
                H = 3; ins_ = [cur, const(w(1, 4 * H, shape[2])), const(w(1, 4 * H, H))]
                nodes.append(helper.make_node("LSTM", ins_, [out, fresh()], hidden_size=H, layout=lay))
                return finish(nodes, inputs, out, inits, opset, feeds)
            elif op == "quant":
                if opset < 13: continue
                a = rng.randrange(r); d = shape[a]
                per = rng.random() < .5
                sc = np.abs(w(d)) + .05 if per else np.array(0.05, np.float32)
                zp = np.zeros(d if per else (), np.int8)
                q = fresh(); kw = {"axis": a} if per else {}
                nodes.append(helper.make_node("QuantizeLinear", [cur, const(sc), const(zp)], [q], **kw))
                nodes.append(helper.make_node("DequantizeLinear", [q, const(sc), const(zp)], [out], **kw))
            elif op == "expandx":
                if bax is None: continue
                u = batch_value(); t = fresh()
                ent = [const(np.array([rng.choice([1, d]) if i != bax else 1], np.int64)) if i != bax else (u if rng.random() < .6 else const(np.array([1], np.int64))) for i, d in enumerate(shape)]
                nodes.append(helper.make_node("Concat", ent, [t], axis=0))
                nodes.append(helper.make_node("Expand", [cur, t], [out]))
            elif op == "castlike":
                if opset < 15: continue
                nodes.append(helper.make_node("CastLike", [cur, const(w(*[1] * rng.randint(0, 4)))], [out]))
            elif op == "clip":
                nodes.append(helper.make_node("Clip", [cur, const(np.array(-1, np.float32)), const(np.array(1, np.float32))], [out]))
            elif op == "prelu":
                cs = [rng.choice([1, d]) for d in shape[rng.randint(0, r):]]
                nodes.append(helper.make_node("PRelu", [cur, const(np.abs(w(*cs)) * .1)], [out]))
            elif op == "split":
                if shape[axp] < 2: continue
                o2 = fresh()
                if opset >= 13 and rng.random() < .5:
                    h = shape[axp] // 2
                    nodes.append(helper.make_node("Split", [cur, const(np.array([h, shape[axp] - h], np.int64))], [out, o2], axis=ax)); shape[axp] = h
                else:
                    if shape[axp] % 2: continue
                    nodes.append(helper.make_node("Split", [cur], [out, o2], axis=ax)); shape[axp] //= 2
        except Exception:
            return None
        cur = out
    return finish(nodes, inputs, cur, inits, opset, feeds)

def finish(nodes, inputs, out, inits, opset, feeds):
    nodes = list(nodes) + [helper.make_node("Identity", [out], ["y"])]
    g = helper.make_graph(nodes, "f", [helper.make_tensor_value_info(k, FLOAT, s) for k, s in inputs],
                          [helper.make_tensor_value_info("y", FLOAT, None)],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    try:
        inf = onnx.shape_inference.infer_shapes(m, data_prop=True, strict_mode=True)
    except Exception:
        return None
    m.graph.output[0].type.CopyFrom(inf.graph.output[0].type)
    m.graph.output[0].type.tensor_type.shape.SetInParent()
    return m, feeds

def check(m, feeds) -> str:
    """"none" (the walk declined), "agree", or what differed."""
    imp = onnx_attr.load(m, strip_final_activation=False)
    tensors = imp.prepare(feeds)
    axes = batch.batch_axes(imp.inputs, tensors)
    try:
        traced = batch_graph._Walk(imp, tensors, axes).outputs()
    except batch_graph._Unknown:
        traced = None
    except Exception as e:
        return f"the walk raised {type(e).__name__}: {e}"
    if traced is None:
        return "none"
    orig = batch.traced_output_axes
    batch.traced_output_axes = lambda *a, **k: None
    try:
        probed = batch._probe(imp, tensors, axes)
    finally:
        batch.traced_output_axes = orig
    if not (probed.stackable and tuple(probed.outputs) == tuple(traced)):
        return f"walk={traced} probe={probed}"
    return "agree"
