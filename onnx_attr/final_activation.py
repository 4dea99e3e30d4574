"""Find the Softmax/LogSoftmax/Sigmoid that ends an output, and optionally strip it.

Attributing a probability explains "why is this class more likely than the others" through a
saturating nonlinearity whose DeepLift multipliers mix all classes; attributing the logit is
what the DeepLIFT paper (section 3.6) recommends. The strip is done on the ONNX graph, so the
stripped model can be checked against onnxruntime like any other.
"""

from __future__ import annotations

import onnx

from .specs import FinalActivation

ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
#: Ops that move or relabel values without mixing them: an activation behind them still ends the output.
PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Transpose", "Dropout"})


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
    for output in graph.output:
        chain = _chain_to_activation(graph, producer, output.name)
        if chain is None:
            continue
        act_index, path = chain
        act = graph.node[act_index]
        through = tuple(graph.node[i].op_type for i in reversed(path))
        # Every tensor from the activation to the output must feed only this chain; otherwise
        # another part of the graph would see logits where it expects probabilities.
        chain_nodes = {act_index, *path}
        private = all(consumers.get(graph.node[i].output[0], set()) <= chain_nodes for i in chain_nodes)
        name = act.name or f"{act.op_type}#{act_index}"
        if strip and private:
            to_strip.add(act_index)
            found[output.name] = FinalActivation(act.op_type, name, True, through)
        else:
            reason = "requested by the caller" if not strip else "its output also feeds other nodes"
            found[output.name] = FinalActivation(act.op_type, name, False, through, reason)

    if not to_strip:
        return model, found
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i in to_strip:
        node = out.graph.node[i]
        replacement = onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        out.graph.node[i].CopyFrom(replacement)
    return out, found


def _chain_to_activation(graph, producer, tensor: str) -> tuple[int, list[int]] | None:
    """Index of the activation feeding `tensor` through pass-through ops, and those ops' indices."""
    path: list[int] = []
    while tensor in producer:
        index = producer[tensor]
        node = graph.node[index]
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in ACTIVATIONS:
            return index, path
        if node.op_type not in PASS_THROUGH or not node.input:
            return None
        path.append(index)
        tensor = node.input[0]
    return None
