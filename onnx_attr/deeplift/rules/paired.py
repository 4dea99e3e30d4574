"""The two DeepLift primitives, on (value, reference) pairs.

Every nonlinear rule is written with these two and plain linear torch ops:

* `rescale(f, x, x0)`: an elementwise f; multiplier (f(x) - f(x0)) / (x - x0), the gradient
  only where x and x0 are so close that the secant is rounding noise. Exact: Δy = m·Δx.
* `product(fn, a, a0, b, b0)`: fn bilinear in (a, b) (Mul, MatMul, Einsum); Shapley values,
  ∂/∂a at b̄ = (b+b0)/2 and ∂/∂b at ā = (a+a0)/2. Exact: Δfn = fn(Δa, b̄) + fn(ā, Δb).

Both return the pair (y, y0) with y carrying the DeepLift backward, so a composite (softmax,
max pooling, layer norm) built from them is exact by construction, with autograd doing the
bookkeeping of broadcasts, reductions and folds between primitives.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor


def secant_tolerance(x: Tensor, x0: Tensor, memo: dict | None = None) -> Tensor:
    """Below this |x - x0|, the secant loses to rounding and the gradient is used.

    One threshold per tensor, relative to its largest magnitude: a reduction, not a handful of
    elementwise passes, on the hot path of every nonlinearity (the reference's, once per
    reference when the caller keeps a memo).
    """
    scale0 = None if memo is None else memo.get("scale")
    if scale0 is None:
        scale0 = max_abs(x0.detach())
        if memo is not None:
            memo["scale"] = scale0
    return tolerance_for(torch.maximum(max_abs(x.detach()), scale0))


def tolerance_for(scale: Tensor) -> Tensor:
    """`secant_tolerance` from the largest magnitude of both sides, found by the caller."""
    return scale * (64 * torch.finfo(scale.dtype).eps) + torch.finfo(scale.dtype).tiny


def _unexpanded(t: Tensor) -> Tensor:
    """The tensor an expanded (stride 0) view repeats, which broadcasts back to the view: a shared
    batch-1 reference is worked on once, not once per example."""
    return t[tuple(slice(0, 1) if st == 0 else slice(None) for st in t.stride())]


def max_abs(t: Tensor) -> Tensor:
    """max |t|, from one aminmax pass (a tenth of the inf-norm's time on CPU)."""
    if t.numel() == 0:
        return t.new_zeros(())
    low, high = torch.aminmax(_unexpanded(t))
    return torch.maximum(high, -low)


#: Run the accelerator formulation on every device (the tests use it to cover it on CPU).
ALWAYS_SYNC_FREE = False


def sync_free(t: Tensor) -> bool:
    """Whether to fill the gradient's holes without first asking whether there are any.

    On CPU one sum and a branch are cheaper than a fill over every element. On an accelerator the
    branch reads a value back to the host, once per node: the CPU then waits for every kernel
    queued so far instead of queueing the next ones, so there the fill runs unconditionally.
    """
    return ALWAYS_SYNC_FREE or t.device.type != "cpu"


def rescale_multiplier(f: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor, y: Tensor, y0: Tensor,
                       elementwise: bool = True, exact_secant: bool = False, memo: dict | None = None,
                       tolerance: Tensor | None = None) -> Tensor:
    """(y - y0) / (x - x0), with f'(x0) where x ≈ x0 (on those elements alone where f is elementwise).

    The gradient is needed at a handful of elements of a large tensor; when f is elementwise
    with nothing to broadcast (`elementwise`), only those elements are worked on.
    `exact_secant` is for f with slopes 0 and 1 only (Relu, Clip): there the secant is exact in
    floating point (y - y0 is x - x0 or 0 bit for bit, and exact by Sterbenz's lemma near a
    breakpoint), so only x == x0 needs the gradient. There y - y0 = 0 too, so those elements
    come out of the division as NaN, found by one sum, and are filled without a mask (on CPU,
    masks, masked fills and `where` cost 3 to 6 float passes each). Being at x0, they take the
    gradient at x0: for a shared reference, a batch-1 tensor that broadcasts, kept in `memo` (see
    `Rule.memoizes`) when the caller gives one. `tolerance`: the secant's, where the caller found it
    over a larger tensor than x (a slab of it: rules/softmax_pair.py).
    """
    dx = x - x0  # the hot path of every nonlinearity: few passes, few temporaries
    if exact_secant:
        m = (y - y0).div_(dx)
        # m is in [0, 1] elsewhere: a sum cannot make a NaN
        if sync_free(m) or bool(torch.isnan(m.sum())):
            return fill_nan(m, _slope_at_reference(f, x0, memo, m.shape))
        return m
    if tolerance is None:
        tolerance = secant_tolerance(x, x0, memo)
    if elementwise and not sync_free(dx) and y.shape == x.shape == dx.shape:
        # on CPU: the secant everywhere, then the few close elements (found once, from dx's own
        # storage, no mask) replaced by their gradients at the reference, taken on those elements
        # alone in every call: over the whole reference, kept for the calls after, it cost a second
        # call an autograd pass over each map (a fused x·clip(x + 3) saves three) and held one more
        # map per node, for no steady-state gain (docs/architecture.md, "The slope at the reference")
        return secant_on_cpu(f, x, x0, y, y0, dx, tolerance)
    close = dx.abs().le_(tolerance).bool()
    m = (y - y0).div_(dx.masked_fill(close, 1.0))
    if not sync_free(m) and not bool(close.any()):  # on CPU: look first
        return m
    at_reference = None if memo is None else _slope_at_reference(f, x0, memo, m.shape)
    slope = _slope(f, x.expand(m.shape)) if at_reference is None else at_reference.expand(m.shape)
    return torch.where(close, settle_close(slope, x, x0, y, y0), m)


def secant_on_cpu(f: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor, y: Tensor, y0: Tensor, dx: Tensor,
                  tolerance: Tensor, out: Tensor | None = None) -> Tensor:
    """`rescale_multiplier`'s CPU path for an elementwise f: (y - y0) / dx, in `out` where given, with
    f'(x0) settled in at the few elements within `tolerance` of their reference. `dx` (x - x0) is
    overwritten (on CPU a fresh tensor costs more than a pass over one); `out` is written first, so it
    must not be any of x, x0, y, y0, which the close elements are read from after."""
    m = torch.sub(y, y0, out=out).div_(dx)
    distance = dx.abs_()
    if bool(distance.amin() > tolerance):
        return m  # no element near its reference (the usual case): no mask, no search
    where = _close_positions(distance, tolerance)
    if where.numel() == 0:
        return m
    at = lambda t: torch.take(t.detach().expand_as(x), where)  # noqa: E731
    xs, x0s = at(x), at(x0)
    with torch.enable_grad():  # f'(x0) on those elements alone (elementwise: the same values)
        xg = x0s.clone().requires_grad_(True)
        grad = _flat_or_grad(f(xg).sum(), xg)
    settled = _settle_few(grad, xs, x0s, at(y), at(y0))
    return m.reshape(-1).index_copy_(0, where, settled).view_as(m)


#: ulps of rounding allowed in f(x) - f(x0) (two evaluations of a library function, then a subtraction)
_SECANT_ULPS = 8


#: dtypes numpy holds as they are (bfloat16 is not one)
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _close_positions(distance: Tensor, tolerance: Tensor) -> Tensor:
    """The flat positions where `distance` <= `tolerance`, on CPU. numpy's flatnonzero over the
    comparison is 5-6x faster than torch's le + nonzero there (one pass each, single-threaded, no
    count-then-fill), and this search runs on every nonlinearity with elements at their reference."""
    if distance.dtype not in _NUMPY_FLOATS:
        return distance.le(tolerance).reshape(-1).nonzero().squeeze(1)
    flat = distance.detach().reshape(-1).numpy()
    return torch.from_numpy(np.flatnonzero(flat <= flat.dtype.type(tolerance.item())))


def _settle_few(grad: Tensor, x: Tensor, x0: Tensor, y: Tensor, y0: Tensor) -> Tensor:
    """`settle_close` on the handful of close elements taken out of a large tensor: in numpy, whose
    per-op cost on a few elements is a fifth of torch's (the same IEEE arithmetic, bit for bit)."""
    if x.dtype not in _NUMPY_FLOATS or x.numel() > 4096:
        return settle_close(grad, x, x0, y, y0)
    arrays = [t.detach().numpy() for t in (grad, x, x0, y, y0)]
    return torch.from_numpy(settle_close(*arrays, xp=np))


def settle_close(grad, x, x0, y, y0, xp=torch):
    """For x close to x0: the secant wherever it says more than its rounding noise, else f'(x).

    The tensor-wide tolerance flags elements small next to the tensor's largest one, but an element
    near a kink at its own scale (√ of a power that is 0 at the reference, log or 1/x near 0) has
    a secant far from its gradient (twice it for √ at 0): there the gradient would break
    completeness by its whole size. The secant's own error is its numerator's rounding,
    ~ulps·max(|y|, |y0|)/|Δx|; where gradient and secant differ by more, the secant is the exact
    one. Where x == x0 and f'(x) is not finite (√ at 0), the multiplier is 0: it meets Δx = 0.
    Written over the array namespace `xp` (torch, or numpy for a few elements: `_settle_few`).
    """
    dx = x - x0
    with np.errstate(divide="ignore", invalid="ignore"):  # x == x0: the secant is NaN or ±inf, dropped below
        secant = (y - y0) / dx
        noise = xp.maximum(abs(y), abs(y0)) * (_SECANT_ULPS * _eps(x)) / abs(dx)
    use_secant = (dx != 0) & xp.isfinite(secant) & ~(abs(secant - grad) <= noise)
    m = xp.where(use_secant, secant, grad)
    return xp.where(xp.isfinite(m) | (dx != 0), m, xp.zeros_like(m))


def _eps(t) -> float:
    """The machine epsilon of an array's or a tensor's dtype."""
    return float(np.finfo(t.dtype).eps if isinstance(t, np.ndarray) else torch.finfo(t.dtype).eps)


def _slope_at_reference(f: Callable[[Tensor], Tensor], x0: Tensor, memo: dict | None, shape) -> Tensor:
    """f'(x0), for the elements at or within the tolerance of their reference: once per reference where
    the caller keeps a memo (a shared baseline's: a batch-1 tensor that broadcasts, over every call
    that reuses it), not per call on those elements (an autograd pass of its own per node and call).
    Within the tolerance, f'(x0) and f'(x) are equally the slope the secant lost to rounding; where
    they differ (a kink between x and x0), `settle_close` keeps the secant wherever it says more
    than its noise. At x0 broadcast to `shape` (the output's) where f's other inputs broadcast it."""
    at_reference = None if memo is None else memo.get("slope")
    if at_reference is None:
        at_reference = _slope(f, _unexpanded(x0))
        if at_reference is None:
            at_reference = _slope(f, x0.expand(shape))
        if memo is not None:
            memo["slope"] = at_reference
    return at_reference


def _slope(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor | None:
    """f'(x) at every element; None where f(x) is larger than x (another input of f broadcasts it:
    the gradient would sum over its copies; the caller then broadcasts x first)."""
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        out = f(z)
        if out.shape != z.shape:
            return None
        grad = _flat_or_grad(out, z, torch.ones_like(out))
    return grad


def _flat_or_grad(out: Tensor, x: Tensor, weights: Tensor | None = None) -> Tensor:
    """d out / d x, or 0 where out does not follow x differentiably at all: a fused piecewise function
    made of steps alone (3·[x > 0] + 1) is flat wherever it is defined."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(out, x, weights, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def fill_nan(m: Tensor, by: Tensor) -> Tensor:
    """m where it is a number, `by` where it is NaN, in m's storage on CPU (an infinity in m, which a
    rule does not make from finite gradients, comes out NaN: still reported, never hidden).

    Float passes only on CPU, where a bool mask and `torch.where` cost as much as five of them;
    on an accelerator (see `sync_free`) the mask is cheap.
    """
    if sync_free(m):
        return torch.where(torch.isnan(m), by, m)
    inf = float("inf")
    kept = torch.nan_to_num(m, nan=0.0, posinf=inf, neginf=-inf)
    holes = m.nan_to_num_(nan=1.0, posinf=inf, neginf=-inf).sub_(kept)  # 1 where m was NaN, else 0
    return holes.mul_(by).add_(kept)


class _Rescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, x0: Tensor, y0: Tensor, f: Callable, exact_secant: bool) -> Tensor:
        y = f(x)
        ctx.f, ctx.exact_secant = f, exact_secant
        ctx.save_for_backward(x, x0, y, y0)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, x0, y, y0 = ctx.saved_tensors
        m = rescale_multiplier(ctx.f, x, x0, y, y0, exact_secant=ctx.exact_secant)
        return grad * m, None, None, None, None


class _SecantTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: Tensor, p0: Tensor, q: Tensor, q0: Tensor) -> Tensor:
        ctx.save_for_backward(p, p0, q, q0)
        return q.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        p, p0, q, q0 = ctx.saved_tensors
        dp = p - p0
        still = dp == 0
        return grad * torch.where(still, 0.0, (q - q0) / dp.masked_fill(still, 1.0)), None, None, None


def secant_to(p: Tensor, p0: Tensor, q: Tensor, q0: Tensor) -> Tensor:
    """q, given (an integer kernel's rounding of a value p it computes its own way), carrying the
    secant (q - q0) / (p - p0) as its backward, elementwise: complete wherever q moves only where p
    does (0 where p has not moved)."""
    return _SecantTo.apply(p, p0.detach(), q.detach(), q0.detach())


class RescaleBatch:
    """The rescales of one unrolled recurrence (its gates at every step): small tensors, hundreds of
    them, whose multipliers are computed together, on the first backward that needs one, by one
    `rescale_multiplier` per function and shape over the steps stacked (a call's fixed cost, ~50 µs
    on CPU, paid once, not once per step and gate). The tolerance is then one per stack: relative
    to the largest magnitude over the steps, as for any tensor (see `secant_tolerance`)."""

    def __init__(self):
        self.entries: list[tuple] = []
        self.multipliers: list[Tensor] | None = None

    def add(self, f: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor, y: Tensor, y0: Tensor) -> int:
        self.entries.append((f, x, x0, y, y0))
        return len(self.entries) - 1

    def multiplier(self, index: int) -> Tensor:
        if self.multipliers is None:
            groups: dict[tuple, list[int]] = {}
            for i, (f, x, x0, _, _) in enumerate(self.entries):
                groups.setdefault((f, x.shape, x0.shape, x.dtype), []).append(i)
            found: list[Tensor | None] = [None] * len(self.entries)
            for (f, *_), members in groups.items():
                parts = [torch.stack([self.entries[i][k] for i in members]) for k in range(1, 5)]
                for i, m in zip(members, rescale_multiplier(f, *parts).unbind(0)):
                    found[i] = m
            self.multipliers, self.entries = found, []  # the stacks made, the step tensors let go
        return self.multipliers[index]


class _BatchedRescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, x0: Tensor, y0: Tensor, f: Callable, batch: RescaleBatch) -> Tensor:
        y = f(x)
        ctx.batch, ctx.index = batch, batch.add(f, x.detach(), x0, y, y0)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.batch.multiplier(ctx.index), None, None, None, None


def rescale(f: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor, exact_secant: bool = False,
            batch: RescaleBatch | None = None, y0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(f(x), f(x0)), with f(x) carrying the rescale multiplier as its backward
    (`exact_secant`: f has slopes 0 and 1 only, see `rescale_multiplier`; `batch`: the multiplier
    computed with the batch's others, see `RescaleBatch`; `y0`: f(x0) where the caller has it)."""
    x0 = x0.detach()
    if y0 is None:
        with torch.no_grad():
            y0 = f(x0)
    if batch is not None and not exact_secant:
        return _BatchedRescale.apply(x, x0, y0, f, batch), y0
    return _Rescale.apply(x, x0, y0, f, exact_secant), y0


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, a0: Tensor, b: Tensor, b0: Tensor, fn: Callable, ordered: Optional[float] = None) -> Tensor:
        ctx.fn, ctx.ordered = fn, ordered
        ctx.save_for_backward(a, a0, b, b0)
        return fn(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, a0, b, b0 = ctx.saved_tensors
        grad_a, grad_b = product_multipliers(ctx.fn, a, a0, b, b0, grad, ctx.ordered)
        return grad_a, None, grad_b, None, None, None


def product_multipliers(fn: Callable[[Tensor, Tensor], Tensor], a: Tensor, a0: Tensor, b: Tensor, b0: Tensor,
                        grad: Tensor, ordered: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """The product rule's backward: grad through fn(·, b̄) to a and through fn(ā, ·) to b.

    fn is bilinear, so each is linear in grad at a fixed other side: for `torch.mul` (Mul, gates,
    squares) in closed form, grad·b̄ and grad·ā summed to each operand's shape, which is what
    autograd's own Mul backward computes, without building a graph per node per call; any other
    fn through autograd. Shapley's midpoints, except with `ordered` (elementwise fn only): change a
    at the smaller |b|, then b at the other side's a (see `scaled_product`), wherever |b| and |b0|
    differ by more than the factor `ordered` (0: everywhere). Each element's split is exact either
    way, so mixing them per element keeps the sum."""
    if ordered is None:
        a_mid, b_mid = (a + a0).div_(2), (b + b0).div_(2)
    else:
        first = b.abs() <= b0.abs()
        a_mid, b_mid = torch.where(first, a0, a), torch.where(first, b, b0)
        if ordered:  # Shapley's midpoints where |b| keeps its scale within the factor
            kept = torch.maximum(b.abs(), b0.abs()) <= ordered * torch.minimum(b.abs(), b0.abs())
            a_mid, b_mid = torch.where(kept, (a + a0) / 2, a_mid), torch.where(kept, (b + b0) / 2, b_mid)
    if fn is torch.mul:
        return reduce_to(b_mid.mul_(grad) if _owns(b_mid, grad) else grad * b_mid, a.shape), \
            reduce_to(a_mid.mul_(grad) if _owns(a_mid, grad) else grad * a_mid, b.shape)
    with torch.enable_grad():
        ag = a.detach().requires_grad_(True)
        bg = b.detach().requires_grad_(True)
        (grad_a,) = torch.autograd.grad(fn(ag, b_mid), ag, grad)
        (grad_b,) = torch.autograd.grad(fn(a_mid, bg), bg, grad)
    return grad_a, grad_b


def _owns(mid: Tensor, grad: Tensor) -> bool:
    """Whether grad·mid may be written into mid: a fresh temporary of the product's shape and dtype."""
    return mid.shape == grad.shape and mid.dtype == grad.dtype


def reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to an input's shape as autograd does (`sum_to_size`, its own
    call: the closed-form product rule stays bit for bit autograd's)."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


def product(fn: Callable[[Tensor, Tensor], Tensor], a: Tensor, a0: Tensor, b: Tensor, b0: Tensor,
            y0: Tensor | None = None, ordered: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """(fn(a, b), fn(a0, b0)) with the Shapley split as backward (`y0`: fn(a0, b0) where the caller has it;
    `ordered`: see `product_multipliers`)."""
    a0, b0 = a0.detach(), b0.detach()
    if y0 is None:
        with torch.no_grad():
            y0 = fn(a0, b0)
    return _Product.apply(a, a0, b, b0, fn, ordered), y0


def scaled_product(a: Tensor, a0: Tensor, b: Tensor, b0: Tensor) -> tuple[Tensor, Tensor]:
    """a·b (elementwise, b a scale factor broadcast over a) split in the order that cannot cancel:
    Δ(ab) = Δa·min(b, b0) + a'·Δb, with a' the other side's a (a0 where |b| <= |b0|, else a).

    Both orders telescope exactly; Shapley's average of them does too, but when the scale changes by
    orders of magnitude (a normalisation's 1/σ at a near-constant reference is 1/√eps, ~10³) its two
    terms are each ~|a|·b0/2 and cancel into a change of size |a|·b: float32 keeps ~10⁻⁷ of the terms,
    too little. In this order every term is bounded by |ab| + 2|a0b0|.
    """
    a0, b0 = a0.detach(), b0.detach()
    with torch.no_grad():
        y0 = a0 * b0
    return _Product.apply(a, a0, b, b0, torch.mul, 0.0), y0


def pair_max(a: Tensor, a0: Tensor, b: Tensor, b0: Tensor) -> tuple[Tensor, Tensor]:
    """max(a, b) = a + relu(b - a): exact, and the same split for input and reference."""
    r, r0 = rescale(torch.relu, b - a, b0 - a0, exact_secant=True)
    return a + r, a0 + r0


def pair_min(a: Tensor, a0: Tensor, b: Tensor, b0: Tensor) -> tuple[Tensor, Tensor]:
    """min(a, b) = a - relu(a - b)."""
    r, r0 = rescale(torch.relu, a - b, a0 - b0, exact_secant=True)
    return a - r, a0 - r0


class _CrossAmax(torch.autograd.Function):
    """max over `axes` (kept) with the cross-max rule as its backward (see rules/pooling.py):
    with c = max x, c0 = max x0 and m = max(c, c0), m - c0 goes to where x peaks and c - m to
    where x0 peaks (split evenly over ties). Each credit is at most its element's |Δx|, so the
    multipliers lie in [0, 1]; where Δx = 0 the credit is 0 and the multiplier is the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, x0: Tensor, c0: Tensor, axes: tuple[int, ...]) -> Tensor:
        c = x.amax(axes, keepdim=True)
        ctx.axes = axes
        ctx.save_for_backward(x, x0, c, c0)
        return c

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, x0, c, c0 = ctx.saved_tensors
        return grad * cross_amax_multiplier(x, x0, c, c0, ctx.axes), None, None, None


def cross_amax_multiplier(x: Tensor, x0: Tensor, c: Tensor, c0: Tensor, axes: tuple[int, ...],
                          peak: Tensor | None = None, peak0: Tensor | None = None, count: Tensor | None = None,
                          count0: Tensor | None = None) -> Tensor:
    """The cross-max rule's multipliers of max x over `axes` (c, c0: each side's max, kept); `peak`,
    `peak0` (x == c, x0 == c0) and their counts over `axes` where the caller has them (elements taken
    out of their rows: rules/softmax_pair.py)."""
    m = torch.maximum(c, c0)
    peak = (x == c if peak is None else peak).to(x.dtype)
    peak0 = (x0 == c0 if peak0 is None else peak0).to(x.dtype)
    peak = peak / (peak.sum(axes, keepdim=True) if count is None else count)
    peak0 = peak0 / (peak0.sum(axes, keepdim=True) if count0 is None else count0)
    credit = peak * (m - c0) + peak0 * (c - m)
    return torch.where(x == x0, peak, credit / (x - x0))


def pair_amax(x: Tensor, x0: Tensor, axes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(max x, max x0) over `axes` (kept), each side's own: the shift that keeps both sides' exp in range."""
    axes = tuple(axes)
    x0 = x0.detach()
    c0 = x0.amax(axes, keepdim=True)
    return _CrossAmax.apply(x, x0, c0, axes), c0
