"""A one-hot of an ArgMax (a greedy decoder's fed-back token) as one node with an exact rule.

A greedy decoder (SLANet's table-structure Loop, unrolled) picks each step's token with ArgMax of
its scores and feeds OneHot(token) into the next step. ArgMax alone is structural (an index), so
left apart its change between the input and the baseline (a different token) reaches the output
with no multiplier, and completeness fails (SLANet: 344 of 501 tokens differ from a zero
baseline's, relative delta 0.18). `fuse_argmax_one_hots` folds the index path from ArgMax to
OneHot (Casts, reshapes, constant offsets) into one node y = onehot(g(argmax(z))) that calls the
very same modules in the same order (forward bit for bit); `rules/selection.py` gives it the
secant multiplier, so Σ m·Δz = Σ grad·Δy per example.
"""

from __future__ import annotations

from torch import fx

from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN

ARGMAX_ONE_HOT = "ArgMaxOneHot"

#: Ops an index passes through between ArgMax and OneHot (other operands must be constants).
_INDEX_PATH = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Add", "Sub"})


def fuse_argmax_one_hots(module: fx.GraphModule, fed: set[fx.Node]) -> list[str]:
    """Replace each OneHot whose indices come from an ArgMax/ArgMin by one `ArgMaxOneHot` node of
    the ArgMax's input, in place; returns the fused OneHots' ONNX names. `fed`: nodes with a
    placeholder among their ancestors (the path's other operands must not be)."""
    fused = []
    for node in list(module.graph.nodes):
        if node.op != "call_module" or node.meta.get("onnx_op") != "OneHot" or node.kwargs:
            continue
        if any(isinstance(a, fx.Node) and a in fed for a in node.args[1:]):
            continue
        chain = _index_path(node.args[0] if node.args else None, fed)
        if chain is None:
            continue
        if _fold(module, node, chain):
            fused.append(node.meta["onnx_node"])
    return fused


def _index_path(start, fed: set[fx.Node]) -> list[fx.Node] | None:
    """The nodes from an ArgMax/ArgMin (first) to `start` (last), each used by the next alone."""
    chain, n = [], start
    while isinstance(n, fx.Node) and n.op == "call_module" and not n.kwargs:
        op = n.meta.get("onnx_op")
        if len(n.users) != 1:  # each feeds the next alone: the fused node replaces them all
            return None
        if op in ("ArgMax", "ArgMin"):
            return [n, *reversed(chain)] if len(n.args) == 1 else None
        if op not in _INDEX_PATH or not n.args or any(isinstance(a, fx.Node) and a in fed for a in n.args[1:]):
            return None
        chain.append(n)
        n = n.args[0]
    return None


def _fold(module: fx.GraphModule, one_hot: fx.Node, chain: list[fx.Node]) -> bool:
    """Copy the path and the OneHot into one GraphModule of the scores and call it in the OneHot's
    place; False (nothing changed) where a constant operand is computed rather than stored."""
    scores = chain[0].args[0]
    graph = fx.Graph()
    mapping = {scores: graph.placeholder("scores")}
    for n in (*chain, one_hot):
        for arg in n.args:
            if isinstance(arg, fx.Node) and arg not in mapping:
                if arg.op != "get_attr":
                    return False
                mapping[arg] = graph.get_attr(arg.target)
        mapping[n] = graph.node_copy(n, lambda arg: mapping[arg])
    graph.output(mapping[one_hot])
    name = f"argmax_one_hot_{one_hot.name}"
    module.add_submodule(name, fx.GraphModule(module, graph))
    one_hot.meta.update(onnx_op=ARGMAX_ONE_HOT, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                        onnx_node=f"{one_hot.meta['onnx_node']} (one-hot of {chain[0].meta['onnx_op']} "
                                  f"{chain[0].meta.get('onnx_node', chain[0].name)})")
    one_hot.target, one_hot.args = name, (scores,)
    for n in reversed(chain):
        module.graph.erase_node(n)
    return True
