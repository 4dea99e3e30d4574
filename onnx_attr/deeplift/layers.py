"""Hidden ONNX tensors, addressed by name: as an output (neuron attribution), as an input (layer
attribution by any method), or tapped in place (LayerDeepLift).

Each is a new `AttributableModel` over a copy of the fx graph, sharing the weights, so every
attribution method works on it unchanged: the method does not need to know about layers.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, fx, nn

from onnx_attr.importing.convert import tensor_nodes
from onnx_attr.errors import InputError
from onnx_attr.importing.specs import OutputSpec, TensorSpec, value_spec


def tensor_node(module: fx.GraphModule, name: str) -> fx.Node:
    """The fx node computing ONNX tensor `name`; an error suggesting close names otherwise."""
    if not isinstance(name, str):
        raise InputError(f"layer {name!r}: this takes one ONNX tensor name (for a module with several outputs, "
                         "name the one to explain; `onnx-attr inspect --json` lists them)")
    nodes = tensor_nodes(module)
    node = nodes.get(name)
    if node is None or node.op not in ("call_module", "call_function", "placeholder"):
        close = sorted(n for n in nodes if isinstance(n, str) and name.lower() in n.lower())[:5]
        raise InputError(f"no intermediate tensor named {name!r} in the graph"
                         + (f"; did you mean one of {close}?" if close else "; `onnx-attr inspect --json` "
                            "and model.onnx_model list the tensor names"))
    return node


def insert_after(module: fx.GraphModule, names: Sequence[str], make: Callable[[str], nn.Module],
                 prefix: str) -> list[nn.Module]:
    """Put `make(name)` between each named tensor's node and all of its users (in place)."""
    taps = []
    for index, name in enumerate(names):
        node = tensor_node(module, name)
        tap = make(name)
        module.add_submodule(f"{prefix}_{index}", tap)
        with module.graph.inserting_after(node):
            tapped = module.graph.call_module(f"{prefix}_{index}", (node,))
        node.replace_all_uses_with(tapped, delete_user_cb=lambda user: user is not tapped)
        tapped.meta["onnx_tensor"] = name  # no onnx_op: rewrites leave the tap itself alone
        node.meta.pop("onnx_tensor", None)
        taps.append(tap)
    return taps


def _spec(model, name: str, value: Tensor | None = None) -> TensorSpec:
    """The tensor's declared shape (symbolic batch kept) from shape inference, else from a value. A
    floating value where the file declares integers is the value's dtype: an 8-bit embedding
    lookup the methods read dequantized (`quantized_lookup.dequantized_view`). A tensor's copy for
    one of its readers (`methods.layer.uses_apart`) is declared as the tensor."""
    node = tensor_nodes(model.module).get(name)
    if node is not None and "copy_of" in node.meta:
        return dataclasses.replace(_spec(model, node.meta["copy_of"], value), name=name)
    for info in (*model.onnx_model.graph.value_info, *model.onnx_model.graph.output, *model.onnx_model.graph.input):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            spec = value_spec(info)
            if spec.dtype is not None and value is not None and value.is_floating_point() \
                    and not np.issubdtype(spec.dtype, np.floating):
                return TensorSpec(name, spec.shape, np.dtype(str(value.dtype).replace("torch.", "")))
            if spec.dtype is not None:
                return spec
    if value is None:
        return TensorSpec(name, None, None)
    return TensorSpec(name, ("N", *value.shape[1:]), np.dtype(str(value.dtype).replace("torch.", "")))


def refuse_settings_as_layers(model, names: Sequence[str], tensors: Sequence[Tensor]) -> None:
    """A model input named as a layer must have examples: a 0-d one (a setting) has none to attribute."""
    inputs = [s.name for s in model.inputs]
    for name in names:
        if name in inputs and tensors[inputs.index(name)].dim() == 0:
            raise InputError(f"layer {name!r} is a 0-d model input (a setting such as a threshold): it has no examples "
                             "to attribute; name a tensor computed from the inputs")


def layer_inputs(model, name: str) -> list[str]:
    """The tensors the ONNX node computing `name` reads that depend on the model's inputs (its data,
    not its weights or constants): Captum's "layer input" for a layer named by its output."""
    node = tensor_node(model.module, name)
    if node.op == "placeholder":
        raise InputError(f"{name!r} is a model input: it has no layer input; name it as the layer instead")
    found: list[str] = []
    for source in node.all_input_nodes:
        if "onnx_tensor" in source.meta and _reads_inputs(source) and source.meta["onnx_tensor"] not in found:
            found.append(source.meta["onnx_tensor"])
    if not found:
        raise InputError(f"the node computing {name!r} reads no tensor computed from the model's inputs")
    return found


def _reads_inputs(node: fx.Node) -> bool:
    """Whether a node's value depends on a model input (a placeholder among its ancestors)."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.op == "placeholder":
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return False


def cut_groups(model, names: Sequence[str]) -> list[list[int]]:
    """The named tensors (by index) that can be fed from outside together: all at once unless one
    is computed from another, where a joint cut would sever the upstream one's paths through the
    downstream one (its gradient and ablations would read 0), so then one at a time."""
    return [list(range(len(names)))] if nested_pair(model, names) is None else [[i] for i in range(len(names))]


def layers_delta(model, names: Sequence[str], sums: Sequence[Tensor], change: Tensor) -> Tensor:
    """Per example, how far the layers' attributions are from the output's change: their total where
    they are cut together; where one is computed from another, each is complete alone, so the
    largest of their own gaps."""
    gaps = torch.stack([sum(sums[i] for i in group) - change for group in cut_groups(model, names)])
    return gaps.gather(0, gaps.abs().argmax(0, keepdim=True))[0]


def nested_pair(model, names: Sequence[str]) -> Optional[tuple[str, str]]:
    """(upstream, downstream): two named tensors the second of which is computed from the first (or
    one tensor named twice: fed twice, the second feed would be unused); None when none is."""
    nodes: dict[fx.Node, str] = {}
    for name in names:
        node = tensor_node(model.module, name)
        if node in nodes:
            return nodes[node], name
        nodes[node] = name
    for node, name in nodes.items():
        seen, stack = set(), list(node.all_input_nodes)
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in nodes and nodes[current] != name:
                return nodes[current], name
            stack.extend(current.all_input_nodes)
    return None


def tensor_as_output(model, name: str):
    """The model cut after tensor `name`, which becomes its only output: attributing a target of
    it with any method attributes that hidden unit ("neuron") to the inputs."""
    module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
    node = tensor_node(module, name)
    output = next(n for n in module.graph.nodes if n.op == "output")
    output.args = (node,)
    module.graph.eliminate_dead_code()
    module.recompile()
    spec = _spec(model, name)
    return model.with_module(module, outputs=[OutputSpec(spec.name, spec.shape, spec.dtype)])


def tensor_as_input(model, name: str, example: Tensor):
    """The model with tensor `name` fed from outside: a new first input named `name` replaces it,
    the original inputs follow (for the paths that bypass it). Attributing that first input with
    any method is layer attribution; `example` gives the shape and dtype when inference did not."""
    return tensors_as_inputs(model, [name], [example])


def tensors_as_inputs(model, names: Sequence[str], examples: Sequence[Tensor],
                      axes: Optional[Sequence[Optional[int]]] = None):
    """`tensor_as_input` for several tensors at once: they become the first inputs, in order. `axes`:
    each tensor's batch axis on this call (`methods.layer.layer_axes`), declared with the inputs'
    batch symbol, so that the cut model reads its rows as the inputs' rows where shape inference gave
    the tensor another one (GPT-2 views its ids as [-1, T] first: 'unk__0'; a contrib op: none)."""
    module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
    first = next(n for n in module.graph.nodes if n.op == "placeholder")
    specs = []
    for index, (name, example) in enumerate(zip(names, examples)):
        node = tensor_node(module, name)
        with module.graph.inserting_before(first):
            fed = module.graph.placeholder("layer_input" if index == 0 else f"layer_input_{index}")
        fed.meta["onnx_tensor"] = name
        node.replace_all_uses_with(fed)
        spec = _spec(model, name, example)
        if not spec.differentiable:
            raise InputError(f"tensor {name!r} is {spec.dtype}: only floating tensors can be attributed")
        specs.append(_on_batch(spec, axes[index] if axes else None, model, example))
    module.graph.eliminate_dead_code()
    module.recompile()
    return model.with_module(module, inputs=[*specs, *model.inputs])


def _on_batch(spec: TensorSpec, axis: Optional[int], model, example: Tensor) -> TensorSpec:
    """`spec` with the model inputs' batch symbol on `axis` (as declared where there is none)."""
    from onnx_attr.importing.batch import batch_axes

    symbol = next((s.shape[a] for s, a in zip(model.inputs, batch_axes(model.inputs))
                   if a is not None and s.shape and isinstance(s.shape[a], str)), None)
    if axis is None or symbol is None:
        return spec
    shape = list(spec.shape) if spec.shape is not None and len(spec.shape) == example.dim() \
        else [None] * example.dim()
    shape = [d if i != axis else symbol for i, d in enumerate(shape)]
    shape = [d if d is not None else int(example.shape[i]) for i, d in enumerate(shape)]
    return dataclasses.replace(spec, shape=tuple(shape))


def replace_modules(model, swap: Callable[[fx.Node, nn.Module], Optional[tuple[nn.Module, dict]]], prefix: str
                    ) -> tuple[fx.GraphModule, list[fx.Node]]:
    """A copy of the model's graph (sharing the weights) in which every ONNX node of the default
    domain for which `swap(node, module)` gives `(new module, meta updates)` runs the new module;
    the nodes replaced are returned with it (the caller makes the sibling model)."""
    module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
    replaced = []
    for node in module.graph.nodes:
        if node.op != "call_module" or node.meta.get("onnx_domain", "") not in ("", "ai.onnx"):
            continue
        found = swap(node, module.get_submodule(node.target))
        if found is None:
            continue
        new, meta = found
        target = f"{prefix}_{len(replaced)}"
        module.add_submodule(target, new)
        node.target = target
        node.meta.update(meta)
        replaced.append(node)
    module.recompile()
    return module, replaced


def embedding_lookups(model) -> dict[str, list[str]]:
    """Integer input name -> the ONNX tensors that look it up in a constant table (Gather): where
    token ids are attributed, as DeepLift's engine finds them."""
    from onnx_attr.deeplift.taps import embedding_taps

    found: dict[str, list[str]] = {}
    for node, input_name in embedding_taps(model.module, model.inputs).items():
        if "onnx_tensor" in node.meta and _values_flow(node):
            found.setdefault(input_name, []).append(node.meta["onnx_tensor"])
    return found


#: ops a looked-up value may pass through unchanged in kind (its dequantization, a cast)
_PASSING = frozenset({"DequantizeLinear", "Cast", "Identity"})


def _values_flow(node: fx.Node) -> bool:
    """Whether a lookup's values reach anything but shape reads: DistilBERT sizes its positions from
    the word embeddings' Shape, and after onnxruntime's BERT recipe that lookup (a quantized Gather →
    DequantizeLinear → Shape) is all that is left of it; its tokens have no path to the output."""
    from onnx_attr.deeplift.taps import SHAPE_ONLY

    stack, seen = [node], set()
    while stack:
        for user in stack.pop().users:
            op = user.meta.get("onnx_op", "") if user.op == "call_module" else ""
            if op in SHAPE_ONLY or user in seen:
                continue
            if op not in _PASSING:
                return True
            seen.add(user)
            stack.append(user)
    return False


def hidden_axis(model, name: str) -> Optional[int]:
    """A hidden tensor's batch axis as shape inference declares it, read as an output's is
    (`batch.output_batch_axes`: the inputs' batch symbol, else a fixed batch's size on its only
    axis of that size); axis 0 when nothing was inferred. None: it has no batch."""
    from onnx_attr.importing.batch import output_batch_axes

    spec = _spec(model, name)
    return 0 if spec.shape is None else output_batch_axes(model.inputs, [spec])[0]


def tensor_values(model, names: Sequence[str], inputs: Sequence[Tensor]) -> list[Tensor]:
    """The named tensors' values in a forward pass of the model (no gradients); an export that
    fixes its batch runs in chunks of it, cut and padded on each input's batch axis, and each
    tensor's rows are put back together on its own (`hidden_axis`)."""
    from onnx_attr.importing.batch import batch_axes
    from onnx_attr.importing.convert import run_recording
    from onnx_attr.importing.rows import padded_rows, pass_batch

    fixed = pass_batch(model)
    axes = batch_axes(model.inputs, inputs)
    n = next((t.shape[a] for t, a in zip(inputs, axes) if a is not None), 0)
    size = fixed if fixed and n and n != fixed else n
    outer = [None] * len(names) if size == n else [hidden_axis(model, name) for name in names]
    parts = []
    for start in range(0, max(n, 1), max(size, 1)):  # a fixed-batch export runs in its batch, padded
        stop = min(start + size, n)
        fed = inputs if size == n else [t if a is None else padded_rows(t, start, stop, size, a) if t.shape[a] == n
                                        else t.expand(*t.shape[:a], size, *t.shape[a + 1:]) if t.shape[a] == 1 else t
                                        for t, a in zip(inputs, axes)]
        # the model's guarded forward: a baseline the graph cannot take (row splits at zero indexing past
        # the ids) is named by its ONNX node, not raised from inside torch
        recorded = model._guarded(lambda *args: run_recording(model.module, *args), fed)
        missing = [name for name in names if name not in recorded]
        for name in missing:
            tensor_node(model.module, name)  # raises the error with suggestions
        parts.append([recorded[name] if a is None or recorded[name].dim() <= a else
                      recorded[name].narrow(a, 0, stop - start) for name, a in zip(names, outer)])
    if len(parts) == 1:
        return parts[0]
    return [column[0] if a is None else torch.cat(column, dim=a) for column, a in zip(zip(*parts), outer)]
