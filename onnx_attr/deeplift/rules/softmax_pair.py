"""softmax(z) = exp(z - lse z) with the log-sum-exp decomposition's multipliers written out, a slab of
rows at a time.

The decomposition (`composite.paired_logsumexp`, then `composite.exp_shifted`) differentiated by
autograd holds a dozen float64 tensors the size of the scores and makes ~60 passes over them: on an
attention's scores (a Whisper-base encoder: 8 heads x 1500 x 1500 per layer) that was 3.3 s a layer,
20 s of a 28 s DeepLift call (docs/architecture.md). Here the same chain rule runs by hand over slabs
of `SLAB` elements, whose temporaries stay in the cache. Each rescale keeps the decomposition's own
tensor-wide tolerance (the
largest magnitude of its argument over the whole tensor, found in the forward's sweeps), so the
multipliers are the decomposition's, up to the order of float64 sums.

The steps, per row along the axis (zm: z with the entries outside `valid` at the dtype's lowest):
c = max zm (the cross-max rule), u = zm - c, e = exp(u) (rescale), S = sum e (valid entries),
l = log S (rescale), lse = l + c, v = zm - lse, p = exp(v) (rescale); an exponent below the
dtype's log(tiny) on both sides is floored there, as `exp_shifted` does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.paired import (cross_amax_multiplier, max_abs, rescale_multiplier, secant_on_cpu,
                                             sync_free, tolerance_for)

#: elements per slab on CPU: the temporaries of one (a few float64 slabs, made once per call and reused,
#: so the allocator neither hands back nor page-faults memory slab after slab) stay within a core's cache
SLAB = 1 << 16


def paired_softmax(z: Tensor, z0: Tensor, axis: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(p, p0): each side's softmax over `axis`, the entries outside `valid` (a constant mask that
    broadcasts to z) left out, p carrying the decomposition's DeepLift multipliers as its backward."""
    return _PairedSoftmax.apply(z, z0.detach(), valid, axis % z.dim())


def _rows(t: Tensor, axis: int, shape: torch.Size) -> Tensor:
    """t broadcast to `shape` with `axis` last, as [rows, n] (a copy only where the layout needs one)."""
    return t.expand(shape).movedim(axis, -1).reshape(-1, shape[axis])


def _back(t: Tensor, axis: int, shape: torch.Size) -> Tensor:
    """`_rows` undone: [rows, n] as `shape` (a view)."""
    return t.view(*shape[:axis], *shape[axis + 1:], shape[axis]).movedim(-1, axis)


class _Slabs:
    """Row ranges of at most `SLAB` elements (one range on an accelerator, where a slab saves nothing
    and each op is a launch), and `count` scratch tensors every slab reuses."""

    def __init__(self, like: Tensor, count: int):
        rows, width = like.shape
        step = max(1, rows if sync_free(like) else SLAB // max(width, 1))
        self.ranges = [slice(i, min(i + step, rows)) for i in range(0, rows, step)]
        size = (min(step, rows), width)
        self._scratch = [like.new_empty(size) for _ in range(count)]

    def scratch(self, s: slice) -> list[Tensor]:
        n = s.stop - s.start
        return [t[:n] for t in self._scratch]


def _shifted(z: Tensor, z0: Tensor, c: Tensor, c0: Tensor, floor: float, out: Tensor,
             out0: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(z - c, z0 - c0) in `out`, `out0`, floored where both lie below `floor`, and where (None:
    nowhere, the usual case, told on CPU by one side's minimum; an accelerator floors without asking,
    `paired.sync_free`)."""
    u, u0 = torch.sub(z, c, out=out), torch.sub(z0, c0, out=out0)
    if u.numel() == 0 or not sync_free(u) and (bool(u.amin() >= floor) or bool(u0.amin() >= floor)):
        return u, u0, None
    under = (u < floor) & (u0 < floor)
    return u.masked_fill_(under, floor), u0.masked_fill_(under, floor), under


def _exp_multiplier(x: Tensor, x0: Tensor, y: Tensor, y0: Tensor, tolerance: Tensor, out: Tensor,
                    scratch: Tensor) -> Tensor:
    """exp's rescale multiplier, in `out` (`scratch` overwritten), with the decomposition's tolerance."""
    if not sync_free(x):
        return secant_on_cpu(torch.exp, x, x0, y, y0, torch.sub(x, x0, out=scratch), tolerance, out=out)
    return rescale_multiplier(torch.exp, x, x0, y, y0, tolerance=tolerance)


class _PairedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, z0: Tensor, valid: Tensor | None, axis: int):
        shape = z.shape
        zs, z0s = _rows(z, axis, shape), _rows(z0, axis, shape)
        keep = None if valid is None else _rows(valid, axis, shape)
        if keep is not None:
            lowest = torch.finfo(z.dtype).min
            zs, z0s = zs.masked_fill(~keep, lowest), z0s.masked_fill(~keep, lowest)
        floor = math.log(torch.finfo(z.dtype).tiny)
        c, c0 = zs.amax(-1, keepdim=True), z0s.amax(-1, keepdim=True)
        total, total0 = c.new_empty(c.shape), c.new_empty(c.shape)
        slabs = _Slabs(zs, 2)
        first = []  # the largest |exponent| of each slab, both sides: the exp's tolerance
        for s in slabs.ranges:
            a, b, *_ = slabs.scratch(s)
            u, u0, _ = _shifted(zs[s], z0s[s], c[s], c0[s], floor, a, b)
            first.append(torch.maximum(max_abs(u), max_abs(u0)))
            e, e0 = u.exp_(), u0.exp_()
            if keep is not None:
                e.mul_(keep[s]), e0.mul_(keep[s])
            torch.sum(e, -1, keepdim=True, out=total[s])
            torch.sum(e0, -1, keepdim=True, out=total0[s])
        lse, lse0 = total.log() + c, total0.log() + c0
        p, p0 = torch.empty_like(zs), torch.empty_like(zs)
        second = []
        for s in slabs.ranges:
            a, b, *_ = slabs.scratch(s)
            v, v0, _ = _shifted(zs[s], z0s[s], lse[s], lse0[s], floor, a, b)
            second.append(torch.maximum(max_abs(v), max_abs(v0)))
            torch.exp(v, out=p[s])
            torch.exp(v0, out=p0[s])
        ctx.axis, ctx.shape, ctx.floor = axis, shape, floor
        ctx.tolerances = tuple(tolerance_for(torch.stack(m).amax() if m else c.new_zeros(())) for m in (first, second))
        ctx.save_for_backward(zs, z0s, keep, c, c0, total, total0, lse, lse0, p, p0)
        reference = _back(p0, axis, shape)
        ctx.mark_non_differentiable(reference)
        return _back(p, axis, shape), reference

    @staticmethod
    def backward(ctx, grad: Tensor, _grad0):
        zs, z0s, keep, c, c0, total, total0, lse, lse0, p, p0 = ctx.saved_tensors
        floor, (first, second), axis, shape = ctx.floor, ctx.tolerances, ctx.axis, ctx.shape
        if zs.numel() == 0:
            return torch.zeros(shape, dtype=zs.dtype, device=zs.device), None, None, None
        grads = _rows(grad, axis, shape)
        # the log's rescale over the row sums, its tolerance over all of them, as the decomposition's
        log_multiplier = rescale_multiplier(torch.log, total, total0, total.log(), total0.log())
        out = torch.empty_like(zs)
        slabs = _Slabs(zs, 6)
        for s in slabs.ranges:
            a, b, e, e0, scratch, m = slabs.scratch(s)  # every one its own: `secant_on_cpu` writes `m` first
            x, x0, g = zs[s], z0s[s], out[s]
            v, v0, under = _shifted(x, x0, lse[s], lse0[s], floor, a, b)
            g = _exp_multiplier(v, v0, p[s], p0[s], second, g, scratch).mul_(grads[s])
            if under is not None:
                g.masked_fill_(under, 0.0)
            to_lse = -g.sum(-1, keepdim=True)  # lse = l + c: the same gradient to l and to c
            to_sum = to_lse * log_multiplier[s]
            u, u0, under = _shifted(x, x0, c[s], c0[s], floor, a, b)
            to_u = _exp_multiplier(u, u0, torch.exp(u, out=e), torch.exp(u0, out=e0), first, m, scratch)
            to_u.mul_(to_sum if keep is None else to_sum * keep[s])
            if under is not None:
                to_u.masked_fill_(under, 0.0)
            g.add_(to_u)
            _add_cross_max(g, x, x0, c[s], c0[s], to_lse - to_u.sum(-1, keepdim=True))
            if keep is not None:
                g.masked_fill_(~keep[s], 0.0)
            if g.data_ptr() != out[s].data_ptr():  # an accelerator's multiplier came in a tensor of its own
                out[s] = g
        return _back(out, axis, shape), None, None, None


def _add_cross_max(g: Tensor, x: Tensor, x0: Tensor, c: Tensor, c0: Tensor, to_max: Tensor) -> None:
    """g += to_max · the cross-max rule's multipliers of the rows' maxima (`cross_amax_multiplier`),
    worked on at the peaks of x and of x0 alone on CPU (elsewhere the multiplier is 0); over the whole
    rows on an accelerator, which finding the peaks would make wait for the host (`paired.sync_free`)."""
    if sync_free(g):
        g.add_(cross_amax_multiplier(x, x0, c, c0, (-1,)).mul_(to_max))
        return
    peak, peak0 = x == c, x0 == c0
    rows, cols = (peak | peak0).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return
    count, count0 = peak.sum(-1, keepdim=True, dtype=x.dtype), peak0.sum(-1, keepdim=True, dtype=x.dtype)
    g.index_put_((rows, cols), to_max[rows, 0] * cross_amax_multiplier(
        x[rows, cols], x0[rows, cols], c[rows, 0], c0[rows, 0], (), peak[rows, cols], peak0[rows, cols],
        count[rows, 0], count0[rows, 0]), accumulate=True)
