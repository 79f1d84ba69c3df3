"""Size and renumber labelled components in compiled passes: the clean-up's minimum-size and
keep-largest rules, and the finding map's numbers.

Why compiled: the benchmark UNet 3D (random weights) leaves thousands of components over half of
a 100 x 512² CT. numpy's way is a ``bincount`` over the labels (in chunks, to bound its int64
index copies), a lookup through the renumbering table (the same) and a comparison to rewrite the
mask: three passes with index conversions. Here sizing is one pass and renumbering one more, which
writes the kept labels and the cleaned mask together (kernels from :mod:`pipelines.compiled`).
The finding map's numbers are one more pass. With these and the run-wise statistics kernel, the
benchmark UNet 3D's "measure" stage went from 0.12-0.15 s to 0.07-0.09 s and its "post-process"
stage from 0.28-0.33 s to 0.25-0.29 s (``bench/inference.py --breakdown``; docs/performance.md §6).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.compiled import compile_kernel


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixel count of components 1..``count`` of an integer label array (any shape); a label
    above ``count`` is an error."""
    if count == 1:  # one component: its set pixels, no kernel needed
        return np.array([np.count_nonzero(labels)], np.int64)
    sizes = np.zeros(count + 1, np.int64)
    bad = _kernels()[0](labels.reshape(-1), count, sizes)
    if bad:
        raise ValueError(f"label {bad} is outside 0..{count}")
    return sizes[1:]


def renumber_components(
    labels: np.ndarray, table: np.ndarray, kept_labels: np.ndarray, mask: np.ndarray
) -> None:
    """``kept_labels = table[labels]`` and ``mask = kept_labels != 0``, in one pass.

    ``labels``, ``kept_labels`` (all 0: freshly allocated) and ``mask`` are (F, H, W) of one
    shape, the last two views that may be strided (a box of a larger array); ``table`` maps
    every label value, 0 to 0.
    """
    if mask.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} and mask {mask.shape} must be one (F, H, W)")
    _paint_checked(labels, table, kept_labels, mask)


def paint_components(labels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """``out = table[labels]`` where ``labels`` is not 0 (and ``out`` is 0: each pixel belongs
    to one label's components); ``out`` keeps its values elsewhere.

    How findings are numbered into the finding map: each label's components, in one pass over
    the box of its labels (``out`` a view of the map that may be strided), without touching the
    numbers an earlier label wrote beside them.
    """
    _paint_checked(labels, table, out, None)


def _paint_checked(
    labels: np.ndarray, table: np.ndarray, out: np.ndarray, mask: np.ndarray | None
) -> None:
    """Both entry points' checks, then the one kernel: numba does not check bounds, so a label
    outside the table or a number the map cannot hold must be refused here, not written past."""
    if labels.shape != out.shape or labels.ndim != 3:
        raise ValueError(f"labels {labels.shape} and out {out.shape} must be one (F, H, W)")
    if table.size and not 0 <= int(table.min()) <= int(table.max()) <= np.iinfo(out.dtype).max:
        raise ValueError(f"numbers {int(table.min())}..{int(table.max())} do not fit {out.dtype}")
    if table.size and table[0] != 0:
        raise ValueError("the table must map label 0 (no component) to 0")
    no_mask = np.zeros((0, 0, 0), bool)  # never indexed: with_mask is False
    bad = _kernels()[1](labels, table, out, no_mask if mask is None else mask, mask is not None)
    if bad:
        raise ValueError(f"label {bad} is outside the numbering table (0..{table.size - 1})")


def _sizes(flat: Any, count: int, sizes: Any) -> int:
    """Counts each label of ``flat`` into ``sizes``; returns 0, or the first label above count."""
    for label in flat:
        if label > count or label < 0:
            return int(label)
        sizes[label] += 1
    return 0


def _paint(labels: Any, table: Any, out: Any, mask: Any, with_mask: bool) -> int:
    """The painting loop (and ``mask = out != 0`` if ``with_mask``); returns 0, or the first
    label outside the table.

    Branch-free on the label (``out |= table[label]``, where ``table[0]`` is 0): on a noisy mask
    a "label == 0" branch is mispredicted half the time, which made this loop no faster than
    numpy's lookup (45 ms on the benchmark's 26 M voxel box; 14 ms without the branch)."""
    last = table.size - 1
    frames, rows, cols = labels.shape
    for f in range(frames):
        for r in range(rows):
            for c in range(cols):
                label = labels[f, r, c]
                if label > last or label < 0:
                    return int(label)
                out[f, r, c] |= table[label]
                if with_mask:
                    mask[f, r, c] = out[f, r, c] != 0
    return 0


@functools.cache
def _kernels() -> tuple[Callable[..., int], Callable[..., int]]:
    """The loops compiled (once per process)."""
    return compile_kernel(_sizes), compile_kernel(_paint)


@functools.cache
def warm_up() -> None:
    """Load the kernels for the usual types now (cc3d's labels, uint16 or uint32 where a noisy
    mask's worst case does not fit 16 bits; a uint8 renumbering; the uint16 finding map), so the
    first study does not pay for it (once per process)."""
    for dtype in (np.uint16, np.uint32):
        labels = np.array([[[0, 1, 2]]], dtype)
        component_sizes(labels, 2)
        table = np.array([0, 1, 0], np.uint8)
        kept = np.zeros(labels.shape, np.uint8)
        renumber_components(labels, table, kept, np.zeros(labels.shape, bool))
    paint_components(kept, np.array([0, 1], np.uint16), np.zeros(kept.shape, np.uint16))
