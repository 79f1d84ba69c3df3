"""Post-processing of the ensemble probabilities: threshold, small components, holes, largest.

Components are 3D (26-connected) for volumes and per image (8-connected within a frame) for 2D
inputs, so two radiographs of one series never merge into one "lesion".

Volumes are large (a 512x512x100 CT is 26 M voxels) and a poor model's output has thousands of
components, so each step is one pass over the volume, never one pass per component: holes are
filled by a flood fill of each frame's outside, component sizes come from one compiled pass over
the labels and renumbering from one more (:mod:`pipelines.component_numbers`), and the labelling
that decided which components stay is handed on (as :class:`Components`) so findings need not
label the same mask again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import cc3d
import cv2
import numpy as np
from scipy import ndimage

from pipelines.component_numbers import component_sizes, renumber_components
from pipelines.spec import PostprocessSpec


def connectivity(volumetric: bool) -> np.ndarray:
    """The labelling structure: full 3x3x3 for volumes, in-plane 3x3 only for stacks of 2D images."""
    structure = np.ones((3, 3, 3), dtype=bool)
    if not volumetric:
        structure[0] = False
        structure[2] = False
    return structure


Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Components:
    """The connected components of one label's mask, numbered 1..count in ``ndimage.label`` order.

    ``volumetric`` records the connectivity they were found with (see :func:`connectivity`).
    ``labels`` covers ``box`` of the mask (None: all of it), every component inside it: the
    labels of a few lesions are a small crop, not a second volume-sized array to fill, copy and
    scan again when measuring them.
    """

    labels: np.ndarray  # (F, H, W) unsigned ints, 0 = not this label
    count: int
    volumetric: bool
    box: Box | None = None

    def region(self) -> Box:
        """Where ``labels`` lie in the mask."""
        if self.box is not None:
            return self.box
        return (
            slice(0, self.labels.shape[0]),
            slice(0, self.labels.shape[1]),
            slice(0, self.labels.shape[2]),
        )

    def whole(self, shape: tuple[int, ...]) -> np.ndarray:
        """The labels on the whole (F, H, W) mask of ``shape`` (a volume-sized copy: tests)."""
        out = np.zeros(shape, self.labels.dtype)
        out[self.region()] = self.labels
        return out


def _label(mask: np.ndarray, volumetric: bool) -> tuple[np.ndarray, int]:
    """Label a (F, H, W) bool mask: 26-connected in 3D, 8-connected within each frame otherwise.

    cc3d (connected-components-3d) gives the numbers ``ndimage.label`` gives with
    :func:`connectivity`'s structure (components numbered in raster order of their first pixel;
    tests check it against scipy), 2.5-8x faster: on a 26 M voxel CT labelling was the largest
    single cost of post-processing. Frames of a 2D stack are labelled one by one, numbered on
    from the previous frame's count, which is that same raster order. They are labelled as
    one-frame volumes: 26-connectivity within a frame is 8-connectivity, and cc3d's 2D
    8-connected labelling finds the same components but numbers them differently.
    """
    if volumetric or mask.shape[0] == 1:  # one frame (a radiograph): 8-connected as it is
        return _cc3d(mask)
    labels = np.zeros(mask.shape, dtype=np.uint32)
    count = 0
    for index in range(mask.shape[0]):
        frame_labels, frame_count = _cc3d(mask[index : index + 1])  # one frame: 8-connected
        if frame_count:
            frame = labels[index : index + 1]
            frame[...] = frame_labels
            if count:  # numbered on from the earlier frames' components
                frame[frame_labels > 0] += np.uint32(count)
            count += frame_count
    return labels, count


def _cc3d(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected cc3d labels, in uint16 where cc3d's worst-case count allows (half of uint32).

    The mask is made contiguous first: cc3d 4.1.1 mislabelled a strided view (the foreground
    box of a larger mask) in our tests, and a bool copy of the box costs only a byte per voxel.
    """
    mask = np.ascontiguousarray(mask)
    try:
        labels, count = cc3d.connected_components(
            mask, connectivity=26, return_N=True, out_dtype=np.uint16
        )
    except ValueError:  # cc3d's upper bound of the count does not fit 16 bits
        labels, count = cc3d.connected_components(mask, connectivity=26, return_N=True)
    return labels, int(count)


def foreground_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest (frames, rows, columns) box holding every set pixel of a (F, H, W) mask.

    Labelling and relabelling cost grows with the voxels they visit: a trained model's lesions
    fill a small box of a 26 M voxel CT, and three ``any`` projections find it in a few ms.
    """
    frames = np.flatnonzero(mask.any(axis=(1, 2)))
    if frames.size == 0:
        return None
    band = mask[frames[0] : frames[-1] + 1]
    rows = np.flatnonzero(band.any(axis=(0, 2)))
    cols = np.flatnonzero(band.any(axis=(0, 1)))
    return (
        slice(int(frames[0]), int(frames[-1]) + 1),
        slice(int(rows[0]), int(rows[-1]) + 1),
        slice(int(cols[0]), int(cols[-1]) + 1),
    )


def label_components(mask: np.ndarray, volumetric: bool) -> Components:
    """Label a (F, H, W) mask with the pipeline's connectivity."""
    labels, count = _label(mask, volumetric)
    return Components(labels, count, volumetric)


def threshold_labels(
    probabilities: np.ndarray,
    label_names: list[str],
    spec: PostprocessSpec,
    exclusive: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(L, F, H, W) label probabilities (no background) → (F, H, W) label map (uint8 up to 255
    labels, else uint16: the smallest type, see :func:`label_map_dtype`).

    Independent labels: a pixel gets the most probable label among those reaching their own
    threshold, else 0. Mutually exclusive labels (one softmax over background and L ≥ 2 labels,
    e.g. a 104-organ model): the pixel gets the arg-max over background (1 − Σ labels) and the
    labels, as the model's authors decide it; a ``label_thresholds`` entry additionally requires
    that label's probability to reach it. A single label is thresholded either way (for a 2-class
    softmax, p ≥ 0.5 is the arg-max, and the threshold stays tunable).

    ``out``: the (F, H, W) label map to write (a slab of the whole map) and return; one label
    is compared straight into it (no mask to copy: half the cost for a 100 x 512² CT).
    """
    if probabilities.shape[0] != len(label_names):
        raise ValueError(
            f"expected {len(label_names)} label channels, got {probabilities.shape[0]}"
        )
    if len(label_names) == 1:  # the common case, without the argmax pass
        threshold = spec.threshold_for(label_names[0])
        if out is not None and out.dtype == np.uint8:  # 0/1 bytes: compared straight into it
            np.greater_equal(probabilities[0], threshold, out=out.view(np.bool_))
            return out
        label_map = (probabilities[0] >= threshold).view(np.uint8)  # no second copy
    elif exclusive:
        label_map = _argmax_with_background(probabilities, label_names, spec)
    else:
        dtype = label_map_dtype(len(label_names))
        thresholds = np.asarray([spec.threshold_for(n) for n in label_names], dtype=np.float32)
        passing = probabilities >= thresholds.reshape((-1,) + (1,) * (probabilities.ndim - 1))
        scored = np.where(passing, probabilities, -1.0)
        best = np.argmax(scored, axis=0)
        any_pass = passing.any(axis=0)
        label_map = np.where(any_pass, best + 1, 0).astype(dtype)
    if out is None:
        return label_map
    out[...] = label_map
    return out


def label_map_dtype(labels: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type that holds label values 0..``labels``."""
    return np.uint8 if labels < 2**8 else np.uint16 if labels < 2**16 else np.uint32


TIE_TOLERANCE = np.float32(1e-6)


def _argmax_with_background(
    probabilities: np.ndarray, label_names: list[str], spec: PostprocessSpec
) -> np.ndarray:
    """Arg-max over (1 − Σ labels, labels...), one label at a time: no (L+1)-sized copy."""
    best = 1.0 - probabilities.sum(axis=0, dtype=np.float32)  # background
    out = np.zeros(best.shape, dtype=label_map_dtype(len(label_names)))
    for index, name in enumerate(label_names):
        channel = probabilities[index]
        # background rebuilt as 1 - sum carries rounding error: a tie goes to the earlier class,
        # as numpy's (and nnU-Net's) arg-max decides it
        better = channel > best + TIE_TOLERANCE
        if name in spec.label_thresholds:
            better &= channel >= spec.label_thresholds[name]
        out[better] = index + 1
        np.maximum(best, channel, out=best, where=better)
    return out


def fill_holes_per_frame(mask: np.ndarray) -> None:
    """Fill the holes of each (H, W) frame of a (F, H, W) bool mask, in place.

    The same result as ``ndimage.binary_fill_holes`` on every frame (a hole is background that is
    not 4-connected to the image border), computed by one flood fill of the outside of the frame's
    mask bounding box: background outside that box always reaches the border, so only the box
    (with a one-pixel frame of outside) needs filling.
    """
    for index in range(mask.shape[0]):
        frame = mask[index]
        rows = np.flatnonzero(frame.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(frame.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = frame[r0:r1, c0:c1]
        canvas = np.zeros((r1 - r0 + 2, c1 - c0 + 2), np.uint8)
        canvas[1:-1, 1:-1] = box  # 1 = mask, 0 = background, a ring of background around
        cv2.floodFill(canvas, None, (0, 0), 2, flags=4)  # outside-connected background → 2
        box |= canvas[1:-1, 1:-1] == 0  # background the fill did not reach: holes


def _kept(
    sizes: np.ndarray,
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
) -> np.ndarray:
    """Which components (by size, 0-based) the minimum-size and count rules keep."""
    keep = sizes >= spec.min_component_pixels
    if volumetric and voxel_volume_mm3 and spec.min_component_mm3 > 0:
        keep &= sizes * voxel_volume_mm3 >= spec.min_component_mm3
    if not volumetric and pixel_area_mm2 and spec.min_component_mm2 > 0:
        keep &= sizes * pixel_area_mm2 >= spec.min_component_mm2
    limit = 1 if spec.keep_largest else spec.max_components
    if int(keep.sum()) > limit:
        ranked = np.argsort(np.where(keep, sizes, -1), kind="stable")[::-1][:limit]
        keep = np.zeros_like(keep)
        keep[ranked] = True
    return keep


def _clean(
    mask: np.ndarray,
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
) -> tuple[np.ndarray, Components]:
    """:func:`clean_mask` on a bool mask it may overwrite, with the kept components."""
    if spec.fill_holes:
        fill_holes_per_frame(mask)
    box = foreground_box(mask)
    if box is None:
        return mask, Components(np.zeros(mask.shape, np.uint8), 0, volumetric)
    # label only the box around the foreground: positions keep their raster order inside it, so
    # the numbering is the one labelling the whole mask gives
    labels, count = _label(mask[box], volumetric)
    keep = _kept(component_sizes(labels, count), spec, volumetric, pixel_area_mm2, voxel_volume_mm3)
    kept = int(keep.sum())
    # renumber the kept components 1..kept in their labelling order: exactly the numbers
    # ndimage.label gives the cleaned mask (removing whole components leaves the others as
    # they are, and labels are numbered in raster order of each component's first pixel)
    dtype = np.uint8 if kept < 2**8 else np.uint16 if kept < 2**16 else np.uint32
    renumber = np.zeros(count + 1, dtype=dtype)
    renumber[1:][keep] = np.arange(1, kept + 1, dtype=dtype)
    kept_labels = np.zeros(mask.shape, dtype=dtype)
    if kept == count:  # all kept: the numbers stay (a cast copy, no lookup)
        kept_labels[box] = labels
    else:  # the kept labels and the mask without the removed components, in one pass
        renumber_components(labels, renumber, kept_labels[box], mask[box])
    return mask, Components(kept_labels, kept, volumetric)


def clean_mask(
    mask: np.ndarray,
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
) -> np.ndarray:
    """(F, H, W) bool → the same mask after hole filling, minimum-size and keep-largest rules."""
    cleaned, _ = _clean(
        mask.astype(bool, copy=True), spec, volumetric, pixel_area_mm2, voxel_volume_mm3
    )
    return cleaned


def postprocess_components(
    probabilities: np.ndarray,
    label_names: list[str],
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
    exclusive: bool = False,
) -> tuple[np.ndarray, dict[int, Components]]:
    """:func:`postprocess_label_map`, and each label value's components in the label map."""
    raw = threshold_labels(probabilities, label_names, spec, exclusive)
    return clean_label_map(
        raw, len(label_names), spec, volumetric, pixel_area_mm2, voxel_volume_mm3
    )


def clean_label_map(
    raw: np.ndarray,
    labels: int,
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
    components_of: Collection[int] | None = None,
) -> tuple[np.ndarray, dict[int, Components]]:
    """Clean each label of a thresholded label map (``raw``, which it may overwrite).

    Returns the cleaned map and each label value's components, where they are exactly those of
    ``label_map == value``: when no earlier label claimed any of its cleaned pixels (else the
    overlap may split a component, and a caller must label the map itself). Only the values in
    ``components_of`` (all when None) are returned: each holds labels over its value's box (up
    to a volume), and a 104-organ model's anatomy labels never need them.

    A single label's 0/1 map is cleaned in place and returned as the cleaned map: no
    volume-sized comparison, copy or fresh zeroed map (whose first writes page-fault).
    """
    if labels == 1 and raw.dtype == label_map_dtype(1) and int(raw.max(initial=0)) <= 1:
        return raw, _clean_in_place(
            raw,
            spec,
            volumetric,
            pixel_area_mm2,
            voxel_volume_mm3,
            components_of is None or 1 in components_of,
        )
    out = np.zeros(raw.shape, dtype=label_map_dtype(labels))
    found: dict[int, Components] = {}
    # each label is cleaned inside the box of its pixels (one pass finds every box): components,
    # holes and sizes never reach past it, and a 104-organ map is 104 small crops, not 104
    # passes over the whole volume
    # (one label: three ``any`` projections, several times faster than find_objects' pass)
    boxes = [foreground_box(raw)] if labels == 1 else ndimage.find_objects(raw, max_label=labels)
    for value, box in enumerate(boxes, start=1):
        wanted = components_of is None or value in components_of
        if box is None:
            if wanted:
                found[value] = Components(np.zeros((0, 0, 0), np.uint8), 0, volumetric)
            continue
        box = _with_margin(box, raw.shape)
        mask = raw[box] == value
        cleaned, components = _clean(mask, spec, volumetric, pixel_area_mm2, voxel_volume_mm3)
        del mask
        region = out[box]
        if value > 1 and (overlap := cleaned & (region != 0)).any():
            cleaned &= ~overlap  # later labels never overwrite a cleaned earlier one
        elif wanted:  # its labels stay a crop of the label map (see Components)
            found[value] = Components(components.labels, components.count, volumetric, box)
        del components
        if value == 1:  # nothing is written yet: a copy, not a masked assignment
            np.copyto(region, cleaned)
        else:
            region[cleaned] = value  # disjoint from ``out``'s labels by now
    return out, found


def _clean_in_place(
    raw: np.ndarray,
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
    wanted: bool,
) -> dict[int, Components]:
    """:func:`clean_label_map` of a one-label 0/1 uint8 map, in place (its bytes are the bools
    of ``raw == 1``); label 1's components if ``wanted``."""
    box = foreground_box(raw)
    if box is None:
        return {1: Components(np.zeros((0, 0, 0), np.uint8), 0, volumetric)} if wanted else {}
    box = _with_margin(box, raw.shape)
    _, components = _clean(raw[box].view(bool), spec, volumetric, pixel_area_mm2, voxel_volume_mm3)
    if not wanted:
        return {}
    return {1: Components(components.labels, components.count, volumetric, box)}


def _with_margin(box: tuple[slice, ...], shape: tuple[int, ...]) -> Box:
    """``box`` grown by a pixel of rows and columns (within the image): its components' crop
    then holds the background ring a component's outline is traced with, as on the whole map,
    so measuring the crop gives what measuring the whole map gives, to the last bit (the outline
    points keep their coordinates)."""
    frames, rows, cols = box
    return (
        frames,
        slice(max(rows.start - 1, 0), min(rows.stop + 1, shape[1])),
        slice(max(cols.start - 1, 0), min(cols.stop + 1, shape[2])),
    )


def postprocess_label_map(
    probabilities: np.ndarray,
    label_names: list[str],
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
) -> np.ndarray:
    """Threshold, then clean each label; later labels never overwrite a cleaned earlier one."""
    label_map, _ = postprocess_components(
        probabilities, label_names, spec, volumetric, pixel_area_mm2, voxel_volume_mm3
    )
    return label_map
