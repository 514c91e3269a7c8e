"""The suite's tolerance policy for numeric comparisons.

1. Compare in the dtype the code under test computes in. An expected value built in float32 is compared with a
   float32 result; when the code computes in float32 and only stores in float64 (cumulative sums, logged scalars),
   both sides are compared at float32 tolerance. Never compare a float32 computation at float64 tolerance.
2. Tolerances are explicit: ``close`` and ``approx`` take them from ``TOL`` (per dtype, sized for a different
   summation order or a few fused operations); a comparison through a longer computation (a network's forward and
   backward, a reduction over thousands of terms) passes its own looser ``rtol``/``atol`` and says why in a comment.
   ``torch.testing.assert_close`` and ``pytest.approx`` are never called with their implicit defaults.
3. Exact equality (``==``) only for values that are exact by construction: integers, counts, labels, copies, and
   floats the code does not compute (a configured value passed through, 0.5 set by a branch).
"""

from __future__ import annotations

from typing import Any, Mapping

import pytest
import torch

# rtol/atol per dtype. float32: a few ulps of unit-scale values after a reordered sum (eps 1.2e-7).
TOL: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-3},
    torch.float16: {"rtol": 2e-3, "atol": 1e-4},
}


def tol(dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """``{"rtol": ..., "atol": ...}`` for ``dtype``."""
    if dtype not in TOL:
        raise KeyError(f"no tolerance for {dtype}; tests/numeric.py TOL has {sorted(map(str, TOL))}")
    return dict(TOL[dtype])


def close(actual: Any, expected: Any, dtype: torch.dtype | None = None, **override: Any) -> None:
    """``assert_close`` after casting both sides to ``dtype`` (default: the dtype of ``actual``, i.e. of the code
    under test), at ``TOL[dtype]`` unless ``rtol``/``atol`` are given (other keywords, e.g. ``msg``, go to
    ``assert_close``). A non-floating ``actual`` with no ``dtype`` is compared exactly, dtype included."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if dtype is None and not actual.is_floating_point():
        # Integers, booleans: exact, dtype included.
        torch.testing.assert_close(actual, expected, **{"rtol": 0, "atol": 0, **override})
        return
    dtype = dtype or actual.dtype
    torch.testing.assert_close(actual.to(dtype), expected.to(dtype), **{**tol(dtype), **override})


def approx(expected: Any, dtype: torch.dtype = torch.float32, **override: float) -> Any:
    """``pytest.approx(expected)`` at ``TOL[dtype]`` (for Python floats the code computed in ``dtype``)."""
    t = {**tol(dtype), **override}
    return pytest.approx(expected, rel=t["rtol"], abs=t["atol"])


def approx64(expected: Any, **override: float) -> Any:
    """``approx`` for values the code computes in float64 (Python floats, float64 buffers)."""
    return approx(expected, torch.float64, **override)


def assert_float32_logits(fused: torch.Tensor, per_modality: Mapping[str, torch.Tensor]) -> None:
    """Logits that reach a loss or a metric are float32, bf16 autocast or not."""
    assert fused.dtype == torch.float32, fused.dtype
    assert all(v.dtype == torch.float32 for v in per_modality.values()), {m: v.dtype for m, v in per_modality.items()}
