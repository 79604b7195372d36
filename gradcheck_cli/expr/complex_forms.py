"""Complex-safe forms of functions whose torch form has no analytic complex version, for
complex-step differences (functions.py's `complex_torch` for erf and atan2).  logsumexp and
norm are the one form of those reductions, real and complex alike (torch_eval.Reducer and
torch_structured.reduce call them).

The complex step evaluates f(x + ih) with h ~ 1e-20 and reads f'(x) = Im f(x + ih) / h.
That needs f's analytic continuation near the real point, and nothing else: a form that
agrees with it to first order in the imaginary parts gives the same derivative, its
difference from the continuation being of the order of the truncation the complex step
already neglects (h^2).  Each form below says which it is.  A real tensor (a constant,
an input no row steps) goes through the real function unchanged.

Torch lacks: erf for complex numbers; atan2 for complex numbers; logsumexp subtracts the
maximum, which complex numbers do not have; vector_norm of a complex tensor is the
modulus sqrt(sum |z|^2), which is not analytic.
"""

from __future__ import annotations

import math

SQRT_PI = math.sqrt(math.pi)


SMALL = 1e-8  # imaginary parts below this (against the function's scale) leave only first order


def erf(torch, z):
    """erf near the real axis, from its Taylor series about a = Re z to third order in
    b = Im z: with c = 2/sqrt(pi) exp(-a^2) (= erf'(a)), erf'' = -2a c, erf''' = (4a^2 - 2) c,

        erf(a + ib) = erf(a) + ib c + (ib)^2/2 (-2a c) + (ib)^3/6 (4a^2 - 2) c + O(b^4)
                    = erf(a) + a c b^2  +  i c (b - (2a^2 - 1) b^3 / 3)  + O(b^4).

    That is the analytic continuation itself up to terms of order b^4: a complex step of
    h reads f'(a) - f'''(a) h^2/6 from it, exactly what it reads from the true erf, so its
    truncation (and the step-size chart's) shows as it would.  Where every |b| (1 + |a|) is
    below SMALL the b^2 terms are below half an ulp of the terms kept (relative size
    (b (1 + |a|))^2 < 1e-16), so the first-order form erf(a) + i c b is the same number in
    float64, for a third of the work: that is every complex step at h = 1e-20 max(1, |x|).
    The real part is torch's own erf."""
    if not z.is_complex():
        return torch.special.erf(z)
    a, b = z.real, z.imag
    c = (2.0 / SQRT_PI) * torch.exp(-(a * a))
    if not b.numel() or float(b.abs().max()) * (1.0 + float(a.abs().max())) < SMALL:
        return torch.complex(torch.special.erf(a), c * b)
    return torch.complex(torch.special.erf(a) + a * c * b * b, c * (b - (2 * a * a - 1) * b * b * b / 3))


def atan2(torch, y, x):
    """atan2(y, x) as a fixed analytic formula chosen by the real parts (so the choice does
    not change within a complex step): atan(y/x) where |Re x| >= |Re y| (plus pi, or -pi
    for a negative or -0 Re y, where Re x < 0: torch's atan2(+-0, -1) = +-pi), and
    pi/2 sign(Re y) - atan(x/y) elsewhere.  Each is atan2 itself in its region, an
    analytic function of both arguments there, and the ratios stay within [-1, 1], so
    neither overflows nor loses the derivative.  Where the imaginary parts are below SMALL
    times the distance r from the origin, the terms of second order, (Im / r)^2 against
    those kept, are below half an ulp, and the first-order form

        atan2(Re y, Re x) + i (Re x Im y - Re y Im x) / r^2

    is the same number in float64 (torch's real atan2, and the derivative's own formula).
    At the origin (0, 0) atan2 has no derivative (a kink: functions.py records it, and
    complex steps fall back there)."""
    if not (y.is_complex() or x.is_complex()):
        return torch.atan2(y, x)
    y, x = torch.broadcast_tensors(*_complex(torch, y, x))
    yr, xr, yi, xi = y.real, x.real, y.imag, x.imag
    r2 = xr * xr + yr * yr
    if y.numel() and max(float(yi.abs().max()), float(xi.abs().max())) < SMALL * math.sqrt(float(r2.min())):
        return torch.complex(torch.atan2(yr, xr), (xr * yi - yr * xi) / r2)
    wide = xr.abs() >= yr.abs()
    pi = torch.full_like(xr, math.pi)  # (a Python float in torch.where would be float32)
    side = torch.where(torch.signbit(yr), -pi, pi)  # -0 counts as negative, as in torch.atan2
    t = torch.atan(torch.where(wide, y, x) / torch.where(wide, x, y))
    return torch.where(wide, t + torch.where(xr < 0, side, 0.0), side / 2 - t)


def logsumexp(torch, x, dims: tuple, keepdim: bool):
    """log sum exp(x) over `dims` as m + log sum exp(x - m), m the largest real part (a
    constant: the identity holds for any m, so this is the analytic function itself, with
    torch's overflow protection)."""
    if not x.is_complex():
        return torch.logsumexp(x, dim=dims, keepdim=keepdim) if dims else x
    if not dims:
        return x
    m = x.real.amax(dim=dims, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf: log 0 = -inf, as torch gives
    out = m + torch.log(torch.sum(torch.exp(x - m), dim=dims, keepdim=True))
    return out if keepdim else out.squeeze(dims)


def norm(torch, x, dims: tuple, keepdim: bool):
    """The 2-norm sqrt(sum x^2) over `dims` without the conjugate: the analytic continuation
    of the real norm (torch's complex norm, sqrt(sum |x|^2), is not analytic).  Its kink is
    the zero slice (functions.py records it, and complex steps fall back there)."""
    if not x.is_complex():
        if not dims:
            return x.abs()
        return torch.linalg.vector_norm(x, dim=dims, keepdim=keepdim)
    if not dims:
        return torch.sqrt(x * x)
    return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keepdim))


def _complex(torch, *ts):
    return [t if t.is_complex() else t.to(torch.complex128) for t in ts]

