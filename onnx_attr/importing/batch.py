"""Where the batch is: found from the graph's declared shapes, then checked on the call's values.

Exports put the batch where their framework had it: axis 0 of an image, axis 1 of an LSTM state
(`state [2, batch, 128]`), nowhere for a sample rate or a state of fixed batch 1 (`h [1, 1, 128]`),
and a time-major recogniser puts it on axis 1 of its [T, N, C] output. A symbol shared by several
inputs is the batch; an input without it has no batch and is held at its given value. Declared
symbols can still mislead: a model that runs its axis 0 through an LSTM as time declares it like a
batch. So before a method stacks rows (IG's steps), `probe` runs the rows [x, x', x] and checks
that x's first and last blocks of each output are the same: rows that influence each other are not a
batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from onnx_attr.importing.batch_graph import traced_output_axes
from onnx_attr.importing.specs import TensorSpec


def batch_axes(specs: Sequence[TensorSpec], tensors: Sequence[Tensor] | None = None) -> list[Optional[int]]:
    """The batch axis of each input (None: it has no batch), from the declared shapes.

    A symbol named by two or more inputs is the batch, on whatever axis each input has it.
    Without one, a symbol whose name says batch is (a time-major [50, batch, 16]); else the first
    input's axis 0 is (the convention of every exporter), and another input has it on axis 0 when
    that axis is not fixed or leads with the first's fixed size (the batch baked in the same), on
    its only free axis when it has one, or else on its only axis of that size when it is above 1;
    otherwise it has no batch. A 0-d value never has one."""
    shapes = [s.shape for s in specs]
    counts = Counter(d for shape in shapes if shape for d in dict.fromkeys(x for x in shape if isinstance(x, str)))
    # a symbol every input carrying it has past a fixed leading 1 and another axis is a size they share
    # (CRAFT's refiner: [1, 2, height, width] and [1, 32, height, width]), the batch baked in as 1; on axis 1
    # it stays the batch (a time-major step: [1, N, 4] beside a state [1, N, 3])
    shared = [d for d, c in counts.items() if c > 1 and not all(
        shape[0] == 1 and shape.index(d) > 1 for shape in shapes if shape and d in shape)]
    named = [d for d in counts if "batch" in d.lower()]  # PyTorch's dynamic_axes {1: "batch"} of a time-major
    # [T, batch, F] input: named so, it is the batch wherever it stands, where no symbol is shared
    if shared or len(named) == 1:
        symbol = max(shared, key=lambda d: (counts[d], any(shape and shape[0] == d for shape in shapes))) if shared \
            else named[0]
        axes = [shape.index(symbol) if shape and symbol in shape else None for shape in shapes]
    else:
        lead = next((shape for shape in shapes if shape is None or len(shape) > 0), None)
        axes = [_axis_without_symbol(shape, lead) for shape in shapes]
    if tensors is not None:
        axes = [None if t.dim() == 0 or (a is not None and a >= t.dim()) else a for a, t in zip(axes, tensors)]
        if not shared:  # found by convention alone: an input whose rows there are not the first's in number is
            # no batch (a list of candidates, [n_h] positions beside one page image [1, 3, H, W]): held as given
            first = next(((t, a) for t, a in zip(tensors, axes) if a is not None), None)
            if first is not None:
                rows = first[0].shape[first[1]]
                axes = [a if a is None or t.shape[a] == rows else None for t, a in zip(tensors, axes)]
    return axes


def output_batch_axes(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> list[Optional[int]]:
    """Each output's batch axis as declared (the inputs' batch symbol, else the first input's
    convention); `probe` settles it on a call's values, where a time-major output may differ."""
    axes = batch_axes(inputs)
    symbol = next((s.shape[a] for s, a in zip(inputs, axes) if a is not None and s.shape
                   and isinstance(s.shape[a], str)), None)
    lead = next((s.shape for s in inputs if s.shape is None or len(s.shape) > 0), None)
    found = []
    for spec in outputs:
        if symbol is not None and spec.shape and symbol in spec.shape:
            found.append(spec.shape.index(symbol))
        elif symbol is not None and spec.shape and spec.shape[0] == 1:  # the batch baked in as 1 (a Reshape to
            found.append(0)  # [40, 1, 3, 192] in khmersm's tagger): not the output's one free axis
        elif symbol is None and spec.shape and lead and _fixed(lead[0]) and spec.shape[0] == lead[0]:
            found.append(0)  # the export fixes its batch and the output leads with it: [1, T', 248] of a [1, T, 400]
        elif symbol is None and spec.shape and lead and _fixed(lead[0]) and not _fixed(spec.shape[0]) \
                and list(spec.shape).count(lead[0]) == 1:
            # the export fixes its batch and the output declares that size on one other axis, after a free
            # one: there (a line reader's time-major [T, 1, C] for its [1, 1, 48, W], hunt 36)
            found.append(list(spec.shape).index(lead[0]))
        else:
            found.append(_axis_without_symbol(spec.shape, lead) if spec.shape != lead else 0)
    return found


def fixed_batch(specs: Sequence[TensorSpec]) -> Optional[int]:
    """The batch size an export fixes (a positive int on the first batched input's batch axis)."""
    for spec, axis in zip(specs, batch_axes(specs)):
        if axis is not None and spec.shape:
            return spec.shape[axis] if _fixed(spec.shape[axis]) else None
    return None


def _axis_without_symbol(shape, lead) -> Optional[int]:
    if shape is None:
        return 0  # rank unknown: the convention
    if not shape:
        return None
    if shape is lead or not _fixed(shape[0]):
        return 0
    free = [i for i, d in enumerate(shape) if not _fixed(d)]
    # both lead with the same fixed size: the batch baked in the same (a map beside its features; a
    # decoder step's encoder states [1, T, 256] beside its tokens [1, L], whose one free axis is time)
    if lead and _fixed(lead[0]) and lead[0] == shape[0]:
        return 0
    if len(free) == 1:
        return free[0]
    same = [i for i, d in enumerate(shape) if d == (lead[0] if lead else None)]
    if not free and lead and _fixed(lead[0]) and lead[0] > 1 and len(same) == 1:
        return same[0]  # a fixed batch elsewhere: a state [2, 4, 128] beside an input [4, 576]
    return None


def _fixed(d) -> bool:
    return isinstance(d, int) and d > 0


@dataclass(frozen=True)
class Layout:
    """What `probe` found for one set of input shapes."""

    stackable: bool  # the batch axes hold independent rows (else the tensors are one whole example)
    outputs: tuple[Optional[int], ...]  # each output's batch axis (None: it has no batch)
    #: several rows ran and came out right: a declared fixed batch is not binding (None: not yet
    #: asked; `runs` then finds out when a method first wants more rows in a pass, see `doubles`)
    found_doubles: Optional[bool] = False
    runs: Optional[Callable[[], "Layout"]] = field(default=None, repr=False, compare=False)

    @property
    def doubles(self) -> bool:
        """Whether rows may share a pass beyond a declared fixed batch. Where the declared shapes
        settled the axes (`_declared_single`), the rows are run here, once, on the first method that
        would stack them (IG's steps; DeepLift never does): it keeps the axes given out, so doubling
        needs the runs to find those same axes."""
        if self.found_doubles is None:
            ran = self.runs()
            same = ran.stackable and ran.found_doubles and ran.outputs == self.outputs
            object.__setattr__(self, "found_doubles", bool(same))
            object.__setattr__(self, "runs", None)  # drops the example it held
        return bool(self.found_doubles)


def probe(model, tensors: Sequence[Tensor], axes: Sequence[Optional[int]], outputs: Optional[Sequence] = None
          ) -> Layout:
    """Run rows [x, x', x] (x' = x halved, a different example) along the batch axes and compare
    x's two blocks of every output; cached on the model per input shapes. A model cut
    after a hidden tensor (`batch_parent` set: a neuron method's) has the examples of the model
    it was cut from: where that one's rows mix, its inputs are one whole example too. `outputs`,
    the model's on `tensors` when a caller has them, stand for the one example's run when the
    tensors hold one example (the CLI's plain forward: one run of the model fewer)."""
    key = tuple((tuple(t.shape), str(t.dtype), a) for t, a in zip(tensors, axes))
    cache = model.__dict__.setdefault("_batch_layouts", {})
    if key not in cache:
        parent = model.__dict__.get("batch_parent")  # a model cut inside another, fed the same inputs
        whole = parent is not None and not probe(parent, tensors, axes).stackable
        cache[key] = Layout(False, tuple(None for _ in model.outputs)) if whole else _probe(model, tensors, axes,
                                                                                             outputs)
    return cache[key]


def output_axis(model, tensors: Sequence[Tensor], index: int) -> Optional[int]:
    """Output `index`'s batch axis on these inputs (None: the output is one whole example)."""
    layout = probe(model, tensors, batch_axes(model.inputs, tensors))
    return layout.outputs[index] if index < len(layout.outputs) else 0


#: ops whose output for one row depends on every row through a statistic of the whole tensor (the
#: scale and zero point of a dynamic quantization): stacked rows change each other's rounding
WHOLE_TENSOR_STATISTICS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"})


def pass_batch(model) -> Optional[int]:
    """The rows one pass of the model may hold: the export's fixed batch, or 1 where a statistic of
    the whole input (a dynamic quantization's scale) would make rows run together round each
    other (each example then runs alone, as it does in production); None: any number."""
    found = model.__dict__.get("_pass_batch")
    if found is None:
        alone = 1 if _rows_round_together(model) else 0
        found = model.__dict__["_pass_batch"] = (fixed_batch(model.inputs) or alone,)
    source = model.__dict__.get("rows_of")  # a sibling over the same graph (a re-cut, a substitution)
    inherited = pass_batch(source) if source is not None else None
    return min(filter(None, (found[0], inherited)), default=None)


def _rows_round_together(model) -> bool:
    """Whether a statistic of the whole input (`WHOLE_TENSOR_STATISTICS`) couples the rows of a pass."""
    return any(n.op_type in WHOLE_TENSOR_STATISTICS for n in model.onnx_model.graph.node)


def _probe(model, tensors, axes, outputs=None) -> Layout:
    sizes = {t.shape[a] for t, a in zip(tensors, axes) if a is not None and t.dim() > a}
    if (fixed_batch(model.inputs) or 1) > 1 and len(sizes) > 1:  # the batch read by convention off a fixed leading size (an unbatched
        # [3, H, W] picture) that another input's rows do not share (its [9, 5, 2] boxes): no batch, one example
        return Layout(False, tuple(None for _ in model.outputs))
    fixed = pass_batch(model)
    if (fixed or 1) > 1:  # one row is outside what the export declares: as declared, unless its rows mix
        # (or the fixed size is one example's: no output has it)
        whole = _no_output_keeps(model, fixed_batch(model.inputs), tensors, axes, outputs) or \
            _fixed_rows_mix(model, tensors, axes, fixed)
        return Layout(not whole, tuple(None if whole else 0 for _ in model.outputs))
    declared = _declared_single(model, tensors, axes, outputs)
    if declared is not None and _rows_round_together(model):  # rows never share a pass (`pass_batch`): the
        # runs could only say no (a three-row forward of a 928x928 quantized detector: 13 s of IG's 105 s)
        return Layout(True, declared, found_doubles=False)
    if declared is not None:
        return Layout(True, declared, found_doubles=None, runs=lambda: _found(model, tensors, axes, outputs, fixed))
    return _found(model, tensors, axes, outputs, fixed)


def _no_output_keeps(model, fixed: Optional[int], tensors, axes, outputs=None) -> bool:
    """Whether no output of the call has an axis of the inputs' fixed leading size: that size is then
    not a batch but one example's (skl2onnx's SVM over a feature vector [400] giving scores [1, 325]),
    and the inputs are one whole example. Read off the outputs themselves (one forward where the
    caller has none): that SVM's file declares them [400] and [400, 26]. An output with an axis of
    that size anywhere (time-major [T, 8, C] beside an input [8, ...]) leaves it to the rows' test, and
    so does a call that does not hold exactly that many rows (it runs in passes of them)."""
    if not _fixed(fixed or 0) or fixed == 1 or not model.outputs:
        return False
    if any(a is not None and (t.dim() <= a or t.shape[a] != fixed) for t, a in zip(tensors, axes)):
        return False
    if outputs is None:
        with torch.no_grad():
            try:
                outputs = _outputs(getattr(model, "run_unexplained", model)(*tensors))
            except Exception:  # noqa: BLE001  (the forward's own error comes with the call)
                return False
    shapes = [tuple(o.shape) for o in outputs if isinstance(o, Tensor)]
    return bool(shapes) and all(fixed not in shape for shape in shapes)


def _fixed_rows_mix(model, tensors, axes, fixed: int) -> bool:
    """Whether the rows of an export's declared fixed batch (a static [8, 1, 4]) change each other:
    the first row's outputs, with the other rows as given and halved, and the other rows' outputs,
    with the first row halved. Self-attention over a sequence-first axis declared as that batch does;
    a batch of pictures does not; nor does a streaming frame's delay (dfnstream's [512] frame: its
    first output samples come from the state, its own come out later, where only the second run
    sees them move). Three runs of the fixed batch, where the call holds that many rows and has a
    floating one to change; else as declared."""
    if _rows_round_together(model):  # a dynamic quantizer's range spans the rows: they change each other's
        return False  # rounding by design, and run as the export declares
    if not any(a is not None for a in axes) or any(a is not None and (t.dim() <= a or t.shape[a] != fixed)
                                                   for t, a in zip(tensors, axes)):
        return False
    changed = [t if a is None or not t.is_floating_point() else
               torch.cat([t.narrow(a, 0, 1), t.narrow(a, 1, fixed - 1) * 0.5], dim=a) for t, a in zip(tensors, axes)]
    if all(c is t for c, t in zip(changed, tensors)):
        return False
    alone = [t if a is None or not t.is_floating_point() else
             torch.cat([t.narrow(a, 0, 1) * 0.5, t.narrow(a, 1, fixed - 1)], dim=a) for t, a in zip(tensors, axes)]
    trial = getattr(model, "run_unexplained", model)
    with torch.no_grad():
        try:
            given, others, first = (_outputs(trial(*t)) for t in (tensors, changed, alone))
        except Exception:  # noqa: BLE001  (the forward's own error comes with the call)
            return False
    kept = [(a, b, c) for a, b, c in zip(given, others, first) if a.dim() and a.shape[0] == fixed and a.shape == b.shape
            and a.shape == c.shape]
    return any(not _same(a[:1], b[:1], _scale(a[:1])) or not _same(a[1:], c[1:], _scale(a[1:])) for a, b, c in kept)


def _scale(t: Tensor) -> float:
    """The largest finite |value| (1 for none, or an integer tensor): what `_same`'s atol is relative to."""
    finite = t[torch.isfinite(t)] if t.is_floating_point() else t[:0]
    return float(finite.double().abs().max()) if finite.numel() else 1.0


def _same(a: Tensor, b: Tensor, scale: float, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Two outputs of one graph on rows that should not change them: equal (integers), or within a
    rounding relative to each value and to the output's `scale` (NaN where both are)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol * max(scale, 1e-30), equal_nan=True)


def _found(model, tensors, axes, outputs, fixed) -> Layout:
    """The graph walk's answer where it has one, else the probe's runs. Where a dynamic quantization
    runs each example alone (`pass_batch`), the walk follows it per pass, and rows never double."""
    shared = _rows_round_together(model)
    traced = traced_output_axes(model, tensors, axes, per_pass=shared)
    if traced is not None:  # the graph keeps the rows apart: what the runs below would find, without them
        return Layout(True, traced, found_doubles=not shared)
    return _runs(model, tensors, axes, outputs, fixed)


def _declared_single(model, tensors, axes, outputs=None) -> Optional[tuple]:
    """Each output's batch axis where the export fixes its batch at 1 (a static [1, 3, 800, 608]
    detector): 0 where the output declares that 1 on its axis 0, else where one example's run puts
    it (`_fallback_axis`: a list of boxes [K, 6] has none). One row per pass is then the export's
    contract, and the walk or the runs could only tell whether more rows may share a pass
    (`Layout.doubles`): a shape inference and a three-row forward of a large graph (33 s on a
    928x928 quantized detector) that DeepLift, one row per pass there anyway, does not need. None
    (the runs decide) where no output would have a batch axis."""
    if fixed_batch(model.inputs) != 1 or not any(a is not None for a in axes) or not model.outputs:
        return None
    declared = [0 if o.shape and o.shape[0] == 1 else None for o in model.outputs]
    if any(d is None for d in declared):
        one = all(a is None or t.shape[a] == 1 for t, a in zip(tensors, axes))
        if not one:
            return None
        with torch.no_grad():
            try:
                single = list(outputs) if outputs is not None else _outputs(
                    getattr(model, "run_unexplained", model)(*tensors))
            except Exception:  # noqa: BLE001  (the runs, and then the call, meet the forward's own error)
                return None
        declared = [d if d is not None else _fallback_axis(o) for d, o in zip(declared, single)]
    return tuple(declared) if any(d is not None for d in declared) else None


def _runs(model, tensors, axes, outputs, fixed) -> Layout:
    """The probe proper: the rows [x, x', x] through the plain model."""
    one = [t if a is None else t.narrow(a, 0, 1) for t, a in zip(tensors, axes)]  # one example: cheap
    given = outputs is not None and all(a is None or t.shape[a] == 1 for t, a in zip(tensors, axes))
    trial = getattr(model, "run_unexplained", model)  # its errors are caught: no node-by-node re-run to name them
    with torch.no_grad():
        try:
            single = list(outputs) if given else _outputs(trial(*one))
        except Exception:  # the rows given run (else that is the error), one alone does not: the export
            # fixes that size without declaring it (a sequence on the axis that looks like the batch, a batch
            # baked into a Reshape), so its rows are not independent examples: one whole example
            return Layout(False, tuple(None for _ in _outputs(model(*tensors))))
        if not any(a is not None for a in axes):
            return Layout(False, tuple(None for _ in single))
        other = [t if a is None else (t * 0.5 if t.is_floating_point() else t) for t, a in zip(one, axes)]
        rows = [t if a is None else torch.cat([t, o, t], dim=a) for t, o, a in zip(one, other, axes)]
        try:
            triple = _outputs(trial(*rows))
        except Exception:  # the export bakes its batch size in (a Reshape to [40, 1, 3, 192] under a
            # symbolic batch): the axes are as declared, and a pass holds the one row that ran
            model.__dict__["_pass_batch"] = (1,)
            return Layout(True, tuple(_fallback_axis(o) for o in single))
        alone = not _rows_round_together(model)  # a dynamic quantizer's range is the pass's: one row rounds otherwise
        found = [_matching_axis(s, t, alone) for s, t in zip(single, triple)]
    if fixed == 1:  # the export's contract is one example per pass: an axis holding that example's rows
        # merged with its positions (a segmenter's [L] for its [1, 2, L] ids, [3L] for three) is its own
        found = [f if not isinstance(f, int) or s.shape[f] == 1 else "mixed" for s, f in zip(single, found)]
    if any(f == "mixed" for f in found) and fixed == 1:
        # an export that fixes its batch at 1 (a static [1, 3, 800, 608] detector) may bake that 1
        # into its reshapes, so rows mix; one row, its contract, keeps the declared axes
        return Layout(True, tuple(_fallback_axis(s) if f == "mixed" else (None if f == "none" else f)
                                  for s, f in zip(single, found)))
    if any(f == "mixed" for f in found) and _folded_rows(single, triple):
        # a batch of 1 baked into reshapes under a batch symbol (a hand edit of a fixed-batch export): the
        # rows land interleaved along another axis, each output three times one row's; one row per pass
        # is what the file computes per example (two images mixed into one anchor list were explained
        # as one example, the second's attributions all 0: hunt 37)
        model.__dict__["_pass_batch"] = (1,)
        return Layout(True, tuple(_fallback_axis(o) for o in single))
    if any(f == "mixed" for f in found):  # rows influence each other: no batch, one whole example
        return Layout(False, tuple(None for _ in single))
    if found and all(f == "none" for f in found):  # no output has a row per input row: the rows are not
        # examples (a CTC decoder of one [time, features] sequence, whose one-step run decodes nothing)
        return Layout(False, tuple(None for _ in single))
    # rows that share a whole-tensor statistic: x / 2 keeps [x, x / 2, x] at x's range, so the axes
    # found are x's; but another example with a wider range would change x's rounding, so the rows
    # run one per pass (not doubled), whether or not the export also declares a batch of 1
    shared = _rows_round_together(model)
    return Layout(True, tuple(None if f == "none" else f for f in found), found_doubles=not shared)


def _folded_rows(single: Sequence[Tensor], triple: Sequence[Tensor]) -> bool:
    """Whether rows [x, x', x] made every output three times one row's, along axes other than a leading
    1 that stayed 1, with each of x's own values among them twice: a batch of one baked in, the rows
    folded into positions and computed apart (attention over rows concatenated into one sequence grows
    the output alike, but moves x's values)."""
    grown = False
    for one, three in zip(single, triple):
        if one.dim() == 0 or one.dim() != three.dim() or one.shape[0] != 1 or three.shape[0] != 1:
            return False
        if one.shape == three.shape:
            if not _same(one, three, _scale(one)):
                return False  # reduced over the rows: they change each other
            continue
        if three.numel() != 3 * one.numel() or not _twice_among(one, three):
            return False
        # a few distinct values (labels, a saturated clip, a ReLU map of zeros) occur twice whatever the rows
        # do: no evidence of rows computed apart
        if not one.is_floating_point() or one.unique().numel() < min(8, one.numel()):
            return False
        grown = True
    return grown


def _twice_among(one: Tensor, three: Tensor) -> bool:
    """Whether every value of `one` occurs at least twice in `three` (to a rounding of the outputs' size)."""
    mine = one.detach().double().reshape(-1)
    theirs = three.detach().double().reshape(-1).sort().values
    tolerance = 1e-5 * max(_scale(one), 1e-30)
    counts = torch.searchsorted(theirs, mine + tolerance, right=True) - torch.searchsorted(theirs, mine - tolerance)
    return bool((counts >= 2).all())


def _outputs(out) -> list[Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _fallback_axis(out: Tensor) -> Optional[int]:
    """The batch axis of one example's output where the probe could not run more rows: axis 0 where
    it holds that one example, else its only axis of one (a decoder's [T, 1, C] scores, time-major),
    else none (a segmenter's [L] for its [1, 2, L] ids: L positions of one example, not L examples)."""
    ones = [i for i, d in enumerate(out.shape) if d == 1]
    return 0 if out.dim() and out.shape[0] == 1 else ones[0] if len(ones) == 1 else None


def _matching_axis(single: Tensor, triple: Tensor, alone: bool = True):
    """The axis along which `triple` (rows [x, x', x]) holds three blocks, its first equal to its
    last: x's output depends neither on a row after it nor on one before it (a cumulative sum or
    an LSTM over that axis in either direction would change one of them). Both blocks come from
    one run, so the kernels round alike (a batch of 1 may not: logits of 1e6 through a softmax
    would differ). "none" when the output did not grow and did not move (no batch: a constant, a
    shape), "mixed" when it grew but no such block exists, or did not grow but moved: the rows were
    reduced together (a CTC decoder's score of one [time, features] sequence: a 0-d mean over axis 0,
    which is time, not examples)."""
    # a batch of 1 may round otherwise than a pass of three (see above): against one row alone, loosely,
    # where mixing moves an output by its own size
    loose = max(1e-3, 8 * torch.finfo(single.dtype).eps) if single.is_floating_point() else 0
    if triple.shape == single.shape:
        return "none" if _same(triple, single, _scale(single), loose, loose) else "mixed"
    if single.dim() == 0 and triple.shape == (3,):  # Squeeze() of [N, 1]: the batch axis dropped when N is 1
        return 0 if _same(triple[0], triple[2], abs(float(single))) else "mixed"
    if triple.dim() != single.dim():
        return "mixed"
    scale = _scale(single)  # NaN/inf outputs: compared as such
    for axis in range(single.dim()):
        size = single.shape[axis]
        if triple.shape[axis] != 3 * size or any(t != s for i, (t, s) in enumerate(zip(triple.shape, single.shape))
                                                  if i != axis):
            continue
        before, after = triple.narrow(axis, 0, size), triple.narrow(axis, 2 * size, size)
        if not _same(before, after, scale):
            continue
        if not single.is_floating_point() or not alone:
            return axis
        # and x's block is x's output alone (`alone`: where one row alone rounds as in the pass):
        # attention (or any mean) over the rows treats the two copies of x alike, so only this tells
        # it from a batch; loosely, as a batch of 1 may round otherwise (see above), where mixing
        # moves the output by its own size
        if _same(before, single, scale, loose, loose):
            return axis
    return "mixed"
