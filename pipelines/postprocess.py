"""Post-processing of the ensemble probabilities: threshold, small components, holes, largest.

Components are 3D (26-connected) for volumes and per image (8-connected within a frame) for 2D
inputs, so two radiographs of one series never merge into one "lesion".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.spec import PostprocessSpec


def connectivity(volumetric: bool) -> np.ndarray:
    """The labelling structure: full 3x3x3 for volumes, in-plane 3x3 only for stacks of 2D images."""
    structure = np.ones((3, 3, 3), dtype=bool)
    if not volumetric:
        structure[0] = False
        structure[2] = False
    return structure


def threshold_labels(
    probabilities: np.ndarray, label_names: list[str], spec: PostprocessSpec
) -> np.ndarray:
    """(L, F, H, W) label probabilities (no background) → (F, H, W) uint8 label map.

    A pixel gets the most probable label among those reaching their own threshold, else 0.
    """
    if probabilities.shape[0] != len(label_names):
        raise ValueError(
            f"expected {len(label_names)} label channels, got {probabilities.shape[0]}"
        )
    if len(label_names) == 1:  # the common case, without the argmax pass
        return (probabilities[0] >= spec.threshold_for(label_names[0])).astype(np.uint8)
    thresholds = np.asarray([spec.threshold_for(n) for n in label_names], dtype=np.float32)
    passing = probabilities >= thresholds.reshape((-1,) + (1,) * (probabilities.ndim - 1))
    scored = np.where(passing, probabilities, -1.0)
    best = np.argmax(scored, axis=0)
    any_pass = passing.any(axis=0)
    return np.where(any_pass, best + 1, 0).astype(np.uint8)


def clean_mask(
    mask: np.ndarray,
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
) -> np.ndarray:
    """(F, H, W) bool → the same mask after hole filling, minimum-size and keep-largest rules."""
    mask = mask.astype(bool, copy=True)
    if spec.fill_holes:
        for index in range(mask.shape[0]):
            if mask[index].any():
                mask[index] = ndimage.binary_fill_holes(mask[index])
    labels, count = ndimage.label(mask, structure=connectivity(volumetric))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
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
    lookup = np.concatenate([[False], keep])
    return lookup[labels]


def postprocess_label_map(
    probabilities: np.ndarray,
    label_names: list[str],
    spec: PostprocessSpec,
    volumetric: bool,
    pixel_area_mm2: float | None,
    voxel_volume_mm3: float | None,
) -> np.ndarray:
    """Threshold, then clean each label; later labels never overwrite a cleaned earlier one."""
    raw = threshold_labels(probabilities, label_names, spec)
    out = np.zeros_like(raw)
    for value in range(1, len(label_names) + 1):
        cleaned = clean_mask(raw == value, spec, volumetric, pixel_area_mm2, voxel_volume_mm3)
        out[cleaned & (out == 0)] = value
    return out
