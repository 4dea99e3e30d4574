"""Integer features made floats where a scikit-learn op reads them.

skl2onnx keeps the dtype a model was trained on: a pipeline fitted on integer data
(`load_digits`' pixel counts, a table of counts) takes an int64 input straight into Scaler,
LinearClassifier or TreeEnsemble, which compute in float (onnxruntime converts the features
first). Written as an explicit Cast to float in the converted graph, the conversion is a node the
DeepLift engine can attribute at (`taps.embedding_taps`: an integer input cast to a float holds
measurements), as it does a uint8 picture's cast. The canonical graph, which `verify` runs, is left
as written.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnx_attr.importing.ancestry import element_types

#: ai.onnx.ml ops that read numeric features of any type and compute in float (every input of
#: FeatureVectorizer; the first of the others)
FLOAT_FEATURE_OPS = frozenset({"Scaler", "Normalizer", "LinearClassifier", "LinearRegressor", "TreeEnsembleClassifier",
                               "TreeEnsembleRegressor", "TreeEnsemble", "SVMClassifier", "SVMRegressor",
                               "FeatureVectorizer"})
_INTEGERS = frozenset({onnx.TensorProto.INT32, onnx.TensorProto.INT64})


def cast_integer_features(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """A copy of `model` with a Cast to float before each integer feature a `FLOAT_FEATURE_OPS` node
    reads (one Cast per tensor), or `model` itself where there is none."""
    types = element_types(model.graph)
    wanted = [(k, i) for k, node in enumerate(model.graph.node) if node.domain == "ai.onnx.ml"
              and node.op_type in FLOAT_FEATURE_OPS
              for i in (range(len(node.input)) if node.op_type == "FeatureVectorizer" else (0,))
              if i < len(node.input) and types.get(node.input[i]) in _INTEGERS]
    if not wanted:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    taken = {name for n in graph.node for name in (*n.input, *n.output)} | {v.name for v in graph.input}
    casts: dict[str, str] = {}
    before: dict[int, list[onnx.NodeProto]] = {}
    for k, i in wanted:
        source = graph.node[k].input[i]
        if source not in casts:
            name = f"{source}/as_float"
            while name in taken:
                name = "_" + name
            taken.add(name)
            casts[source] = name
            before.setdefault(k, []).append(helper.make_node("Cast", [source], [name], to=onnx.TensorProto.FLOAT,
                                                             name=name))
        graph.node[k].input[i] = casts[source]
    nodes = [n for k, node in enumerate(graph.node) for n in (*before.get(k, ()), node)]
    del graph.node[:]
    graph.node.extend(nodes)
    notes.append(f"integer features cast to float before the scikit-learn op(s) reading them: {sorted(casts)}")
    return out
