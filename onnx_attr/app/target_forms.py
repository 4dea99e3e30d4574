"""The CLI's `--target` forms and the default target of each output layout it recognises.

The output is first read batch first: its batch axis is `--batch-axis` when given, else the
axis whose symbol it shares with the inputs' batch (axis 0 of a `[T, batch, C]` output is not),
else axis 0 when it has one row per example, else the only axis that does. Then:

| layout                               | recognised as                                     | default target |
|--------------------------------------|---------------------------------------------------|----------------|
| one value per example `[N]`, `[N, 1]`| a single value                                    | the output itself |
| classes `[N, C]`                     | rank 2                                            | `top`: the predicted class |
| an embedding `[N, D]`, `[N, T, D]`   | no final activation, and a layer norm at the end, a division by a computed norm, on token ids a mean over the tokens, or a name that says so (`_normalised`) | `embedding`: its length along its own direction (over the positions the mask keeps) |
| a waveform `[N, T]`, `[N, 1, T]`    | one channel of WAVEFORM_OUT samples or more, signed, no final Softmax/Sigmoid, named as sound or as long as a waveform input or an input of its shape (`_waveform`) | `embedding`: its length along itself (its norm where its sample count follows the values) |
| dense map `[N, 1, H, W]`, `[N, H, W]`, `[N, H, W, 1]` | one channel, H and W ≥ 2; `H:W` as the image input's for the last two | `region`: the predicted region's summed score |
| an image `[N, C, H, W]`              | C ≥ 2 channels as an NCHW image input's, H × W its own or larger at its aspect ratio (a restoration, a super-resolution), no Softmax/LogSoftmax at the end | `region`: the predicted region's summed score |
| feature maps `[N, C, H, W]`          | as class maps, but a ReLU's or a Tanh's output (a hidden layer's, a head's coefficients) | `embedding`: its length along itself over all its values |
| class maps `[N, C, H, W]`            | C ≥ 2 channels, H and W ≥ 2, `H:W` as the image input's | `segment`: the largest predicted segment's summed score (under a Softmax, class 0, the background, only where no other class is predicted) |
| heat maps `[N, C, H, W]`             | as class maps, ending in a Sigmoid (each channel its own: CenterNet's per-class centres) | `region`: the summed score of every pixel any channel predicts (p > 0.5) |
| classes `[N, C, 1]`                  | rank 3, one column, ending in a Softmax over C    | `top`: the predicted class |
| one score per position `[N, A, 1]`  | a rank-3 output of one column that is no map      | `top`: the top position's score |
| one score per step `[N, T]`         | a ReduceMax/ReduceMin of each step (past a Concat with constants: a [START] step's 1.0) | `sum`: the steps' scores summed |
| a map over an input `[N, T, F]`      | a rank-3 output shaped as a floating input's example, with no Softmax/LogSoftmax at the end (a denoiser's gain per frame and bin) | `region`: the predicted region's summed score |
| a signal shaped as an input         | shaped as a floating input's example (rank 3 and up), signed, no final activation (`_signal_like_input`) | `embedding`: its length along itself over all its values |
| sequence `[N, T, C]`, `[T, N, C]`    | a Softmax/LogSoftmax at the end, time-major, or a rank-3 output that is no map or detector | `greedy`: the greedy path's summed score (a recogniser's CTC blank steps left out) |
| detector head `[N, 4+C, A]`, `[N, A, 4+C]` | an image input and anchors A in [HW/1024, HW/16], at least 8 per score | `anchor`: the top anchor's best class score |
| detector scores `[N, A, C]` beside boxes `[N, A, 4]` | an image input, another output of 4 columns over the same A ≥ 8C anchors (SSD, RFB), not written by a Loop (SLANet's steps are a sequence) | `anchor`: the top anchor's best class score, a Softmax's column 0 (the background) left out |
| channels last `[N, H, W, C]`         | rank 4, `H:W` as the image input's, 2 ≤ C < H, W (tf2onnx's Keras heads) | read as its `[N, C, H, W]` view above (class maps, an image), the target put back |
| anything else                        |                                                   | `top`: the largest value's position |

Forms: `top` (the largest value: the predicted class, the top pixel); `region` or `region>T`
(the summed score of the values above T; T by default 0 on the logits of a stripped Sigmoid
(p > 0.5), 0.5 on values in [0, 1], else halfway between the example's smallest and largest
value; an example with nothing above T gets its top value); `greedy` (the argmax per step,
summed over the steps; on a recogniser's sequence (a picture or a waveform in, no token ids, no
final Sigmoid), the steps of CTC's blank are left out: the class the path takes most, first or
last of 11 or more, on a third of the steps or more; `greedy=all` keeps them, and the padding a
mask or lengths input leaves out); `segment` or
`segment=K` (on class maps: class K's score summed over the pixels predicted as K, the argmax over
the classes; by default K is the class predicted on the most pixels, under a Softmax the most
besides class 0, the background); `anchor` (the top anchor's best class score; no box coordinates are
skipped when the output ends in a Sigmoid, and a segmentation head's mask coefficients, as many
as another output [N, M, h, w] has prototypes, are not class scores; a head whose first score is an
objectness (YOLOX, YOLOv5: `_has_objectness`) gets the class score of its best detection, by
objectness × class score); `sum` (every value summed per example, over the steps a mask keeps on
[N, T]); `embedding` (e·ê with ê = e/|e| fixed at the input, e the output [N, D]
or its mean over the positions [N, T, D] an input mask keeps: no argmax of an embedding's units
means anything); and indices: `3` (negative counts from the end),
`3,1,4` (one per example; for an output with k > 1 axes besides the batch, k numbers are one
index), `5:12` (one index over the axes besides the batch).

Every form is resolved to indices or masks (`targets.Target`) that every method reads alike;
`describe` gives the report what a user needs to reproduce it.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.deeplift.targets import Target
from onnx_attr.importing.final_activation import FILTER_SCORES, NMS_SCORES, TOPK_SCORES
from onnx_attr.importing.specs import names_next_state

if TYPE_CHECKING:  # torch loads with the model, not with the CLI's argument checks
    from torch import Tensor

NAMED_FORMS = ("top", "region", "greedy", "anchor", "segment", "embedding", "sum")
_DETECTOR_FORMS = ("anchor", "top", "indices")
FORMS_HELP = ("top | region | region>T | greedy | greedy=all | anchor | segment | segment=K | embedding | sum | an int (negative from the end) | "
              "i,j,k (one per example, or one index of an output with several axes) | a:b (one index over the axes "
              "after the batch)")


@dataclass
class Resolved:
    """The target for the methods, and what the report says about it."""

    target: Any  # indices (Captum's forms), a `Target`, or None (the output itself)
    shown: Any  # report.json's "target": the indices, or the form
    source: str  # how it was chosen, one line
    detail: dict = field(default_factory=dict)  # layout, form, batch axis, per-example indices/masks
    labels: Optional[list[str]] = None  # per-example picture titles, for targets that are not one index


def parse_form(text: str) -> tuple[str, Any]:
    """('region', 0.3), ('top', None), ('indices', 3 / [3, 1] / (5, 12)); a clear error listing the forms."""
    value = text.strip()
    if value in NAMED_FORMS:
        return value, None
    if value.startswith("region>"):
        try:
            return "region", float(value[len("region>"):])
        except ValueError:
            pass
    elif value.startswith("segment="):
        try:
            return "segment", int(value[len("segment="):])
        except ValueError:
            pass
    elif value == "greedy=all":
        return "greedy", "all"
    else:
        try:
            if "," in value:
                return "indices", [int(t) for t in value.split(",")]
            if ":" in value:
                return "indices", tuple(int(t) for t in value.split(":"))
            return "indices", int(value)
        except ValueError:
            pass
    raise InputError(f"--target {text!r} is not a target form; use one of: {FORMS_HELP}")


def output_batch_axis(model, output_index: int, out: Tensor, examples: int, given: Optional[int],
                      inputs: Optional[dict[str, np.ndarray]] = None) -> Optional[int]:
    """The explained output's batch axis: given, else the one the methods read it on (`batch.probe`
    on the call's `inputs`, when it has the examples; None when the probe finds the rows mix, so the
    whole output is one example, as the methods then read it), else shared with the inputs' batch symbol,
    else the axis with one row per example (0 first)."""
    if given is not None:
        if not 0 <= given < max(out.dim(), 1):
            raise InputError(f"--batch-axis {given} is not an axis of the output of shape {list(out.shape)}")
        if out.dim() and examples and out.shape[given] != examples:
            try:  # what the run reads without the option (sweep 35: this said "one example" where it found axis 1)
                found = output_batch_axis(model, output_index, out, examples, None, inputs)
            except InputError:
                found = None
            without = "the whole input is explained as one example; --target then indexes the whole output" \
                if found is None else f"the output's batch is read on its axis {found}"
            raise InputError(f"--batch-axis {given}: the output of shape {list(out.shape)} has {out.shape[given]} "
                             f"row(s) there for {examples} example(s) in the input, so it is not the batch (the model "
                             f"combines its input rows). Without --batch-axis {without}")
        return given
    if out.dim() == 0:
        return 0
    if inputs is not None:
        from onnx_attr.importing.batch import batch_axes, probe

        tensors = model.prepare(inputs)
        layout = probe(model, tensors, batch_axes(model.inputs, tensors))
        probed = layout.outputs[output_index] if output_index < len(layout.outputs) else 0
        if probed is None and any(a is not None for a in batch_axes(model.inputs, tensors)):
            return None  # the rows mix (or the output has no batch): the whole output is one example
        if probed is not None and probed < out.dim() and out.shape[probed] == examples:
            return probed
    symbols = {s.shape[0] for s in model.inputs if s.shape and isinstance(s.shape[0], str)}
    declared = model.outputs[output_index].shape or ()
    shared = [k for k, d in enumerate(declared) if isinstance(d, str) and d in symbols]
    if len(shared) == 1 and shared[0] < out.dim() and out.shape[shared[0]] == examples:
        return shared[0]
    if out.shape[0] == examples:
        return 0
    fits = [k for k in range(out.dim()) if out.shape[k] == examples]
    if len(fits) == 1:
        return fits[0]
    raise InputError(f"the output of shape {list(out.shape)} has no axis of {examples} example(s) to explain each "
                     "example on; give it with --batch-axis")


def resolve(text: Optional[str], out: Tensor, *, model, output_index: int, inputs: dict[str, np.ndarray],
            examples: int, batch_axis: Optional[int] = None) -> Resolved:
    """The target a `--target` form (None: the layout's default) names on the explained output `out`."""
    form, value = ("default", None) if text is None else parse_form(text)
    if out.numel() == 0:
        name = model.outputs[output_index].name if output_index < len(model.outputs) else output_index
        raise InputError(f"output {name!r} is empty for this input (shape {list(out.shape)}: a detector that keeps no "
                         "detection above its threshold, say), so it holds nothing to explain. Explain another output "
                         "(--output-name), or an input for which it holds values")
    axis = output_batch_axis(model, output_index, out, examples, batch_axis, inputs)
    # one example whose rows mix (its whole output is the example: ICLabel's four augmented copies of one
    # component, averaged) but whose output leads with a 1 (platerec's decoder: logits [1, T, V]): read on
    # that 1, so a sequence is a sequence (not a [1, 1, T, V] "map") and classes are classes (not a one-step
    # sequence), and its indices and masks put back into the whole output (`_in_whole`). Indices given for
    # several such rows index the whole output, as the batch-axis error says they do
    baked = axis is None and out.dim() >= 2 and out.shape[0] == 1 and (examples <= 1 or text is None)
    view = (out if baked else batch_first(out, axis)).detach().double()
    last = form != "indices" and _channels_last(view, model, inputs)  # given indices name the output's own axes
    if last:
        view = view.movedim(3, 1)
    layout = recognise(view, model, output_index, inputs, 0 if baked else axis)
    if last:
        layout = replace(layout, name=f"{layout.name}, channels last [N, H, W, C]")
    if form == "default":
        form = layout.default
    elif layout.kind == "detector" and form not in _DETECTOR_FORMS:  # a head's rows mix box coordinates
        # and class scores: a region, a greedy path or a segment over them explains coordinates as scores
        raise InputError(f"--target {text} does not fit {layout.name}: its values mix box coordinates with class "
                         "scores, so that form would explain coordinates as scores; use anchor (the default: the "
                         "top anchor's best class score), top, or indices a,k")
    detail = {"layout": layout.name, "output_shape": list(out.shape), "batch_axis": axis, "form": form}
    if form in ("greedy", "embedding") and view.dim() == 3 or form == "sum" and view.dim() == 2:
        detail["steps_from"] = _steps_from(inputs, view)
    if form == "greedy":
        if value != "all" and view.dim() == 3 and layout.final != "Sigmoid" and (
                _pictures_or_sound(inputs) and not _reads_tokens(model) or _steps_per_token(inputs, view) >= 2):
            detail["blank"] = _blank(view)
    resolved = {"top": _top, "region": _region, "greedy": _greedy, "anchor": _anchor, "segment": _segment,
                "embedding": _embedding, "sum": _summed, "indices": _indices, "output": _itself}[form](
        view, layout, value, detail)
    if resolved.labels is not None:  # the summed score itself, for the picture titles
        values = (view * resolved.target.weights.to(view.dtype)).reshape(len(view), -1).sum(1).tolist()
        resolved.labels = [f"{label}: {v:.4g}" for label, v in zip(resolved.labels, values)]
    if last:
        resolved = _channels_back(resolved)
    resolved.target = _in_whole(resolved.target) if baked else _on_axis(
        resolved.target, axis, _folded(model, output_index, inputs, out, axis))
    if text is None:
        resolved.source = f"default for {layout.name}: {resolved.source}"
    return resolved


def named_target(model, inputs, form: Optional[str] = None, output: Union[str, int, None] = None,
                 batch_axis: Optional[int] = None):
    """The target `onnx-attr attribute --target FORM` explains (None: the default of the output's
    layout), for the API's `target=`: the same indices or mask (`Target`), so a call from Python
    explains what the command line does. `inputs`: a dict by input name, or the attributed tensors
    in the model's input order, as a method's call takes them."""
    from onnx_attr.methods.base import output_index

    if not isinstance(inputs, dict):
        given = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        inputs = dict(zip((s.name for s in model.inputs), given))
    named = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in inputs.items()}
    index = output_index(model, output)
    first = next(iter(named.values()))
    return resolve(form, model.run(named)[index], model=model, output_index=index, inputs=named,
                   examples=first.shape[0] if first.ndim else 0, batch_axis=batch_axis).target


def batch_first(out: Tensor, axis: Optional[int]) -> Tensor:
    """The output with its batch axis first; one without a batch (None: it is one example's) gets one."""
    return out.unsqueeze(0) if axis is None else out.movedim(axis, 0) if out.dim() else out


@dataclass(frozen=True)
class Layout:
    name: str  # as the report names it, e.g. "a sequence [T, N, C]"
    kind: str  # one value | classes | map | sequence | detector | other
    default: str  # the form used without --target
    box: int = 0  # detector heads: the box coordinates before the scores
    scores_first: bool = False  # detector heads: [N, 4+C, A] (True) or [N, A, 4+C]
    masks: int = 0  # detector heads: the mask coefficients after the class scores (YOLOv8-seg: 32)
    objectness: bool = False  # detector heads: an objectness before the class scores (YOLOX, YOLOv5)
    sigmoid_stripped: bool = False  # the map's logits, its Sigmoid stripped
    first_channel: bool = False  # maps stacked from different heads: the region is read on channel 0 alone
    final: Optional[str] = None  # the output's final activation op, kept or stripped
    top: str = "the predicted class (argmax)"  # what the top form picks, as the report says it
    counted: bool = False  # one example's scores whose count follows the values (above a threshold): see largest_score
    background: int = 0  # detector scores: class columns left out after the box ones (an SSD's background, 0)


def recognise(view: Tensor, model, output_index: int, inputs: dict[str, np.ndarray], axis: int) -> Layout:
    """The layout of a batch-first output (see the module's table)."""
    spec = model.outputs[output_index]
    final = spec.final_activation
    op = final.op_type if final is not None else None
    stripped = bool(final is not None and final.stripped and op == "Sigmoid")
    shape = tuple(view.shape[1:])
    if view.dim() <= 1 or int(np.prod(shape)) == 1:
        return Layout("one value per example", "one value", "output", final=op)
    waveform = _waveform(view, spec.name, op, inputs)
    if waveform is not None:  # no argmax of a waveform's samples means anything
        return Layout(f"a waveform [{'N, ' if axis is not None else ''}{'1, ' if len(shape) == 2 else ''}T] "
                      f"({waveform})", "waveform", "embedding", counted=_counted(model, spec))
    if len(shape) == 1 and (axis is None or getattr(spec, "role", None) in (NMS_SCORES, TOPK_SCORES)):
        # a detector's scores [K] after its threshold (torchvision): one example's, no classes axis
        return Layout(f"one example's scores [{shape[0]}] (no batch axis)", "classes", "top", final=op,
                      top="the largest score (argmax: the detection a NonMaxSuppression keeps first)"
                      if getattr(spec, "role", None) == NMS_SCORES else "the largest score (argmax)",
                      counted=_counted(model, spec))
    if len(shape) == 1 and getattr(spec, "role", None) == FILTER_SCORES:
        return Layout(f"one score per position [N, {shape[0]}] that a threshold filter keeps positions by", "other",
                      "top", final=op, top="the largest score (the position the filter keeps surest)")
    if len(shape) >= 2 and op is None and getattr(spec, "role", None) is None and _sized_by_values(model, spec):
        # no mask or index pairs with the elements of a copy of another size (a perturbed input's, the baseline's)
        return Layout(f"an output whose size follows the values [{', '.join(map(str, spec.shape))}]", "other",
                      "embedding", counted=True)
    fed = _fed_back(model, spec.name, tuple(view.movedim(0, axis).shape) if axis is not None else shape, inputs) \
        if op is None and inputs else None
    if fed is not None:  # silero-vad's stateN [2, N, 128], built in an If from its LSTM's h and c (sweep 35): no
        # argmax of its units means anything
        return Layout(f"a recurrent state fed back as input {fed!r}", "embedding", "embedding")
    embedded = _normalised(model, spec.name) if op is None and len(shape) in (1, 2) else None
    if embedded is not None:  # a vector per example (or per token) that no argmax reads: an embedding
        return Layout(f"an embedding [N, {'T, ' if len(shape) == 2 else ''}D] ({embedded})", "embedding", "embedding")
    if len(shape) == 1:
        reduced = _reduced(model, spec.name)
        if reduced is not None:  # a decoder's per-step confidence (the ReduceMax of each step's Softmax): no classes
            return Layout(f"one score per position [N, T] (a {reduced} over each position's values)", "other", "sum",
                          final=op, top="the top position's score")
        return Layout("classes [N, C]", "classes", "top", final=op)
    image = _image_size(model, inputs)
    if len(shape) == 3 and shape[0] == 1 and min(shape[1:]) >= 2:  # [N, 1, 1, 96] is a vector, not a map
        return Layout("a dense map [N, 1, H, W]", "map", "region", sigmoid_stripped=stripped, final=op)
    if len(shape) == 3 and shape[2] == 1 and min(shape[:2]) >= 2 and _as_image(image, shape[0], shape[1]):
        # tf2onnx's Keras U-Net ending in Conv2D(1): channels last, as its image input
        return Layout("a dense map [N, H, W, 1]", "map", "region", sigmoid_stripped=stripped, final=op)
    like = _an_image_of(model, inputs, shape) if op not in ("Softmax", "LogSoftmax") else None
    if len(shape) == 3 and shape[0] >= 2 and like is not None:  # restored or upscaled: its channels are colours
        return Layout(f"an image [N, {shape[0]}, H, W] like input {like[0]!r}" + (f" (upscaled x{like[1]:.2g})" if like[1] > 1 else ""),
                      "map", "region", sigmoid_stripped=stripped, final=op)
    if len(shape) == 3 and shape[0] >= 2 and min(shape[1:]) >= 2 and _as_image(image, shape[1], shape[2]):
        heads = _stacked_heads(model, spec.name)
        if heads:  # a text logit beside Softplus distances (rapidocrlite's Indra detector): no classes to argmax
            return Layout(f"maps of {shape[0]} different heads [N, C, H, W] ({heads}): the first one's region",
                          "map", "region", final=op, first_channel=True)
        if op == "Sigmoid":  # one Sigmoid per channel: heat maps that do not exclude each other (CenterNet's
            # per-class centres), whose argmax over the channels is channel 0 wherever nothing is found
            return Layout(f"heat maps [N, C, H, W] ({shape[0]} channels, each its own Sigmoid)", "map", "region",
                          sigmoid_stripped=stripped, final=op)
        bounded = _activated(model, spec.name) if op is None else None
        if bounded is not None:  # a hidden layer's features (DeepFilterNet's encoder e0: a ReLU's), or coefficients
            # (its filter decoder's: a Tanh's): class maps are logits or probabilities, never either
            return Layout(f"feature maps [N, C, H, W] ({shape[0]} channels, a {bounded}'s output: features, not "
                          "classes)", "features", "embedding")
        return Layout(f"class maps [N, C, H, W] ({shape[0]} classes)", "segmentation", "segment", final=op)
    signal = _signal_like_input(view, model, inputs, shape, op)
    if signal is not None and len(shape) > 2:  # an enhancer's spectrum frame, re and im (GTCRN's [N, 257, 1, 2]):
        # no argmax of one component, no region of its positive values, means anything
        return Layout(f"a signal [N, {', '.join(map(str, shape))}] shaped as input {signal!r} (signed, no final "
                      "activation: a spectrum or a reconstruction, not scores)", "signal", "embedding")
    if len(shape) != 2:
        rank = view.dim() - (axis is None)  # the output's own: `batch_first` gave one without a batch an axis
        return Layout(f"an output of rank {rank}" + (" (one example's: no batch axis)" if axis is None else ""),
                      "other", "top", final=op)
    if getattr(spec, "role", None) == NMS_SCORES:
        return Layout("the class scores [N, C, A] a NonMaxSuppression reads", "detector", "anchor", box=0,
                      scores_first=True, final=op)
    if getattr(spec, "role", None) == FILTER_SCORES:  # scores a threshold keeps detections by: the anchors are
        first = shape[0] < shape[1]  # the longer axis (YOLOv8's classes [N, 80, 8400], a transposed [N, 8400, 80])
        return Layout(f"the scores [N, {'C, A' if first else 'A, C'}] a threshold filter keeps detections by",
                      "detector", "anchor", box=0, scores_first=first, final=op)
    if getattr(spec, "role", None) == TOPK_SCORES:
        return Layout("the scores [N, A, C] a TopK selects detections from", "detector", "anchor", box=0,
                      scores_first=False, final=op)
    if shape[1] == 1 and _normalises_axis_1(final):  # normalised across the A axis, so classes with a
        # trailing 1 ([N, 2, 1]: non-speech and speech)
        return Layout(f"classes [N, C, 1] (a {op} over its {shape[0]} classes)", "classes", "top", final=op)
    if shape[1] == 1:  # one score per anchor or step (YuNet's cls [1, 6400, 1]): greedy would sum them all
        return Layout("one score per position [N, A, 1]", "other", "top", final=op)
    if axis == 1:
        return Layout("a time-major sequence [T, N, C]", "sequence", "greedy", final=op)
    boxes = _boxes_beside(model, output_index, shape) if image is not None else None
    if boxes is not None:  # an SSD's class scores beside its boxes: a Softmax's column 0 is the background
        background = int(op == "Softmax")
        return Layout(f"class scores [N, A, C] beside the boxes {boxes!r} [N, A, 4]" +
                      (" (column 0: the background)" if background else ""), "detector", "anchor", final=op,
                      background=background)
    shaped = _shaped_like_input(model, inputs, shape) if op not in ("Softmax", "LogSoftmax") else None
    if shaped is not None and signal is not None:
        return Layout(f"a signal [N, {shape[0]}, {shape[1]}] shaped as input {shaped!r} (signed, no final activation: "
                      "a spectrum or a reconstruction, not scores)", "signal", "embedding")
    if shaped is not None:  # a denoiser's gain per frame and frequency bin (NSNet2 [1, T, 161]): not classes
        return Layout(f"a map over input {shaped!r} [N, {shape[0]}, {shape[1]}] (its shape)", "map", "region",
                      sigmoid_stripped=stripped, final=op)
    if op in ("Softmax", "LogSoftmax"):
        return Layout(f"a sequence [N, T, C] (a {op} over its classes)", "sequence", "greedy", final=op)
    positions = _rows_are_positions(model, spec.name)
    if _as_image(image, shape[0], shape[1]) and not positions:  # a linear layer's last axis is its classes
        return Layout("a dense map [N, H, W]", "map", "region", sigmoid_stripped=stripped, final=op)
    if image is not None and not positions:  # a head's anchors are a feature map's pixels (or a decoder's queries)
        small, big = min(shape), max(shape)
        area = image[0] * image[1]
        if small >= 5 and big >= 8 * small and area / 1024 <= big <= area / 16:
            box = 0 if op == "Sigmoid" else 4
            first = shape[0] == small
            masks = _mask_coefficients(model, output_index, small - box)
            heads = view if not first else view.transpose(1, 2)  # [N, A, rows]
            objectness = bool(box) and _has_objectness(heads[:, :, box:heads.shape[2] - masks])
            scores = ("4+1+C" if objectness else "4+C" if box else "C") + \
                (f"+{masks} mask coefficients" if masks else "")
            return Layout(f"a detector head [N, {scores}, A]" if first else f"a detector head [N, A, {scores}]",
                          "detector", "anchor", box=box, scores_first=first, final=op, masks=masks,
                          objectness=objectness)
    return Layout("a sequence [N, T, C]", "sequence", "greedy", final=op)


def _waveform(view: Tensor, name: str, op: Optional[str], inputs: dict[str, np.ndarray]) -> Optional[str]:
    """Why a batch-first output reads as a waveform (a vocoder's or a TTS model's audio, an enhancer's
    or a separator's signal): one channel [N, T] or [N, 1, T] of WAVEFORM_OUT samples or more, signed
    values, no final Softmax or Sigmoid, and named as sound or as long as a waveform input (the samples
    it reads). None otherwise."""
    shape = tuple(view.shape[1:])
    if op in ("Softmax", "LogSoftmax", "Sigmoid") or not (len(shape) == 1 or len(shape) == 2 and shape[0] == 1):
        return None
    samples = shape[-1]
    if samples < WAVEFORM_OUT or not (float(view.min()) < 0 < float(view.max())):
        return None
    if re.search(r"(^|[^a-z])(audio|wav|waveform|pcm|speech|signal)", name.lower()):
        return f"named {name!r}"
    read = [k for k, v in inputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and np.ndim(v) in (2, 3)
            and np.shape(v)[-1] == samples
            and (samples >= WAVEFORM_SAMPLES or np.ndim(v) == 3 and np.shape(v)[1:] == shape)]
    # a frame in, a frame out (DTLN's second stage: 512 samples [N, 1, 512]): a streaming enhancer's chunk; a
    # [N, D] in and out of one width is no such frame (a linear adapter, a head as wide as its input)
    return f"as long as input {read[0]!r}" if read else None


def _activated(model, name: str) -> Optional[str]:
    """The op, a ReLU or a Tanh, whose output this is (past reshapes and casts): a hidden layer's
    features or a head's bounded coefficients; None otherwise."""
    producers = {o: n for n in model.onnx_model.graph.node for o in n.output}
    node = _past_reshapes(producers, name)
    return {"Relu": "ReLU", "Tanh": "Tanh"}.get(node.op_type) if node is not None else None


def _signal_like_input(view: Tensor, model, inputs: dict[str, np.ndarray], shape: tuple, op: Optional[str]
                       ) -> Optional[str]:
    """The floating input one example of the output is shaped as, where the output is signed and ends in
    no activation: a signal (an enhancer's spectrum, a reconstruction), not a map of scores. A gain or a
    mask over the input (NSNet2's Sigmoid) stays a map."""
    if op is not None or len(shape) < 2 or not (float(view.min()) < 0 < float(view.max())):
        return None
    return _shaped_like_input(model, inputs, shape)


#: the fewest samples of a waveform output (a streaming enhancer's chunk: 16 ms at 16 kHz)
WAVEFORM_OUT = 256


def _normalised(model, name: str) -> Optional[str]:
    """What makes the output an embedding, not scores, where something does: a layer norm at its end
    (an encoder's hidden states [N, T, D]), a division by a computed norm (an L2-normalised
    embedding), or, on token ids, a mean over the positions of a layer norm's output (a sentence
    encoder's pooling). None for a linear layer's scores (a classifier, a tagger), their mean over
    positions, and anything else."""
    producers = {o: n for n in model.onnx_model.graph.node for o in n.output}
    node = _past_reshapes(producers, name)
    if node is None:
        return None
    if node.op_type in _NORMS:
        return f"a {node.op_type} at its end"
    if node.op_type == "Div" and len(node.input) == 2 and _computed_norm(producers, node.input[1]):
        return "divided by its norm"
    if node.op_type in ("ReduceMean", "Div") and node.input and node.input[-1] in producers \
            and _reads_tokens(model) and _pools_a_norm(producers, node.input[0]):
        return "a mean over the tokens of normalised hidden states"  # not a classifier's per-token logits averaged
    state = _past_reshapes(producers, node.input[0]) if node.op_type in ("Slice", "Gather") and node.input else node
    if state is not None and state.op_type in ("LSTM", "GRU", "RNN"):  # no projection to scores after it: an
        return f"a {state.op_type}'s hidden state"  # encoder's state for its decoder, a char2vec vector
    if EMBEDDING_NAME.search(name.lower()):  # its exporter says so: a speaker's d-vector, a learned fingerprint
        return f"named {name!r}"
    return None


def _fed_back(model, name: str, shape: tuple, inputs: dict) -> Optional[str]:
    """The floating input this output is the next value of, where it is one: a streaming model's state
    (`state` in, `stateN` out; `h0` in, `hn` out), of the input's shape under the input's name."""
    for spec in model.inputs:
        given = inputs.get(spec.name)
        if spec.differentiable and given is not None and tuple(np.shape(given)) == shape and len(shape) <= 3 \
                and names_next_state(spec.name, name):
            return spec.name
    return None


#: output names that declare an embedding (a word of the name; no final activation, rank 2 or 3)
EMBEDDING_NAME = re.compile(r"(^|[^a-z])(embeddings?|embeds?|emb|fingerprints?|descriptors?|[dx]_?vectors?)($|[^a-z])")


def _pools_a_norm(producers: dict, name: str, depth: int = 6) -> bool:
    """Whether a pooled value is a layer norm's output, reached through the pooling's own steps (a
    mask's product, sums, reshapes): a sentence encoder's mean over its hidden states, not magika's
    mean of per-byte class scores."""
    node = producers.get(name)
    if node is None or depth == 0:
        return False
    if node.op_type in _NORMS:
        return True
    return node.op_type in _POOLING_STEPS and any(_pools_a_norm(producers, i, depth - 1) for i in node.input if i)


_POOLING_STEPS = frozenset({"ReduceSum", "ReduceMean", "Mul", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast",
                            "Identity", "Expand"})


_RESHAPING = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Dropout"})


def _past_reshapes(producers: dict, name: str, through: frozenset = frozenset()):
    """The node that computes `name`'s values, past the reshapes and casts after it (and the ops in
    `through`; None: an input)."""
    node = producers.get(name)
    while node is not None and (node.op_type in _RESHAPING or node.op_type in through) and node.input:
        node = producers.get(node.input[0])
    return node
_NORMS = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                    "SkipSimplifiedLayerNormalization", "LpNormalization", "RMSNormalization"})


def _reduced(model, name: str) -> Optional[str]:
    """The ReduceMax or ReduceMin (axes dropped) that computes the output through reshapes: one score per
    position of what it reduces (hunt 32: pmsh's decoder gives each step's top probability), not classes."""
    graph = model.onnx_model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    node = _past_reshapes(producers, name)
    if node is not None and node.op_type == "ScatterND":  # written step by step into a constant (an unrolled
        steps = []  # decoder's probs[:, t] = p.max(): g2p-id's tiny-pron, hunt 33): every update a reduction
        while node is not None and node.op_type == "ScatterND" and len(node.input) == 3:
            steps.append(node.input[2])
            node = producers.get(node.input[0])
        if node is not None and node.output[0] not in constants or not steps:
            return None
        found = {_reduction(producers, update) for update in steps}
        return found.pop() if len(found) == 1 and None not in found else None
    if node is not None and node.op_type == "Concat":  # a fixed first step's score written beside the reduced
        varying = [i for i in node.input if i not in constants]  # ones (tiny-pron: 1.0 for [START])
        node = _past_reshapes(producers, varying[0]) if len(varying) == 1 else None
    return None if node is None else _reduction(producers, node.output[0])


def _reduction(producers: dict, name: str) -> Optional[str]:
    """The ReduceMax or ReduceMin with its axes dropped that computes `name` through reshapes and expands."""
    node = _past_reshapes(producers, name, frozenset({"Expand"}))
    if node is None or node.op_type not in ("ReduceMax", "ReduceMin"):
        return None
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    return node.op_type if keep == 0 else None


def _computed_norm(producers: dict, name: str) -> bool:
    """Whether a value comes from a square root or an L2 reduction within a few shape and clipping steps."""
    node = producers.get(name)
    for _ in range(6):
        if node is None:
            return False
        if node.op_type in ("Sqrt", "ReduceL2", "LpNormalization"):
            return True
        if node.op_type not in ("Clip", "Max", "Add", "Expand", "Unsqueeze", "Reshape", "Identity", "Cast") \
                or not node.input:
            return False
        node = producers.get(node.input[0])
    return False


def _boxes_beside(model, output_index: int, shape: tuple) -> Optional[str]:
    """The name of another output [N, A, 4] over the same A anchors (many, against few classes)
    as these scores [N, A, C]: an SSD-style detector's boxes beside its class scores (Ultra-Light
    RFB's scores [1, 17640, 2] and boxes [1, 17640, 4]). None where there is none."""
    anchors, classes = shape
    if classes < 2 or anchors < 8 * classes or _decoded(model, model.outputs[output_index].name):
        return None
    declared = model.outputs[output_index].shape
    for index, spec in enumerate(model.outputs):
        other = spec.shape
        if index == output_index or not other or len(other) != 3 or other[2] != 4:
            continue
        if other[1] == anchors or (isinstance(other[1], str) and declared and len(declared) == 3
                                   and declared[1] == other[1]):
            return spec.name
    return None


def _decoded(model, name: str) -> bool:
    """Whether an output comes out of a Loop or Scan through ops that keep its elements (a Softmax,
    a Slice, a reshape): a sequence decoded step by step (SLANet's structure tokens beside their
    cells' boxes [N, 501, 4]), not a detector's scores over its anchors."""
    producers = {o: n for n in model.onnx_model.graph.node for o in n.output}
    node = producers.get(name)
    for _ in range(_DECODE_REACH):
        if node is None:
            return False
        if node.op_type in ("Loop", "Scan"):
            return True
        if node.op_type not in _KEEPS_ELEMENTS or not node.input:
            return False
        node = producers.get(node.input[0])
    return False


_KEEPS_ELEMENTS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "Slice", "Identity", "Reshape", "Transpose",
                             "Squeeze", "Unsqueeze", "Cast"})
_DECODE_REACH = 8  # ops walked back from the output


def _stacked_heads(model, name: str) -> Optional[str]:
    """Where the output is a Concat along the channels of branches ending in different ops (a score
    map beside Softplus distance maps), those ops ("Conv, Softplus"): its channels are separate
    heads, not classes whose argmax segments the picture. None otherwise."""
    graph = model.onnx_model.graph
    producers = {o: n for n in graph.node for o in n.output}

    def through(found):  # past what only moves or retypes values (a float16 export's final Cast to float32)
        while found is not None and found.op_type in _CARRYING and found.input:
            found = producers.get(found.input[0])
        return found

    node = through(producers.get(name))
    if node is None or node.op_type != "Concat" or len(node.input) < 2:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    if axis not in (1, -3):
        return None
    ends = []
    for part in node.input:
        found = through(producers.get(part))
        ends.append(found.op_type if found is not None else "input")
    return ", ".join(ends) if len(set(ends)) > 1 else None


#: ops that carry a map's values unchanged in meaning: a reshape, or a cast (a float16 export's last node)
_CARRYING = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Cast"})


#: ops an output may pass through after the layer that computed it: of their first input, and of
#: the one varying input of an arithmetic op with a constant
_PASSING = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Dropout", "Sigmoid", "Relu",
                      "LeakyRelu", "Tanh", "Clip", "Slice"})
_WITH_A_CONSTANT = frozenset({"Add", "Sub", "Mul", "Div"})


def _rows_are_positions(model, name: str) -> bool:
    """Whether a linear layer (a Gemm, or a MatMul by a constant weight) or a decoder's Loop computes
    the output, reached through reshapes, crops and elementwise steps. Its rows are then positions
    (a loop's: its steps) and its last axis their classes or values (a CTC recogniser's [N, 8, 65]; a
    captcha reader's Gemm reshaped to 6 characters x 62 classes; SLANet's table decoder, a Loop
    writing 8 box coordinates per step [N, T, 8]): not a picture's width, nor a detector head's box
    and class rows over anchors (a head joins the grids of its feature maps)."""
    graph = model.onnx_model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constant = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    node = producers.get(name)
    for _ in range(16):
        if node is None:
            return False
        if node.op_type in ("Gemm", "Loop") or (node.op_type == "MatMul" and len(node.input) == 2
                                                 and node.input[1] in constant):
            return True
        varying = [i for i in node.input if i and i not in constant]
        if node.op_type in _PASSING and node.input:
            node = producers.get(node.input[0])
        elif node.op_type in _WITH_A_CONSTANT and len(varying) == 1:
            node = producers.get(varying[0])
        else:
            return False
    return False


def _has_objectness(scores: Tensor) -> bool:
    """Whether a head's first score column [N, A, 1 + C] is an objectness its class scores are
    conditional on (YOLOX, YOLOv5: a detection's confidence is objectness × class score), read off
    the values: probabilities, the first column ~0 on most anchors (the background), while the
    classes' best is not there (trained on objects only, they are arbitrary on background: ddddocr's
    and arbez's YOLOX, medians 2e-6 against 0.09 and 0.18). A YOLOv8 head's class scores are all ~0
    on the background (medians within 10x of each other on six shipped heads)."""
    if scores.shape[-1] < 2 or scores.min() < 0 or scores.max() > 1:
        return False
    first = scores[..., 0].flatten().median()
    others = scores[..., 1:].amax(-1).flatten().median()
    return bool(others >= 0.01 and others >= 100 * first)


def _mask_coefficients(model, output_index: int, rows: int) -> int:
    """How many of a detector head's last rows weigh mask prototypes: the channels of another output
    [N, M, h, w] (YOLOv8-seg's protos, M = 32, beside its [N, 4 + C + 32, A] head), where that leaves
    the head a class; else 0."""
    for i, spec in enumerate(model.outputs):
        shape = spec.shape
        if i != output_index and shape is not None and len(shape) == 4 and isinstance(shape[1], int) \
                and 0 < shape[1] < rows:
            return shape[1]
    return 0


def _shaped_like_input(model, inputs: dict[str, np.ndarray], shape: tuple) -> Optional[str]:
    """The floating input whose one example has the shape of one example of the output (a mask or
    gain over it, a reconstruction), where its rows lead: None if none."""
    for spec in model.inputs:
        x = inputs.get(spec.name)
        if x is not None and np.ndim(x) == len(shape) + 1 and np.issubdtype(np.asarray(x).dtype, np.floating) \
                and tuple(np.shape(x)[1:]) == tuple(shape):
            return spec.name
    return None


def _an_image_of(model, inputs: dict[str, np.ndarray], shape: tuple) -> Optional[tuple[str, float]]:
    """(input, scale) where one example of the output [C, H, W] is an NCHW image input's example, or
    that image upscaled at its aspect ratio (a super-resolution net, whose borders may be cropped:
    waifu2x gives 2H - 28): its channels are the image's colours, not classes. None otherwise."""
    for spec in model.inputs:
        x = inputs.get(spec.name)
        if x is None or np.ndim(x) != 4 or not np.issubdtype(np.asarray(x).dtype, np.floating):
            continue
        size = np.shape(x)
        c, h, w = (size[3], size[1], size[2]) if size[3] <= 4 < size[1] else size[1:]  # NHWC as `_image_size` reads it
        if shape[0] != c or not h or not w:
            continue
        if tuple(shape[1:]) == (h, w) or (shape[1] > h and shape[2] > w and _as_image((h, w), shape[1], shape[2])):
            return spec.name, shape[1] / h
    return None


def _channels_last(view: Tensor, model, inputs: dict[str, np.ndarray]) -> bool:
    """Whether a batch-first rank-4 output keeps its channels last, [N, H, W, C] (tf2onnx's Keras
    segmenters and restorers): H:W is the image input's aspect ratio, C ≥ 2 is narrower than both,
    and its axes 2 and 3 are no picture. Read channels first, as `recognise` knows maps."""
    if view.dim() != 4:
        return False
    h, w, c = view.shape[1:]
    image = _image_size(model, inputs)
    return 2 <= c < min(h, w) and _as_image(image, h, w) and not _as_image(image, w, c)


def _channels_back(resolved: Resolved) -> Resolved:
    """A target resolved on the channels-first view put back on the channels-last output: masks
    [N, C, H, W] as [N, H, W, C], positions (c, h, w) as (h, w, c)."""
    def back(index):
        if isinstance(index, list):
            return [back(i) for i in index]
        return (*index[1:], index[0]) if isinstance(index, (tuple, list)) and len(index) == 3 else index

    target = resolved.target
    if isinstance(target, Target) and target.weights is not None:
        target = replace(target, weights=target.weights.movedim(1, 3) if target.per_example else target.weights.movedim(0, 2))
    elif isinstance(target, (list, tuple)):
        target = back(target)
    detail = dict(resolved.detail)
    if "indices" in detail:
        detail["indices"] = [list(i) for i in back([tuple(i) for i in detail["indices"]])] \
            if detail["indices"] and isinstance(detail["indices"][0], (list, tuple)) else detail["indices"]
    shown = back(resolved.shown) if isinstance(resolved.shown, list) else resolved.shown
    return replace(resolved, target=target, shown=shown, detail=detail)


def _normalises_axis_1(final) -> bool:
    """Whether the output's final Softmax/LogSoftmax is its last op and normalises its axis 1 of rank 3
    (not a [N, T, 2] softmax split into columns [N, T, 1]: MarbleNet's per-frame scores)."""
    return final is not None and not final.through and final.axis in (1, -2)


def _as_image(image: Optional[tuple[int, int]], h: int, w: int) -> bool:
    """Whether H:W is the image input's aspect ratio (within 10%)."""
    return image is not None and abs(h / w - image[0] / image[1]) <= 0.1 * image[0] / image[1]


def _image_size(model, inputs: dict[str, np.ndarray]) -> Optional[tuple[int, int]]:
    """(H, W) of the first floating rank-4 input (NCHW, or NHWC when its last axis is 1–4 wide)."""
    for spec in model.inputs:
        x = inputs.get(spec.name)
        if x is not None and np.ndim(x) == 4 and np.issubdtype(np.asarray(x).dtype, np.floating):
            shape = np.shape(x)
            return (shape[1], shape[2]) if shape[3] <= 4 < shape[1] else (shape[2], shape[3])
    return None


# -- the forms --------------------------------------------------------------------------------------------------------

def _counted(model, spec) -> bool:
    """Whether a 1-D output's length follows the values: declared by a name no input's axis has
    (onnxruntime's `unk__563`, torch's `Gatherscores_dim_0`) or not at all, and computed from an op
    whose size follows values (`ancestry.VALUE_SIZED`). A name alone is not enough: torch's exporter names a
    length it could not tie to an input (`Reshapespeech_probs_dim_0`: a VAD's one probability per
    frame of its input) the same way."""
    if not spec.shape or len(spec.shape) != 1 or isinstance(spec.shape[0], int):
        return False
    named = {d for s in model.inputs for d in (s.shape or ()) if isinstance(d, str)}
    if spec.shape[0] in named:
        return False
    from onnx_attr.importing.ancestry import after_value_sized

    return after_value_sized(model.onnx_model.graph, spec.name)


#: ops whose output's size is read off an operand's values (input positions): one computed from the
#: attributed inputs' values (not their shapes) moves with them
SIZED_BY = {"Range": (0, 1, 2), "Tile": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Reshape": (1,),
            "Resize": (2, 3), "Upsample": (1,), "Slice": (1, 2, 3, 4), "TopK": (1,), "OneHot": (1,), "Pad": (1,)}


def _sized_by_values(model, spec) -> bool:
    """Whether an output of two or more axes (past the batch) has one whose size follows the inputs'
    values: declared by a name no input's axis has (or not at all), and computed after an op sized by
    values (`ancestry.VALUE_SIZED`) or by an operand computed from the inputs' values (Shape and Size cut that:
    a TTS model's frames, Range(0, ΣRound(durations)), hibari-tts's spectral parameters [1, 601, F])."""
    shape = spec.shape or ()
    named = {d for s in model.inputs for d in (s.shape or ()) if isinstance(d, str)}
    if len(shape) < 3 or all(isinstance(d, int) or d in named for d in shape[1:]):
        return False
    from onnx_attr.deeplift.layers import embedding_lookups
    from onnx_attr.importing.ancestry import upstream, value_sized
    from onnx_attr.importing.specialize import value_dependent

    graph = model.onnx_model.graph
    _, nodes = upstream(graph, spec.name)
    if any(node.op_type == "Loop" for node in nodes):  # a decoder's steps: held at the input's count along
        return False  # the path (DeepLift's specialisation, the gradient methods' held decoders)
    if any(value_sized(node) for node in nodes):
        return True
    looked_up = embedding_lookups(model)
    tainted = value_dependent(graph, [s.name for s in model.inputs if s.differentiable or s.name in looked_up])
    # what is attributed: sizes read off held settings do not move
    return any(node.input[i] in tainted for node in nodes for i in SIZED_BY.get(node.op_type, ())
               if i < len(node.input) and node.domain in ("", "ai.onnx"))


def _itself(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    return Resolved(None, None, "the output itself, one value per example", detail)


@dataclass(frozen=True)
class LargestScore:
    """A target: per example its largest score, 0 where it has none. For a detector's scores whose
    count follows the values (those above a threshold, kept by an NMS), an index would name another
    detection, or none, once a perturbation changes the count; the largest is there in every copy
    (0: nothing detected). One example's is the largest of the whole output, whichever axis a batch
    probe took for its batch (a count of 1 at one row and 3 at three looks like one)."""

    examples: int = 1

    def __call__(self, output: Tensor) -> Tensor:
        flat = _example_rows(output, self.examples)
        return flat.amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])


def _example_rows(output: Tensor, examples: int) -> Tensor:
    """The output as one row per example: one example's is the whole output, whichever axis a batch probe
    took for its batch."""
    return output.reshape(1, -1) if examples == 1 else output.reshape(output.shape[0], -1)


@dataclass(frozen=True)
class OutputNorm:
    """A target: per example the L2 norm of its output, whatever the output's length (a waveform whose
    number of samples follows the values); at the input it is the output's length along itself, e·ê."""

    examples: int = 1

    def __call__(self, output: Tensor) -> Tensor:
        return _example_rows(output, self.examples).norm(dim=1)


def _top(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    if view.dim() <= 1:
        return _itself(view, layout, value, detail)
    if layout.counted:
        detail["indices"] = view.argmax(1).tolist()
        return Resolved(LargestScore(len(view)), "largest score", layout.top + "; its count follows the values, so the "
                        "largest score itself, whichever detection holds it (0 where none is left)", detail)
    if view.dim() == 2:
        classes = view.argmax(1).tolist()
        detail["indices"] = classes
        return Resolved(classes, classes, layout.top, detail)
    if layout.kind == "detector" and view.dim() == 3:  # the largest class score, never a box coordinate
        found = _anchor(view, replace(layout, objectness=False, box=layout.box + int(layout.objectness)), None, detail)
        return replace(found, source="the largest class score of any anchor (after the box coordinates)")
    positions = largest_positions(view)
    detail["indices"] = [list(p) for p in positions]
    what = "the top pixel" if layout.kind == "map" else layout.top if layout.kind == "classes" else \
        "the largest value of the output (argmax over all its elements)"
    return Resolved(positions, detail["indices"], what, detail)


def largest_positions(output) -> list[tuple[int, ...]]:
    """Per example (axis 0), the index tuple of its largest element over all the other axes: the
    same form as `--target a:b`, one per example. Ties go to the first in C order."""
    flat = output.reshape(output.shape[0], -1).argmax(1).tolist()
    return [tuple(int(i) for i in np.unravel_index(f, tuple(output.shape[1:]))) for f in flat]


def _region(view: Tensor, layout: Layout, value: Optional[float], detail: dict) -> Resolved:
    if view.dim() <= 2:
        raise InputError(f"--target region needs a map (an output with at least 2 axes besides the batch); this "
                         f"output is {layout.name}")
    import torch

    if layout.first_channel:  # the region on channel 0; the other heads' channels get no weight
        found = _region(view[:, :1], replace(layout, first_channel=False), value, detail)
        weights = torch.zeros(view.shape, dtype=torch.float32)
        weights[:, :1] = found.target.weights
        return replace(found, target=Target(weights=weights, per_example=True),
                       source=found.source.replace("the predicted region", "channel 0's predicted region"))
    flat = view.reshape(view.shape[0], -1)
    if value is not None and layout.sigmoid_stripped and 0 < value < 1:  # a probability, as DBNet's thresh 0.3
        logit = math.log(value / (1 - value))
        thresholds = torch.full((len(flat),), logit, dtype=flat.dtype)
        rule = f"p > {value:g}, i.e. logit > {logit:.4g} (the Sigmoid was stripped)"
    elif value is not None:
        thresholds, rule = torch.full((len(flat),), float(value), dtype=flat.dtype), f"values > {value:g}"
    elif layout.sigmoid_stripped:
        thresholds, rule = torch.zeros(len(flat), dtype=flat.dtype), "p > 0.5, i.e. logit > 0 (the Sigmoid was stripped)"
    elif flat.min() >= 0 and flat.max() <= 1:
        thresholds, rule = torch.full((len(flat),), 0.5, dtype=flat.dtype), "values > 0.5 (the map lies in [0, 1])"
    else:
        low, high = flat.min(1).values, flat.max(1).values
        thresholds, rule = (low + high) / 2, "values above halfway between the example's smallest and largest"
    masks = flat > thresholds[:, None]
    empty = ~masks.any(1)
    masks[empty, flat[empty].argmax(1)] = True  # nothing above it: the top value alone
    masks = masks.reshape(view.shape).to(torch.float32)
    sizes = masks.reshape(len(masks), -1).sum(1).long().tolist()
    detail.update(threshold=[float(t) for t in thresholds], rule=rule, mask_size=sizes,
                  fell_back_to_top=[int(i) for i in torch.nonzero(empty).reshape(-1)])
    fell = empty.tolist()
    labels = [f"target: the top value alone (the region of {rule} is empty)" if e else
              f"target: the region of {s} value(s) with {rule}, summed" for s, e in zip(sizes, fell)]
    source = f"the predicted region's summed score ({rule})"
    if all(fell):
        source = f"the top value: the predicted region ({rule}) is empty"
    elif any(fell):
        source += f"; where that region is empty (example(s) {detail['fell_back_to_top'][:20]}), the top value alone"
    return Resolved(Target(weights=masks, per_example=True), "region" if value is None else f"region>{value:g}",
                    source, detail, labels)


def _segment(view: Tensor, layout: Layout, value: Optional[int], detail: dict) -> Resolved:
    """Class K's score summed over its predicted segment (the pixels whose argmax is K); K the
    class predicted on the most pixels, per example, unless given."""
    import torch

    if view.dim() != 4 or view.shape[1] < 2:  # one channel has no argmax to segment by: all of it was summed
        raise InputError(f"--target segment needs class maps [N, C, H, W] with C >= 2; this output is {layout.name}"
                         + (" (one channel: use --target region)" if view.dim() == 4 else ""))
    classes = view.shape[1]
    predicted = view.argmax(1)  # [N, H, W]
    background = value is None and layout.final in ("Softmax", "LogSoftmax")  # column 0: no object (MTCNN's
    # P-Net: "no face" on all but a few pixels; VOC's and face parsers' background)
    if value is None:
        counts = [torch.bincount(p.reshape(-1), minlength=classes) for p in predicted]
        chosen = [int(c[1:].argmax()) + 1 if background and bool(c[1:].any()) else int(c.argmax()) for c in counts]
    elif not -classes <= value < classes:
        raise InputError(f"--target segment={value}: the output has {classes} classes (0 to {classes - 1})")
    else:
        chosen = [value % classes] * len(view)
    masks = torch.zeros(view.shape, dtype=torch.float32)
    for i, k in enumerate(chosen):
        masks[i, k] = (predicted[i] == k).to(torch.float32)
    sizes = masks.reshape(len(masks), -1).sum(1).long().tolist()
    empty = [i for i, size in enumerate(sizes) if size == 0]
    if empty:
        raise InputError(f"--target segment={value}: class {value} is predicted on no pixel of example(s) {empty}, "
                         "so its segment is empty; name a class the model predicts there, or use --target segment")
    detail.update(classes=chosen, mask_size=sizes)
    labels = [f"target: class {k}'s score over its {s} predicted pixel(s), summed" for k, s in zip(chosen, sizes)]
    why = f"class {value}" if value is not None else "the class predicted on the most pixels" + (
        " besides class 0 (a Softmax's background, taken only where nothing else is predicted)" if background else "")
    return Resolved(Target(weights=masks, per_example=True), "segment" if value is None else f"segment={value}",
                    f"{why}: its score summed over the pixels predicted as it", detail, labels)


def _greedy(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    if view.dim() != 3:
        raise InputError(f"--target greedy needs a sequence [N, T, C] (or [T, N, C] with --batch-axis 1); this "
                         f"output is {layout.name}")
    import torch

    path = view.argmax(2)
    masks = torch.zeros(view.shape, dtype=torch.float32)
    masks.scatter_(2, path.unsqueeze(2), 1.0)
    detail["path"] = path.tolist()
    found = detail.pop("steps_from", None)
    source = "the greedy path's summed score (the argmax class of each step)"
    if value == "all":  # every step, as asked: the padding a mask or lengths leave out too (sweep 35)
        found = None
        source += ", over every step (greedy=all: no blank or padding left out)"
    if found is not None:  # padding apart: the steps the model's own mask or lengths keep
        name, kept = found
        masks *= torch.from_numpy(kept).to(masks.dtype).unsqueeze(2)
        detail.update(steps_from=name, steps_kept=kept.sum(1).tolist())
        source += f", over the steps input {name!r} keeps (its padding left out)"
    blank = detail.pop("blank", None)
    if blank is not None:  # the characters read: a step of CTC's blank reads none (an example reading none keeps all)
        read = (path != blank) & (masks.sum(2) > 0)
        read |= ~read.any(1, keepdim=True)
        masks *= read.to(masks.dtype).unsqueeze(2)
        detail.update(blank=blank, steps_read=read.sum(1).tolist())
        source += (f", over the steps that read a character (class {blank}, which the path takes on most steps, "
                   "first or last of the classes: a CTC recogniser's blank or a decoder's padding, left out; "
                   "--target greedy=all keeps it)")
    steps = masks.sum((1, 2)).long().tolist()
    labels = [f"target: the greedy path's summed score over {k} steps" for k in steps]
    return Resolved(Target(weights=masks, per_example=True), "greedy", source, detail, labels)


def _embedding(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    """The embedding's length along its own direction at the input: e·ê with ê = e/|e|, e the output [N, D]
    or its mean over the positions [N, T, D] the model's mask keeps. Its weights are fixed at the input,
    so the change explained is how far the baseline's embedding falls short of the input's along it:
    which features make the embedding point where it points."""
    if layout.kind in ("signal", "features"):  # its values together, whatever its axes: one direction over all
        found = _embedding(view.reshape(len(view), -1), replace(layout, kind="whole " + layout.kind), value, detail)
        return replace(found, target=Target(weights=found.target.weights.reshape(view.shape), per_example=True))
    noun = {"whole signal": "signal", "whole features": "feature maps", "waveform": "waveform"}.get(
        layout.kind, "output" if layout.counted else "embedding")
    if layout.counted:  # its length follows the values (a TTS model's durations): no direction pairs with
        detail["length"] = view.reshape(len(view), -1).norm(dim=1).tolist()  # a perturbed copy's samples
        return Resolved(OutputNorm(len(view)), f"{noun} norm", f"the {noun}'s length |e|: its number of "
                        f"{'samples' if noun == 'waveform' else 'elements'} follows the values, so its norm, however "
                        "long it comes out (e·ê at the input)", detail)
    if view.dim() not in (2, 3):
        raise InputError(f"--target embedding needs an embedding [N, D] or one per position [N, T, D]; this output "
                         f"is {layout.name}")
    import torch

    what = f"the {noun}"
    weights = torch.ones(view.shape[:2], dtype=view.dtype) if view.dim() == 3 else None
    found = detail.pop("steps_from", None)
    if found is not None:  # padding apart: the positions the model's own mask keeps
        name, kept = found
        weights = torch.from_numpy(kept).to(view.dtype)
        detail.update(steps_from=name, steps_kept=kept.sum(1).tolist())
        what = f"the mean {noun} over the positions input {name!r} keeps"
    elif weights is not None and view.shape[1] > 1:
        what = f"the mean {noun} over the positions"
    source = f"the length of {what} along its own direction at the input (e·ê, ê = e/|e|)"
    if weights is not None:
        weights = weights / weights.sum(1, keepdim=True)
        pooled = (view * weights.unsqueeze(2)).sum(1)
    else:
        pooled = view
    direction = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(torch.finfo(view.dtype).tiny)
    full = direction if weights is None else weights.unsqueeze(2) * direction.unsqueeze(1)
    detail["length"] = pooled.norm(dim=1).tolist()
    labels = [f"target: the {noun}'s length along itself" for _ in range(len(view))]
    return Resolved(Target(weights=full.to(torch.float32), per_example=True), "embedding", source, detail, labels)


def _summed(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    """Every value of the output summed per example (over the steps an input mask or lengths keeps): a
    decoder's per-step confidences are the decoded sequence's, not one step's (g2p-id's tiny-pron writes
    1.0 for its [START] step, which `top` picked: every attribution 0, hunt 33)."""
    import torch

    weights = torch.ones(view.shape, dtype=torch.float32)
    source = "the output's values summed over its positions"
    found = detail.pop("steps_from", None)
    if found is not None:
        name, kept = found
        weights = weights * torch.from_numpy(kept.reshape(*kept.shape, *[1] * (view.dim() - 2))).to(weights.dtype)
        detail.update(steps_from=name, steps_kept=kept.sum(1).tolist())
        source += f", over the steps input {name!r} keeps (its padding left out)"
    labels = ["target: the summed values" for _ in range(len(view))]
    return Resolved(Target(weights=weights, per_example=True), "sum", source, detail, labels)


def _blank(view: Tensor) -> Optional[int]:
    """CTC's blank of a recogniser's sequence [N, T, C] over an alphabet (`MIN_ALPHABET` classes or
    more): the class its greedy path takes on the most steps, where that is the first or the last
    class (PaddleOCR and ddddocr put it first, Keras's ctc_decode last) and on at least a third of
    the steps: most steps of a text line read no new character. None otherwise."""
    import torch

    classes = view.shape[2]
    counts = torch.bincount(view.argmax(2).reshape(-1), minlength=classes)
    top = int(counts.argmax())
    return top if top in (0, classes - 1) and classes >= MIN_ALPHABET and 3 * int(counts[top]) >= view.shape[0] * \
        view.shape[1] else None


#: the fewest classes a CTC recogniser has: ten digits and the blank (a small class set is a tagger's or a phase's)
MIN_ALPHABET = 11


def _pictures_or_sound(inputs: dict[str, np.ndarray]) -> bool:
    """Whether a floating input is a picture (rank 4, 1, 3 or 4 channels first or last) or a waveform
    (rank 2 or 3, WAVEFORM_SAMPLES or more along an axis): what a CTC recogniser reads. A box
    list's reading order [1, N, N'] or a tile classifier's sigmoids are no line of text."""
    from onnx_attr.methods.base import picture_shape

    for value in inputs.values():
        shape = np.shape(value)
        if np.issubdtype(np.asarray(value).dtype, np.floating) and (
                picture_shape(shape) or len(shape) in (2, 3) and max(shape) >= WAVEFORM_SAMPLES):
            return True
    return False


#: the fewest samples a waveform input holds here (a quarter second at 16 kHz)
WAVEFORM_SAMPLES = 4000


def _reads_tokens(model) -> bool:
    """Whether an input of the model is token ids looked up in an embedding: a tagger's class 0 (an
    'O' tag, a part of speech) is an answer, not a blank."""
    from onnx_attr.deeplift.layers import embedding_lookups

    return bool(embedding_lookups(model))


def _steps_per_token(inputs: dict[str, np.ndarray], view: Tensor) -> int:
    """How many steps of a sequence [N, T, C] each token of an ids input [N, L] has, where T is a
    multiple of L (0 otherwise): a tagger has one step per token, a CTC transducer over characters
    several (hibari-tts's grapheme-to-phoneme model: 4), most of them its blank's."""
    steps = view.shape[1]
    for value in inputs.values():
        value = np.asarray(value)
        if value.ndim == 2 and value.shape[0] == view.shape[0] and np.issubdtype(value.dtype, np.integer) \
                and value.shape[1] and steps % value.shape[1] == 0:
            return steps // value.shape[1]
    return 0


def _steps_from(inputs: dict[str, np.ndarray], view: Tensor) -> Optional[tuple[str, np.ndarray]]:
    """(input name, [N, T] bool) of the steps a sequence output's padding leaves, from an input that
    says which they are: a mask named so ('attention_mask': 0/1 per step, [N, T], or an additive one
    [N, 1, 1, T] of 0 and a large negative) or lengths
    ('length', 'seq_lens': one count per example, [N]). None without one, or where it would leave an
    example no step."""
    n, steps = view.shape[0], view.shape[1]
    for name, value in inputs.items():
        value = np.asarray(value)
        lowered = name.lower()
        if value.shape == (n, steps) and np.isin(value, (0, 1)).all():
            kept = value != 0
            if "mask" not in lowered and not _unnamed_mask(kept, name, inputs):
                continue
        elif "mask" in lowered and value.size == n * steps and value.ndim >= 2 and value.shape[0] == n \
                and value.shape[-1] == steps and np.issubdtype(value.dtype, np.floating) and (value <= 0).all():
            kept = value.reshape(n, steps) == 0  # an additive mask [N, 1, 1, T]: 0 on tokens, -30 or -inf on padding
        elif "len" in lowered and value.shape in ((n,), (n, 1)) and np.issubdtype(value.dtype, np.integer) \
                and (value >= 0).all() and (value <= steps).all():
            kept = np.arange(steps)[None, :] < value.reshape(n, 1)
        else:
            continue
        if kept.any(1).all() and not kept.all():
            return name, kept
    return _padded_ids(inputs, n, steps)


def _padded_ids(inputs: dict[str, np.ndarray], n: int, steps: int) -> Optional[tuple[str, np.ndarray]]:
    """Without a mask or lengths, token ids [N, T] padded at the end with id 0 (g2p-id's letter BERT
    pads every word to 32 and reads the [mask] steps alone: 75% of its greedy sum was padding steps,
    hunt 33): the steps before each row's trailing zeros. None where no row ends in one, or one has
    nothing else."""
    for name, value in inputs.items():
        value = np.asarray(value)
        if value.shape != (n, steps) or not np.issubdtype(value.dtype, np.integer) or (value > 1).sum() < n:
            continue  # ids, not a 0/1 mask
        reversed_nonzero = np.flip(value != 0, axis=1)
        trailing = np.where(reversed_nonzero.any(1), reversed_nonzero.argmax(1), steps)  # zeros at each row's end
        if trailing.any() and (trailing < steps).all():
            return name, np.arange(steps)[None, :] < (steps - trailing)[:, None]
    return None


def _unnamed_mask(kept: np.ndarray, name: str, inputs: dict[str, np.ndarray]) -> bool:
    """A 0/1 input a PyTorch export left unnamed ('onnx::Unsqueeze_1') read as a padding mask: ones
    then zeros in every row (a sentence pair's token types are zeros, ones, then zeros), and beside
    it ids of the same shape holding one value (the pad id) wherever it is 0."""
    if not (kept == (np.arange(kept.shape[1])[None, :] < kept.sum(1, keepdims=True))).all():
        return False
    for other, ids in inputs.items():
        ids = np.asarray(ids)
        if other != name and ids.shape == kept.shape and np.issubdtype(ids.dtype, np.integer) and (~kept).any():
            padding = ids[~kept]
            if (padding == padding[0]).all() and (ids[kept] != padding[0]).any():
                return True
    return False


def _anchor(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    if view.dim() != 3:
        raise InputError(f"--target anchor needs a detector head [N, 4+C, A] or [N, A, 4+C]; this output is "
                         f"{layout.name}")
    scores_first = layout.scores_first if layout.kind == "detector" else view.shape[1] < view.shape[2]
    box = layout.box if layout.kind == "detector" else (0 if layout.final == "Sigmoid" else 4)
    end = (view.shape[1] if scores_first else view.shape[2]) - layout.masks  # the class scores end where masks begin
    scores = view[:, box:end, :] if scores_first else view[:, :, box:end]
    if scores.numel() == 0:
        raise InputError(f"--target anchor: the output {list(view.shape)} has no class scores after {box} box "
                         "coordinates")
    if layout.objectness:  # the best detection: objectness × class score, and its class score explained
        heads = scores.transpose(1, 2) if scores_first else scores  # [N, A, 1 + C]
        confidence = heads[..., :1] * heads[..., 1:]
        best = [divmod(int(c.argmax()), c.shape[1]) for c in confidence]  # (anchor, class) per example
        index = [(c + box + 1, a) if scores_first else (a, c + box + 1) for a, c in best]
        detail.update(indices=[list(i) for i in index], box_coordinates=box, objectness=box)
        return Resolved(index, detail["indices"], "the best detection's class score (its anchor and class by "
                        "objectness × class score)", detail)
    skip = layout.background if layout.kind == "detector" else 0
    classes = scores[:, skip:, :] if scores_first else scores[:, :, skip:]
    index = [(i + box + skip, j) if scores_first else (i, j + box + skip) for i, j in largest_positions(classes)]
    detail.update(indices=[list(i) for i in index], box_coordinates=box)
    if layout.masks:
        detail["mask_coefficients"] = layout.masks
    if skip:
        detail["background_columns"] = skip
        return Resolved(index, detail["indices"], "the top anchor's best class score (the background's column "
                        "left out)", detail)
    return Resolved(index, detail["indices"], f"the top anchor's best class score (after {box} box coordinates"
                    + (f", before {layout.masks} mask coefficients)" if layout.masks else ")"), detail)


def _indices(view: Tensor, layout: Layout, value: Any, detail: dict) -> Resolved:
    rank = view.dim() - 1
    if isinstance(value, list) and rank > 1 and len(value) == rank:
        value = tuple(value)  # k numbers for an output with k axes besides the batch: one index
    value = _documented_index(view, layout, value)
    if isinstance(value, list) and len(value) != len(view):
        raise InputError(f"--target gives {len(value)} indices for {len(view)} example(s): give one per example"
                         + (f", or one per axis after the batch ({rank})" if rank > 1 else ", or one int"))
    if isinstance(value, tuple) and len(value) != rank:
        raise InputError(f"--target gives {len(value)} indices; the output of shape [N, "
                         f"{', '.join(map(str, view.shape[1:]))}] takes {rank} after the batch axis")
    value = _from_the_end(value, tuple(view.shape))
    detail["indices"] = list(value) if isinstance(value, tuple) else value
    # shown as the tuple it is: a list would read as one target per example (the pictures' titles)
    return Resolved(value, value if isinstance(value, tuple) else detail["indices"], "given", detail)


def _documented_index(view: Tensor, layout: Layout, value: Any) -> Any:
    """The short index forms the layouts document, on the output's own axes: a detector head's `a,k`
    (anchor a, class k counted after its box coordinates and objectness) and a map's `h,w` (its axes
    of size 1 at 0: [N, 1, H, W] and [N, H, W, 1]). Anything else is left as given."""
    if not isinstance(value, (list, tuple)) or any(not isinstance(v, int) for v in value):
        return value
    if layout.kind == "detector" and view.dim() == 3 and len(value) == 2:
        anchor, k = value
        column = layout.box + int(bool(layout.objectness)) + k if k >= 0 else k
        return (column, anchor) if layout.scores_first else (anchor, column)
    wide = [a for a in range(1, view.dim()) if view.shape[a] != 1]
    if layout.kind == "map" and 1 < len(wide) == len(value) < view.dim() - 1:
        given = iter(value)
        return tuple(next(given) if a in wide else 0 for a in range(1, view.dim()))
    return value


def _from_the_end(target: Any, shape: Sequence[int]) -> Any:
    """Negative class (or position) indices made positive against the output's non-batch axes."""
    def one(v: int, size: int) -> int:
        return v + size if -size <= v < 0 else v

    if isinstance(target, int):
        return one(target, shape[1]) if len(shape) >= 2 else target
    if isinstance(target, tuple):
        return tuple(one(v, s) for v, s in zip(target, shape[1:]))
    if isinstance(target, list):
        return [one(v, shape[1]) if len(shape) >= 2 else v for v in target]
    return target


def _in_whole(target: Any) -> Any:
    """A target resolved on an output's leading 1 as its batch, for the methods, which read that output
    as one whole example: indices gain that axis's 0, masks that axis."""
    if isinstance(target, Target):
        if target.weights is not None:
            return Target(weights=target.weights[:, None] if target.per_example else target.weights[None],
                          per_example=target.per_example)
        return Target(index=_in_whole(target.index))
    if isinstance(target, list):
        return [_in_whole(t) for t in target]
    if target is None:
        return target
    return (0, *target) if isinstance(target, tuple) else (0, target)


def _folded(model, output_index: int, inputs: dict[str, np.ndarray], out: Tensor, axis: Optional[int]) -> bool:
    """Whether the probe reads the output's rows on another axis than `axis`, where that axis holds
    more than one value per row: a Reshape that bakes the batch in stacks the rows into the anchors
    (YuNet [1, 1600, 1] for one row, [1, 4800, 1] for three; hunt 30), so the methods would look
    there for the rows. The example is then named on `axis` (its one row there), not left to them."""
    if axis is None or not inputs:
        return False
    from onnx_attr.importing.batch import output_axis

    found = output_axis(model, model.prepare(inputs), output_index)  # the probe's, cached per input shapes
    return found is not None and found != axis and found < out.dim() and out.shape[found] != out.shape[axis]


def _on_axis(target: Any, axis: Optional[int], named: bool = False) -> Any:
    """Indices or masks as the methods read them on an output batched on `axis` (None: one whole
    example, which the methods find by the same probe); `named`: the axis is given them even where it
    is 0 (`_folded`)."""
    if axis is None or axis == 0 and not named:
        return target
    if target is None:
        return Target(batch_axis=axis)
    if isinstance(target, Target):
        return Target(index=target.index, weights=target.weights, per_example=target.per_example, batch_axis=axis)
    return Target(index=target, batch_axis=axis)


__all__ = ["resolve", "parse_form", "output_batch_axis", "recognise", "largest_positions", "FORMS_HELP", "Resolved"]
