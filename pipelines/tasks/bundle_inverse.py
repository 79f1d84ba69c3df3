"""A MONAI bundle's output mapped back to the source grid slab by slab, without ``Invertd``.

MONAI's ``Invertd`` inverts a ``Spacingd`` by resampling the whole source volume at once, in
float64, through a full sampling grid: inverting even one channel onto a 300 x 512² CT costs about
4 GB. When everything the bundle's pre-processing recorded on the image is geometric and captured
by the MetaTensor's affine — one ``Orientation`` (an exact permutation and flip) then at most one
``SpatialResample`` (what ``Spacing`` records) — the inverse is one affine map from the oriented
grid to the network grid, ``inv(A_net) @ A_oriented``, followed by a re-indexing onto the source
(column, row, frame) order. That map is sampled here a slab of source frames at a time, so only one
slab of the source grid (and its sampling grid) is in memory beside the output.

The sampling coordinates are MONAI's own, computed the way ``SpatialResample`` computes them
(``np.linalg.solve`` of the two affines, MONAI's ``to_norm_affine`` with ``align_corners=False``,
reversed indexing, then ``affine_grid``'s base grid times theta in float64), just for one slab of
the output at a time. That matters for nearest interpolation: with a source spacing of half the
network's (0.75 mm under a 1.5 mm ``Spacingd``) every other voxel centre lies exactly between two
network voxels, and which one MONAI reads is decided by its float64 rounding; the same arithmetic
here reads the same one (computed any other way, ~15 % of such a volume differed). Nearest is then
read by index (``grid_sample``'s unnormalisation and half-to-even rounding, in float64), linear by
``grid_sample`` in float32 (within 1e-5 of MONAI's float64). The padding is the one the ``Spacing``
recorded (``border`` by default); the interpolation is what the ``Invertd`` asks for: ``nearest``
when its ``nearest_interp`` is set (MONAI's default), else the ``Spacing``'s own mode.

Anything else (a crop, pad or zoom recorded, two resamplings, a spline mode) returns ``None`` and
the caller runs the bundle's own ``Invertd``: there the padding of one step and the interpolation
of the next do not compose into one affine sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.preprocess.orientation import axis_map

_ORIENTATION = "Orientation"
_RESAMPLE = "SpatialResample"  # what Spacing (and SpatialResample itself) record
# what may be recorded on the image: an orientation, then a resampling (Spacing's)
_GEOMETRIC = ([_ORIENTATION], [_RESAMPLE], [_ORIENTATION, _RESAMPLE])
_MODES = ("bilinear", "nearest")
_PADDINGS = ("zeros", "border", "reflection")
_WORK_BYTES = 128 * 2**20  # working memory for one slab: sampling grid, indices and output


@dataclass(frozen=True)
class AffineInverse:
    """How the source grid reads the network grid: MONAI's normalised sampling transform onto the
    oriented grid, and how the oriented grid's axes map onto the source's."""

    theta: torch.Tensor  # (1, 3, 4) float64, affine_grid's: oriented (x, y, z) → network
    oriented_shape: tuple[int, int, int]
    axes: list[int]  # for source axes (column, row, frame): the oriented axis
    flips: list[bool]  # and whether it runs the other way
    mode: str  # "bilinear" (trilinear in 3D) or "nearest"
    padding_mode: str  # grid_sample's: zeros, border or reflection


def _invertd(invert: Any) -> Any:
    transforms = getattr(invert, "transforms", (invert,))
    return next((t for t in transforms if type(t).__name__ == "Invertd"), None)


def _nearest(invert: Any, pred_key: str) -> bool | None:
    """Whether the bundle's ``Invertd`` inverts ``pred_key`` with nearest interpolation."""
    invertd = _invertd(invert)
    if invertd is None or pred_key not in invertd.keys:
        return None
    return bool(invertd.nearest_interp[list(invertd.keys).index(pred_key)])


def affine_inverse(
    image: Any,
    invert: Any,
    pred_key: str,
    source_affine: np.ndarray | None,
    source_view_shape: tuple[int, int, int],
) -> AffineInverse | None:
    """The slab-wise inverse for ``image`` (the pre-processed MetaTensor ``Invertd`` would read),
    or ``None`` where only ``Invertd`` can invert what was recorded.

    ``source_view_shape`` is the series as MONAI read it, (columns, rows, frames).
    """
    from monai.networks.utils import to_norm_affine

    operations = list(getattr(image, "applied_operations", None) or [])
    nearest = _nearest(invert, pred_key)
    names = [str(op.get("class", "")) for op in operations]
    if source_affine is None or nearest is None or names not in _GEOMETRIC:
        return None
    if tuple(int(n) for n in operations[0].get("orig_size", ())) != tuple(source_view_shape):
        return None  # not read from the series the node decoded
    network = np.asarray(torch.as_tensor(image.affine), dtype=np.float64)
    net_shape = tuple(int(n) for n in image.shape[1:])
    oriented, oriented_shape = network, net_shape
    mode, padding = "nearest", "zeros"  # orientation alone lands on voxel centres exactly
    if names[-1] == _RESAMPLE:
        resample = operations[-1]
        extra = resample.get("extra_info", {})
        mode = "nearest" if nearest else str(extra.get("mode", ""))
        padding = str(extra.get("padding_mode", ""))
        if (
            mode not in _MODES
            or padding not in _PADDINGS
            or (mode == "nearest" and padding == "reflection")
        ):
            return None
        oriented = np.asarray(torch.as_tensor(extra["src_affine"]), dtype=np.float64)
        size = tuple(int(n) for n in resample.get("orig_size", ()))
        oriented_shape = (size[0], size[1], size[2])
    xform = torch.as_tensor(np.linalg.solve(network, oriented), dtype=torch.float64)
    theta = to_norm_affine(xform[None], net_shape, oriented_shape, align_corners=False)
    reverse = [2, 1, 0]  # MONAI's reverse_indexing: grid_sample's (x, y, z) is (W, H, D)
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    axes, flips = axis_map(np.asarray(source_affine, dtype=np.float64), oriented)
    shape3 = (oriented_shape[0], oriented_shape[1], oriented_shape[2])
    return AffineInverse(theta[:, :3].contiguous(), shape3, axes, flips, mode, padding)


def _base(length: int, start: int, stop: int) -> torch.Tensor:
    """``affine_grid``'s normalised voxel centres (align_corners=False) ``start:stop`` of an axis
    of ``length``."""
    steps = torch.linspace(-1, 1, length, dtype=torch.float64)
    steps = steps * (length - 1) / length
    return steps[start:stop]


def _grid(inverse: AffineInverse, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """(n0, n1, n2, 3) float64 normalised network-grid coordinates (grid_sample's x, y, z) of
    oriented voxels in ``ranges``, by ``affine_grid``'s own product."""
    d, h, w = (_base(n, a, b) for n, (a, b) in zip(inverse.oriented_shape, ranges, strict=True))
    base = torch.ones(len(d), len(h), len(w), 4, dtype=torch.float64)
    base[..., 0] = w.view(1, 1, -1)
    base[..., 1] = h.view(1, -1, 1)
    base[..., 2] = d.view(-1, 1, 1)
    grid = base.view(1, -1, 4).bmm(inverse.theta.transpose(1, 2))
    return grid.view(len(d), len(h), len(w), 3)


def _sample_nearest(pred: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``pred`` (C, X, Y, Z) read at the nearest voxel, as grid_sample's nearest mode reads it
    (unnormalised with align_corners=False, clipped for border, rounded half to even, zeros
    outside)."""
    size = pred.shape[1:]
    inside = None
    index = []
    for axis in range(3):  # grid's last dim is (z, y, x) of pred's (X, Y, Z)
        n = size[axis]
        coord = ((grid[..., 2 - axis] + 1) * n - 1) / 2
        if padding_mode == "border":
            coord = coord.clamp(0, n - 1)
        at = torch.round(coord).long()
        if padding_mode == "zeros":
            ok = (at >= 0) & (at < n)
            inside = ok if inside is None else inside & ok
            at = at.clamp(0, n - 1)
        index.append(at)
    flat = (index[0] * size[1] + index[1]) * size[2] + index[2]
    out = pred.reshape(pred.shape[0], -1)[:, flat.reshape(-1)].reshape(-1, *flat.shape)
    if inside is not None:
        out *= inside
    return out


def _sample_linear(pred: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``pred`` (C, X, Y, Z) trilinearly, as MONAI samples it (align_corners=False)."""
    out = F.grid_sample(
        pred[None], grid[None].float(), "bilinear", padding_mode, align_corners=False
    )
    return out[0]


def source_slabs(
    inverse: AffineInverse, pred: torch.Tensor, source_shape: tuple[int, int, int]
) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame, (C, frames in slab, rows, columns) float32) covering the source grid, for
    ``pred`` (C, *network grid)."""
    frames, rows, cols = source_shape
    data = pred.float().contiguous()
    per_frame = rows * cols * (120 + 8 * data.shape[0])  # base, grid, indices, output
    step = max(1, _WORK_BYTES // per_frame)
    sample = _sample_nearest if inverse.mode == "nearest" else _sample_linear
    axes, flips = inverse.axes, inverse.flips
    frame_axis = axes[2]
    length = inverse.oriented_shape[frame_axis]
    for start in range(0, frames, step):
        stop = min(frames, start + step)
        lo, hi = (length - stop, length - start) if flips[2] else (start, stop)
        ranges = [(0, n) for n in inverse.oriented_shape]
        ranges[frame_axis] = (lo, hi)
        slab = sample(data, _grid(inverse, ranges), inverse.padding_mode)
        # (C, o0, o1, o2) → (C, frame, row, column), each running the source's way
        slab = slab.permute(0, 1 + axes[2], 1 + axes[1], 1 + axes[0])
        flipped = [d for d, view_axis in ((1, 2), (2, 1), (3, 0)) if flips[view_axis]]
        yield start, (slab.flip(flipped) if flipped else slab).numpy()
