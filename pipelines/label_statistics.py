"""Per-component statistics of a label array in one compiled pass: pixels per frame, value sum
and maximum, and bounding box of every component.

Why compiled: a random-weight or poorly trained model leaves a hundred components over half of a
26 M voxel CT, and the numpy way (``find_objects`` for the boxes, then per frame a gather, a
weighted ``bincount``, a plain one and ``np.maximum.at``) visits each voxel five or six times. With
one loop that reads each voxel once, the benchmark UNet 3D's "measure" stage went from 0.36 s to
0.15 s (``bench/inference.py --breakdown``; docs/performance.md §6).

The results are the numpy way's to the last bit: each component's sum is added up in raster order
within a frame (as ``bincount`` does) and the frames' sums are then added in frame order, so the
mean does not depend on how a caller reads the volume. NaN values propagate to the maximum, as
``np.maximum`` does.

The kernel is compiled by numba on first use (:mod:`pipelines.compiled`: about a second per array
type, then kept in numba's on-disk cache). A process that measures pays about 130 MB of RSS once
(numba and LLVM: 65-69 MB to import, 62 MB more at the first call) and ~0.5 s on its first study
(1.2 s per array type while the cache is cold); :func:`warm_up` moves that to start-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.compiled import compile_kernel


@dataclass(frozen=True)
class LabelStatistics:
    """Row ``i`` is component ``i`` (row 0, the background, is left zero).

    ``lower``/``upper``: first and last (inclusive) frame, row and column of each component; an
    ``upper`` row of -1 marks a component number with no pixels.
    """

    per_frame: np.ndarray  # (count + 1, F) int64
    sums: np.ndarray  # (count + 1,) float64
    maxima: np.ndarray  # (count + 1,) float64, -inf for no pixels
    lower: np.ndarray  # (count + 1, 3) int64
    upper: np.ndarray  # (count + 1, 3) int64


def label_statistics(labels: np.ndarray, values: np.ndarray, count: int) -> LabelStatistics:
    """Statistics of components 1..``count`` of a (F, H, W) integer label array over ``values``
    of the same shape; labels above ``count`` (or negative) are an error."""
    if labels.ndim != 3 or labels.shape != values.shape:
        raise ValueError(f"labels {labels.shape} and values {values.shape} must be one (F, H, W)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, not {labels.dtype}")
    per_frame = np.zeros((count + 1, labels.shape[0]), np.int64)
    sums = np.zeros(count + 1, np.float64)
    maxima = np.full(count + 1, -np.inf)
    lower = np.full((count + 1, 3), np.iinfo(np.int64).max, np.int64)
    upper = np.full((count + 1, 3), -1, np.int64)
    bad = _kernel()(labels, values, count, per_frame, sums, maxima, lower, upper)
    if bad:
        raise ValueError(f"label {bad} is outside 0..{count}")
    lower[upper[:, 0] < 0] = 0  # no pixels: an empty box at the origin, not int64's maximum
    return LabelStatistics(per_frame, sums, maxima, lower, upper)


def _statistics(
    labels: Any,
    values: Any,
    count: int,
    per_frame: Any,
    sums: Any,
    maxima: Any,
    lower: Any,
    upper: Any,
) -> int:
    """The loop numba compiles; returns 0, or the first label value outside 0..count."""
    frame_sums = np.zeros(count + 1, np.float64)
    touched = np.empty(count + 1, np.int64)  # labels seen in this frame, in the order first seen
    seen_in = np.full(count + 1, -1, np.int64)  # the frame each label was last seen in
    frames, rows, cols = labels.shape
    for f in range(frames):
        n_touched = 0
        for r in range(rows):
            c = 0
            while c < cols:  # a run of one label at a time: its box and count change once
                label = labels[f, r, c]
                if label == 0:
                    c += 1
                    continue
                if label < 0 or label > count:
                    return int(label)
                start = c
                total = frame_sums[label]  # added to in raster order, as before runs were seen
                peak = maxima[label]
                while c < cols and labels[f, r, c] == label:
                    value = np.float64(values[f, r, c])
                    total += value
                    if value > peak or value != value:  # NaN stays, as in np.maximum
                        peak = value
                    c += 1
                frame_sums[label] = total
                maxima[label] = peak
                per_frame[label, f] += c - start
                if seen_in[label] != f:
                    seen_in[label] = f
                    touched[n_touched] = label
                    n_touched += 1
                    if lower[label, 0] > f:
                        lower[label, 0] = f
                    upper[label, 0] = f
                if r < lower[label, 1]:
                    lower[label, 1] = r
                if r > upper[label, 1]:
                    upper[label, 1] = r
                if start < lower[label, 2]:
                    lower[label, 2] = start
                if c - 1 > upper[label, 2]:
                    upper[label, 2] = c - 1
        for i in range(n_touched):  # the frame's sums, added frame by frame (see module doc)
            label = touched[i]
            sums[label] += frame_sums[label]
            frame_sums[label] = 0.0
    return 0


@functools.cache
def _kernel() -> Callable[..., int]:
    """:func:`_statistics` compiled (once per process; see :mod:`pipelines.compiled`)."""
    return compile_kernel(_statistics)


@functools.cache
def warm_up() -> None:
    """Load numba and the kernel for the common types (uint8 labels, float32 values) now, so
    the first study does not pay for it (once per process)."""
    label_statistics(np.ones((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.float32), 1)
