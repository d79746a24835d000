"""Largest eigenvalue of many small symmetric matrices — CLP's per-channel Gram matrices.

LAPACK's batched `eigvalsh` finds all eigenvalues of each matrix and pays a library call per
matrix: on 9×9 Gram matrices that is ~2.6 µs each, most of CLP's time. CLP needs one eigenvalue,
so each matrix here is reduced to tridiagonal form (Householder) and its largest eigenvalue is
found by Laguerre's method from a Gershgorin upper bound: on a polynomial whose roots are all
real, Laguerre's iterates started above the largest root fall monotonically onto it, cubically
when it is simple. Everything runs in float64 on a power-of-two rescaled copy (no overflow), and
numba compiles it once (cached on disk) into code that releases the GIL.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

_EPS = 2.0**-52
_MAX_STEPS = 100


def _compiled(function):
    """numba-compile `function` without the GIL, cached on disk where a cache can be written."""
    options = {"nogil": True, "error_model": "numpy"}  # x/0 → inf, as in numpy, not an exception
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location: compile once per process instead
        return numba.njit(**options)(function)


def largest_eigenvalues(matrices: torch.Tensor) -> torch.Tensor:
    """λ_max of each symmetric matrix of an N×n×n CPU batch (lower triangle read), float64.

    A matrix with a non-finite entry gets NaN. Agrees with `torch.linalg.eigvalsh(...)[..., -1]`
    to a few float64 ulps of the matrix norm. Runs on the calling thread with the GIL released,
    so threads may each take a share of a batch.
    """
    if matrices.dim() != 3 or matrices.shape[1] != matrices.shape[2]:
        raise ValueError(f"expected an N×n×n batch, got shape {tuple(matrices.shape)}")
    batch = matrices.detach().cpu()
    if batch.dtype not in (torch.float32, torch.float64):
        batch = batch.double()
    out = np.empty(len(batch), dtype=np.float64)
    _largest_eigenvalues(batch.contiguous().numpy(), out)
    return torch.from_numpy(out)


@_compiled
def _largest_eigenvalues(matrices, out):  # pragma: no cover - compiled
    n = matrices.shape[1]
    a = np.empty((n, n))
    d = np.empty(n)
    e = np.zeros(n)  # e[i] couples rows i-1 and i of the tridiagonal matrix
    v = np.empty(n)
    q = np.empty(n)
    for m in range(matrices.shape[0]):
        biggest = 0.0
        finite = True
        for i in range(n):
            for j in range(i + 1):
                finite = finite and math.isfinite(matrices[m, i, j])
                biggest = max(biggest, abs(matrices[m, i, j]))
        if not finite:
            out[m] = math.nan
            continue
        if biggest == 0.0:
            out[m] = 0.0
            continue
        exponent = math.frexp(biggest)[1]  # rescale by a power of two (exact): entries < 1
        scale = math.ldexp(1.0, -exponent)
        normal = abs(exponent) < 1000  # 2**-exponent is a normal float: multiplying is exact
        for i in range(n):
            for j in range(i + 1):
                x = matrices[m, i, j]
                a[i, j] = x * scale if normal else math.ldexp(x, -exponent)
                a[j, i] = a[i, j]
        _tridiagonalise(a, d, e, v, q)
        out[m] = math.ldexp(_largest_tridiagonal_eigenvalue(d, e), exponent)


@_compiled
def _tridiagonalise(a, d, e, v, q):  # pragma: no cover - compiled
    """Householder reduction of symmetric `a` (overwritten): diagonal → d, sub-diagonal → e[1:]."""
    n = a.shape[0]
    for k in range(n - 2):
        norm = 0.0
        for i in range(k + 1, n):
            norm += a[i, k] * a[i, k]
        norm = math.sqrt(norm)
        if norm == 0.0:
            e[k + 1] = 0.0
            continue
        head = a[k + 1, k]
        alpha = -norm if head >= 0.0 else norm  # reflect x onto alpha·e1, no cancellation
        v[k + 1] = head - alpha
        for i in range(k + 2, n):
            v[i] = a[i, k]
        tau = 1.0 / (norm * (norm + abs(head)))  # 2 / vᵀv
        # A ← H A H with H = I − τ v vᵀ, as A − v wᵀ − w vᵀ, w = τ A v − (τ² vᵀ A v / 2) v
        vav = 0.0
        for i in range(k + 1, n):
            s = 0.0
            for j in range(k + 1, n):
                s += a[i, j] * v[j]
            q[i] = tau * s
            vav += v[i] * q[i]
        half = 0.5 * tau * vav
        for i in range(k + 1, n):
            q[i] -= half * v[i]
        for i in range(k + 1, n):
            for j in range(k + 1, n):
                a[i, j] -= v[i] * q[j] + q[i] * v[j]
        e[k + 1] = alpha
    if n >= 2:
        e[n - 1] = a[n - 1, n - 2]
    for i in range(n):
        d[i] = a[i, i]


@_compiled
def _largest_tridiagonal_eigenvalue(d, e):  # pragma: no cover - compiled
    """Laguerre's method on det(T − λI) from above, through its LDLᵀ pivots r_i(λ).

    For λ above every eigenvalue all pivots are negative, and with p = Π r_i,
    G = p'/p = Σ r_i'/r_i and H = G² − p''/p = Σ (r_i'² − r_i'' r_i)/r_i².
    """
    n = d.shape[0]
    bound = -math.inf
    for i in range(n):
        radius = (abs(e[i]) if i > 0 else 0.0) + (abs(e[i + 1]) if i < n - 1 else 0.0)
        bound = max(bound, d[i] + radius)
    lam = bound + 1e-3 * (abs(bound) + 1.0)  # strictly above the spectrum (matrix norm ~1)
    for _ in range(_MAX_STEPS):
        r = d[0] - lam  # r_0 and its first two derivatives in λ
        r1 = -1.0
        r2 = 0.0
        inv = 1.0 / r
        g = r1 * inv
        h = r1 * r1 * inv * inv
        above = r < 0.0
        for i in range(1, n):
            c = e[i] * e[i]
            r, r1, r2 = (
                d[i] - lam - c * inv,
                -1.0 + c * r1 * inv * inv,
                c * (r2 * r - 2.0 * r1 * r1) * inv * inv * inv,
            )
            inv = 1.0 / r
            above = above and r < 0.0
            g += r1 * inv
            h += (r1 * r1 - r2 * r) * inv * inv
        if not above:  # rounding put λ on or below the root: it is as close as it gets
            break
        step = n / (g + math.sqrt(max((n - 1) * (n * h - g * g), 0.0)))
        lam -= step
        if step <= 4.0 * _EPS * abs(lam):
            break
    return lam
