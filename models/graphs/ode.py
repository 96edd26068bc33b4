"""An adaptive Dormand-Prince (dopri5) solver for the continuous-time model, lean on memory
traffic, taking the same steps as torchdiffeq's ``odeint(method="dopri5")``.

Why: the continuous-time model's training step was mostly the solver's own arithmetic.
torchdiffeq keeps a step's stages as one tensor with the stage as its innermost dimension and
forms every combination ``y0 + sum_j a_ij dt k_j`` as a product over that interleaved tensor and
a sum along it, forward and backward; at the model's size (a state of 128 x 800 x 8 x 8 floats)
that was about 60 % of a training step on the CPU (bench/README.md). Here each combination is one
autograd node (``_combine``) that adds the stages into a fresh buffer and sends each stage the
scaled gradient; error norms and step decisions run without autograd.

The method is the one torchdiffeq uses, as the literature gives it (Dormand & Prince 1980, with
Shampine's mid-point coefficients for dense output; Hairer, Norsett & Wanner, "Solving Ordinary
Differential Equations I", II.4, for the first step): stages and error estimate of the
Dormand-Prince pair; the first step from the two-evaluation estimate; a step is accepted when
the RMS norm of ``error / (atol + rtol * max(|y0|, |y1|))`` is at most 1; the next step is the
last one times ``min(10, max(0.9 / ratio^(1/5), 0.2))`` (the lower bound 1 once accepted); the
value at the end time comes from the 4th-order interpolant of the last step. Step sizes are
float64, the stages' coefficients float32 (the state's type), as there. The function is
called on the same tensors in the same order (the first state, each stage's input, the last
stage's input as the next state), which matters for the model's in-place ReLU (SPEC: the
original clamps the solver's own state). Sums are formed in another order than torchdiffeq's, so
results agree to float rounding; a decision that rounding tips differently would change the
number of steps (tests/models/test_ode.py checks that it does not on the models' inputs).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["dopri5"]

# The Dormand-Prince 5(4) pair: nodes, stage coefficients, error weights (5th minus 4th order),
# and Shampine's weights for the state at mid-step.
_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_ERROR = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)
_ORDER = 5
_SAFETY, _GROW, _SHRINK = 0.9, 10.0, 0.2


class _Combine(torch.autograd.Function):
    """``base + sum_j c_j * terms_j`` (``base`` may be None) as one node: one buffer forward,
    the gradient scaled once per term backward."""

    @staticmethod
    def forward(ctx, coefficients: tuple, base, *terms: Tensor) -> Tensor:  # noqa: D102
        ctx.coefficients = coefficients
        ctx.has_base = base is not None
        out = base.clone() if base is not None else torch.zeros_like(terms[0])
        for c, term in zip(coefficients, terms):
            if c != 0.0:
                out.add_(term, alpha=c)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        grads = [None if c == 0.0 else grad * c for c in ctx.coefficients]
        return (None, grad if ctx.has_base else None, *grads)


def _combine(base, coefficients: list, terms: list) -> Tensor:
    """``base + sum_j c_j terms_j``. Coefficients are floats, or (where a step size that
    carries a gradient enters them) 0-dim tensors, formed with autograd as torchdiffeq does."""
    if any(isinstance(c, Tensor) for c in coefficients):
        total = sum(term * c for c, term in zip(coefficients, terms))
        return total if base is None else base + total
    return _Combine.apply(tuple(coefficients), base, *terms)


def _f32(x: float) -> float:
    """``x`` rounded to float32, as the coefficients of the state's type."""
    return torch.tensor(x, dtype=torch.float32).item()


def _scaled(values, step32: Tensor) -> list:
    """``values * step`` in float32: floats, or tensors where the step carries a gradient (the
    first step size is a function of the state and of two evaluations, and torchdiffeq lets the
    gradient flow through it)."""
    if step32.requires_grad:
        return [torch.tensor(_f32(v)) * step32 for v in values]
    step = step32.item()
    return [_f32(_f32(v) * step) for v in values]


def _rms(x: Tensor) -> Tensor:
    return x.abs().pow(2).mean().sqrt()


def _first_step(func, y0: Tensor, f0: Tensor, rtol: float, atol: float) -> Tensor:
    """The two-evaluation estimate of a first step (Hairer et al. II.4), float64; formed with
    autograd, as torchdiffeq forms it, so that the gradient reaches the parameters through it."""
    scale = atol + torch.abs(y0) * rtol
    d0, d1 = _rms(y0 / scale).abs(), _rms(f0 / scale).abs()
    if d0 < 1e-5 or d1 < 1e-5:
        h0 = torch.tensor(1e-6, dtype=y0.dtype)
    else:
        h0 = (0.01 * d0 / d1).abs()
    f1 = func(torch.tensor(0.0, dtype=torch.float64) + h0, y0 + h0 * f0)
    d2 = torch.abs(_rms((f1 - f0) / scale) / h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.max(torch.tensor(1e-6, dtype=y0.dtype), h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / float(_ORDER))
    return torch.min(100 * h0, h1.abs()).to(torch.float64)


@torch.no_grad()
def _next_step(dt: Tensor, ratio: Tensor) -> Tensor:
    if ratio == 0:
        return dt * _GROW
    shrink = 1.0 if ratio < 1 else _SHRINK
    factor = min(_GROW, max(_SAFETY / ratio.double().item() ** (1.0 / _ORDER), shrink))
    return dt * factor


def dopri5(
    func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, rtol: float, atol: float
) -> Tensor:
    """The solution at ``t = 1`` of ``dy/dt = func(t, y)``, ``y(0) = y0``, differentiable."""
    t0, end = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    f0 = func(t0, y0)
    dt = _first_step(func, y0, f0, rtol, atol)
    y, f, interval, interpolant = y0, f0, None, None
    while interval is None or end > interval[1]:
        start = t0 if interval is None else interval[1]
        step32 = dt.float()
        k = [f]
        for alpha, betas in zip(_ALPHA, _BETA):
            yi = _combine(y, _scaled(betas, step32), k)
            k.append(func(start + alpha * dt if alpha != 1.0 else start + dt, yi))
        y1 = yi  # the Dormand-Prince pair is FSAL: the last stage's input is the 5th-order step
        with torch.no_grad():
            error = _combine(None, [_f32(step32.item() * _f32(c)) for c in _ERROR], k)
            tolerance = atol + rtol * torch.max(y.abs(), y1.abs())
            ratio = _rms(error / tolerance).abs()
        if ratio <= 1:
            interpolant = _fit(y, y1, k, step32)
            interval = (start, start + dt)
            y, f = y1, k[-1]
        dt = _next_step(dt, ratio)
    x = ((end - interval[0]) / (interval[1] - interval[0])).float()
    powers = [1.0, x, x * x, x * x * x, x * x * x * x]
    if not x.requires_grad:
        powers = [1.0] + [p.item() for p in powers[1:]]
    return _combine(None, powers, interpolant)  # e + d x + c x^2 + b x^3 + a x^4


def _fit(y0: Tensor, y1: Tensor, k: list, step32: Tensor) -> list:
    """The 4th-order interpolant's coefficients [e, d, c, b, a] of one step (x = 0 .. 1), from
    the states at its ends and mid-point and the slopes at its ends."""
    mid = _combine(y0, _scaled(_MID, step32), k)
    dt = step32 if step32.requires_grad else step32.item()
    f0, f1 = k[0], k[-1]
    a = _combine(None, [2 * dt, -2 * dt, -8.0, -8.0, 16.0], [f1, f0, y1, y0, mid])
    b = _combine(None, [5 * dt, -3 * dt, 18.0, 14.0, -32.0], [f0, f1, y0, y1, mid])
    c = _combine(None, [dt, -4 * dt, -11.0, -5.0, 16.0], [f1, f0, y0, y1, mid])
    d = _combine(None, [dt], [f0])
    return [y0, d, c, b, a]
