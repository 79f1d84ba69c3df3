"""Geometry: slice ordering, and the forward/inverse maps between source pixels and model input.

Every forward map has an exact inverse here, because results must land on the source pixels the
radiologist sees: masks go back by resampling probabilities (then thresholding), boxes by
un-scaling their corners. 2D images are letterboxed (aspect ratio kept, centred, zero padded) so
a round lesion stays round for the model and circularity means the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

OBLIQUE_BELOW = 0.82  # cos(35 degrees)


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Row cosines x column cosines (written out: ``np.cross`` costs ~20 µs a call, and decoding
    calls this for every slice)."""
    r0, r1, r2, c0, c1, c2 = (float(v) for v in orientation[:6])
    return np.array([r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0])


def sort_key_along_normal(position: tuple[float, ...], orientation: tuple[float, ...]) -> float:
    """Distance of a slice along the stack normal: the order for stacking a volume."""
    return float(np.dot(np.asarray(position, dtype=float), slice_normal(orientation)))


def index_to_patient_affine(
    positions: list[tuple[float, ...] | None],
    orientation: tuple[float, ...] | None,
    pixel_spacing: tuple[float, float] | None,
) -> np.ndarray | None:
    """The 4x4 matrix from voxel index (column i, row j, frame k) to patient LPS millimetres.

    PS3.3 C.7.6.2.1.1 for one plane; the frame step is the vector from the first to the last
    position divided by the gaps, as nibabel and MONAI's DICOM readers build it, so a stack stored
    in any slice order or plane gives the same anatomy. ``None`` without full geometry.
    """
    if orientation is None or pixel_spacing is None or not positions or not all(positions):
        return None
    row_cosines = np.asarray(orientation[:3], dtype=float)  # along a row: increasing column
    col_cosines = np.asarray(orientation[3:6], dtype=float)  # down a column: increasing row
    row_spacing, col_spacing = pixel_spacing
    first = np.asarray(positions[0], dtype=float)
    if len(positions) > 1:
        step = (np.asarray(positions[-1], dtype=float) - first) / (len(positions) - 1)
    else:
        step = slice_normal(orientation)
    affine = np.eye(4)
    affine[:3, 0] = row_cosines * col_spacing
    affine[:3, 1] = col_cosines * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = first
    return affine


def orientation_label(orientation: tuple[float, ...]) -> str:
    """The plane whose axis the normal is closest to; OBLIQUE beyond ~35 degrees from every axis.

    Routine acquisitions are tilted a few to ~20 degrees (e.g. along the AC-PC line) and viewers
    still call them axial, so only a strong tilt counts as oblique.
    """
    normal = np.abs(slice_normal(orientation))
    axis = int(np.argmax(normal))
    if normal[axis] < OBLIQUE_BELOW:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


@dataclass(frozen=True)
class Letterbox:
    """Scale (keeping aspect ratio) and centre-pad a (rows, cols) image to the model size."""

    source_shape: tuple[int, int]
    target_shape: tuple[int, int]

    @property
    def scale(self) -> float:
        (h, w), (th, tw) = self.source_shape, self.target_shape
        return min(th / h, tw / w)

    @property
    def resized_shape(self) -> tuple[int, int]:
        h, w = self.source_shape
        th, tw = self.target_shape
        return min(th, max(1, round(h * self.scale))), min(tw, max(1, round(w * self.scale)))

    @property
    def pad(self) -> tuple[int, int]:
        """(top, left) padding in model pixels."""
        rh, rw = self.resized_shape
        th, tw = self.target_shape
        return (th - rh) // 2, (tw - rw) // 2

    def forward(self, images: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """(N, C, rows, cols) source → (N, C, *target_shape); padding is 0."""
        rh, rw = self.resized_shape
        th, tw = self.target_shape
        top, left = self.pad
        if (rh, rw) != tuple(images.shape[-2:]):
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            images = F.interpolate(images, size=(rh, rw), mode=mode, **kwargs)
        if (rh, rw) == (th, tw):  # nothing to pad (a square image for a square model)
            return images
        return F.pad(images, (left, tw - rw - left, top, th - rh - top))

    def inverse(self, maps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """(N, C, *target_shape) model space → (N, C, rows, cols) source space."""
        rh, rw = self.resized_shape
        top, left = self.pad
        cropped = maps[..., top : top + rh, left : left + rw]
        if (rh, rw) == self.source_shape:
            return cropped
        if mode == "bilinear":
            return resize_bilinear(cropped, self.source_shape)
        return F.interpolate(cropped, size=self.source_shape, mode=mode)

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) x0, y0, x1, y1 in model pixels → source pixels, clipped to the image."""
        if boxes.size == 0:
            return boxes.reshape(0, 4).astype(np.float64)
        top, left = self.pad
        (h, w), (rh, rw) = self.source_shape, self.resized_shape
        sx, sy = rw / w, rh / h
        out = boxes.astype(np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - left) / sx
        out[:, [1, 3]] = (out[:, [1, 3]] - top) / sy
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`boxes_to_source` (used by tests and training targets)."""
        top, left = self.pad
        (h, w), (rh, rw) = self.source_shape, self.resized_shape
        out = boxes.astype(np.float64).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * (rw / w) + left
        out[:, [1, 3]] = out[:, [1, 3]] * (rh / h) + top
        return out


@dataclass(frozen=True)
class VolumeResampling:
    """Resample a (D, H, W) volume from its spacing to a model's target spacing and back."""

    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]  # slice, row, column (mm)
    target_spacing: tuple[float, float, float] | None

    @property
    def target_shape(self) -> tuple[int, int, int]:
        if self.target_spacing is None:
            return self.source_shape
        return tuple(  # type: ignore[return-value]
            max(1, round(n * s / t))
            for n, s, t in zip(
                self.source_shape, self.source_spacing, self.target_spacing, strict=True
            )
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) → resampled (trilinear)."""
        if self.target_shape == self.source_shape:
            return volume
        return F.interpolate(volume, size=self.target_shape, mode="trilinear", align_corners=False)

    def read_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Per axis, the sorted source indices :meth:`forward` reads (None: it reads all).

        A trilinear down-sampling reads two neighbours per output index along each axis — for a
        100 x 512² CT on a 5 mm grid a few per cent of the voxels — so a pointwise mapping (a
        window) needs to run on those only (:meth:`forward_read`).
        """
        if self.target_shape == self.source_shape:
            return None
        read = []
        for n_in, n_out in zip(self.source_shape, self.target_shape, strict=True):
            if n_in == n_out:
                read.append(np.arange(n_in, dtype=np.int64))
            else:
                low, high, _ = _linear_source_indices(n_in, n_out)
                read.append(np.union1d(low, high))
        return read[0], read[1], read[2]

    def forward_read(
        self, subset: torch.Tensor, read: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> torch.Tensor:
        """:meth:`forward` of a volume given only at ``read`` (:meth:`read_indices`):
        (N, C, len(read[0]), len(read[1]), len(read[2])) → (N, C, *target_shape).

        Linear along each axis in turn, innermost first, as ``F.interpolate``'s trilinear kernel
        nests its weights (to float rounding: it computes them in float32).
        """
        out = subset
        for axis in (2, 1, 0):
            n_in, n_out = self.source_shape[axis], self.target_shape[axis]
            if n_in == n_out:
                continue
            low, high, weight = _linear_source_indices(n_in, n_out)
            lam = torch.from_numpy(weight).to(out.dtype).view(-1, *([1] * (2 - axis)))
            at_low = torch.from_numpy(np.searchsorted(read[axis], low))
            at_high = torch.from_numpy(np.searchsorted(read[axis], high))
            moved = out.index_select(2 + axis, at_low) * (1 - lam)
            moved += out.index_select(2 + axis, at_high) * lam
            out = moved
        return out

    def inverse(self, maps: torch.Tensor) -> torch.Tensor:
        if tuple(maps.shape[-3:]) == self.source_shape:
            return maps
        return F.interpolate(maps, size=self.source_shape, mode="trilinear", align_corners=False)

    def inverse_slab(
        self, maps: torch.Tensor, start: int, stop: int, axis: int = 0
    ) -> torch.Tensor:
        """Indices ``start:stop`` along source ``axis`` (0: frames) of :meth:`inverse` — e.g.
        (N, C, stop - start, H, W) for frames — with only that slab at source resolution in memory.

        Trilinear interpolation is separable: linear along ``axis`` (PyTorch's
        ``align_corners=False`` source index, clamped at the edges, as ``F.interpolate`` computes
        it), then bilinear over the other two axes. A 105-label map of a 300 x 512² CT would need
        33 GB as one float32 array; a slab of a few slices needs a few hundred MB. ``axis`` lets a
        caller whose source frames run along another axis of this grid (a reoriented volume) cut
        its slabs there.
        """
        if tuple(int(n) for n in maps.shape[-3:]) == self.source_shape:
            return maps.narrow(2 + axis, start, stop - start)
        order = [axis] + [a for a in range(3) if a != axis]
        moved = maps.permute(0, 1, *(2 + a for a in order))  # slab axis first
        depth, rows, cols = (int(n) for n in moved.shape[-3:])
        out_shape = tuple(self.source_shape[a] for a in order)
        low, high, weight = _linear_source_indices(depth, out_shape[0])
        device = maps.device  # a CUDA model's output is mapped back on its GPU
        lam = torch.from_numpy(weight[start:stop]).to(device, maps.dtype).view(1, 1, -1, 1, 1)
        slab = moved.index_select(2, torch.from_numpy(low[start:stop]).to(device)) * (1 - lam)
        slab += moved.index_select(2, torch.from_numpy(high[start:stop]).to(device)) * lam
        if (rows, cols) != out_shape[1:]:
            n, c, s = slab.shape[:3]
            planes = slab.permute(0, 2, 1, 3, 4).reshape(n * s, c, rows, cols)
            planes = resize_bilinear(planes, (out_shape[1], out_shape[2]))
            slab = planes.reshape(n, s, c, *out_shape[1:]).permute(0, 2, 1, 3, 4)
        back = [0, 1] + [2 + order.index(a) for a in range(3)]
        return slab.permute(*back)


def resize_bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(images, size, mode="bilinear", align_corners=False)``, bit for bit; on the
    CPU into memory numpy allocates.

    Maps go back to the source resolution here, and there a fresh PyTorch tensor is expensive
    before a value is written: it faults its pages in 4 KiB at a time, where numpy asks the kernel
    for transparent huge pages (``madvise``) — for the 100 x 512² float32 probabilities of a CT,
    0.045 s of page faults against 0.01 s, more than the interpolation itself (0.037 s). The
    kernel is the one F.interpolate runs (``upsample_bilinear2d``, scales from the sizes), called
    with an ``out`` tensor: the same values.
    """
    if images.device.type != "cpu" or images.dtype != torch.float32 or images.dim() != 4:
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    out = torch.from_numpy(np.empty((*images.shape[:2], *size), np.float32))
    return torch.ops.aten.upsample_bilinear2d.out(images, list(size), False, None, None, out=out)


def _linear_source_indices(
    size_in: int, size_out: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two input indices and the weight of the second, as PyTorch's
    linear interpolation with ``align_corners=False`` and an output size computes them."""
    scale = size_in / size_out
    real = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(real).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (real - low).astype(np.float32)
