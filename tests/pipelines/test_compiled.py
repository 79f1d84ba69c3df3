"""Kernels compile with numba's on-disk cache where it can write one, and in the process where it
cannot (a read-only install whose user has no home): the node still cleans and measures."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.compiled import compile_kernel


def _total(values: np.ndarray) -> float:
    total = 0.0
    for value in values:
        total += value
    return total


def test_a_kernel_computes_what_its_python_does() -> None:
    values = np.arange(10, dtype=np.float32)
    assert compile_kernel(_total)(values) == _total(values) == 45.0


def test_without_a_writable_cache_the_node_still_cleans_and_measures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numba

    from pipelines import component_numbers, label_statistics

    real_njit = numba.njit

    def njit(*args: object, cache: bool = False, **kwargs: object) -> object:
        if cache:
            raise RuntimeError("cannot cache function '_statistics': no locator available")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    label_statistics._kernel.cache_clear()
    component_numbers._kernels.cache_clear()
    try:
        labels = np.zeros((1, 3, 3), np.uint8)
        labels[0, 1, 1:] = 1
        labels[0, 0, 0] = 2
        stats = label_statistics.label_statistics(labels, np.full(labels.shape, 2.5, np.float32), 2)
        assert stats.per_frame[1].tolist() == [2] and stats.sums[1] == 5.0
        assert component_numbers.component_sizes(labels, 2).tolist() == [2, 1]
    finally:
        label_statistics._kernel.cache_clear()
        component_numbers._kernels.cache_clear()
