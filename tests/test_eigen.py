"""core.defense.eigen: the largest eigenvalue of small symmetric matrices, against LAPACK."""

from __future__ import annotations

import pytest
import torch

from core.defense.eigen import largest_eigenvalues


def lapack(matrices: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(matrices.double())[:, -1]


def assert_close_to_lapack(matrices: torch.Tensor, ulps: float = 64) -> None:
    got = largest_eigenvalues(matrices)
    norm = matrices.double().flatten(1).abs().amax(1).clamp_min(1e-300) * matrices.shape[-1]
    assert got.dtype == torch.float64
    assert ((got - lapack(matrices)).abs() <= ulps * 2.0**-52 * norm).all()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_gram_matrices(n, dtype):
    gen = torch.Generator().manual_seed(n)
    w = torch.randn(300, 3 * n + 1, n, generator=gen, dtype=dtype)
    assert_close_to_lapack(w.mT @ w)


def test_general_symmetric_matrices_indefinite_and_negative():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 7, 7, generator=gen, dtype=torch.float64)
    assert_close_to_lapack(a + a.mT)
    b = torch.randn(200, 4, 6, generator=gen, dtype=torch.float64)
    assert_close_to_lapack(-(b @ b.mT))


def test_repeated_and_degenerate_spectra():
    q, _ = torch.linalg.qr(torch.randn(4, 9, 9, dtype=torch.float64))
    spectra = torch.tensor(
        [
            [5.0, 5.0, 1, 1, 1, 1, 1, 0, 0],  # double top eigenvalue
            [2.0, 2.0, 2.0, 2.0, 0.5, 0, 0, 0, 0],  # fourfold
            [1.0, 1.0 - 1e-9, 0.3, 0, 0, 0, 0, 0, 0],  # nearly double, low rank
            [7.0, 0, 0, 0, 0, 0, 0, 0, 0],  # rank one
        ],
        dtype=torch.float64,
    )
    matrices = q @ torch.diag_embed(spectra) @ q.mT
    got = largest_eigenvalues(matrices)
    assert got.tolist() == pytest.approx(spectra[:, 0].tolist(), rel=1e-13)
    assert largest_eigenvalues(torch.eye(9).repeat(3, 1, 1)).tolist() == [1.0, 1.0, 1.0]
    assert largest_eigenvalues(torch.zeros(2, 9, 9)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales_of_float32(scale):
    w = torch.randn(50, 20, 9)
    assert_close_to_lapack((w.mT @ w) * scale)


def test_extreme_scales_of_float64():
    w = torch.randn(20, 20, 9, dtype=torch.float64)
    gram = w.mT @ w
    for scale in (1e-200, 1e200, 1e305, 1e-305, 1e-315):  # 1e-315: subnormal entries
        got = largest_eigenvalues(gram * scale) / scale
        rtol = 1e-13 if scale > 1e-300 else 1e-6  # subnormals keep fewer digits
        assert torch.allclose(got, lapack(gram), rtol=rtol)


def test_non_finite_entry_gives_nan_for_its_matrix_only():
    w = torch.randn(4, 20, 9)
    gram = w.mT @ w
    gram[1, 5, 2] = float("nan")
    gram[2, 0, 0] = float("inf")
    got = largest_eigenvalues(gram)
    assert got.isnan().tolist() == [False, True, True, False]
    assert torch.allclose(got[[0, 3]], lapack(gram[[0, 3]]), rtol=1e-12)


def test_reads_the_lower_triangle_like_eigvalsh():
    w = torch.randn(10, 20, 9, dtype=torch.float64)
    gram = w.mT @ w
    garbage = gram + torch.triu(torch.randn(10, 9, 9, dtype=torch.float64), diagonal=1) * 100
    assert torch.allclose(largest_eigenvalues(garbage), lapack(garbage), rtol=1e-12)
    assert torch.allclose(largest_eigenvalues(garbage), lapack(gram), rtol=1e-12)


def test_shapes_and_dtypes():
    assert largest_eigenvalues(torch.zeros(0, 9, 9)).shape == (0,)
    assert largest_eigenvalues(torch.tensor([[[4]], [[9]]])).tolist() == [4.0, 9.0]
    strided = torch.randn(6, 9, 9, dtype=torch.float64)[::2]
    assert torch.allclose(largest_eigenvalues(strided), lapack(strided), rtol=1e-12)
    with pytest.raises(ValueError, match="N×n×n"):
        largest_eigenvalues(torch.zeros(3, 9, 8))
    with pytest.raises(ValueError, match="N×n×n"):
        largest_eigenvalues(torch.zeros(9, 9))


def test_works_where_no_compiled_code_can_be_cached(tmp_path):
    """No writable cache location (simulated: no numba cache locator applies) → compile in
    memory instead of failing at import."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from core.defense import eigen; "
        "print(eigen.largest_eigenvalues(torch.eye(3)[None] * 2).item(), "
        "type(eigen._largest_eigenvalues._cache).__name__)"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "_IPythonCacheLocator"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2.0", "NullCache"]
