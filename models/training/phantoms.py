"""Procedural phantoms: radiograph-like 2D images and CT-like 3D volumes with known lesions.

They are the demo models' training and test data and the pipelines' test inputs, so each phantom
carries its truth: a label map (0 background, 1 lesion), one box per lesion and a study-level class
(0 normal, 1 abnormal). Lesions vary in size, contrast, shape (ellipse, lobulated, ring-enhancing)
and count; a share of phantoms has none. Everything derives from the ``numpy.random.Generator``
passed in, so a seed reproduces a dataset exactly.

3D phantoms have a physical scale: the anatomy fills a fixed field of view and lesion sizes are in
millimetres, so the same patient at any matrix size has the same lesions in mm. A 3D model trained at
one voxel spacing then meets the same anatomy after the node resamples any phantom series to that
spacing (the card's ``pixdim``). A phantom's (z, y, x) array axes run towards the patient's inferior,
posterior and left (:data:`PHANTOM_AXCODES`, MONAI's axcodes), the way
:mod:`models.training.dicom_export` writes its slices head to foot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int, int]  # x0, y0, x1, y1 (exclusive), label
SHAPES = ("ellipse", "lobulated", "ring")
PHANTOM_AXCODES = "IPL"  # where a 3D phantom's (z, y, x) axes point: what its cards declare


@dataclass(frozen=True)
class Lesion:
    center: tuple[float, ...]  # (y, x) or (z, y, x) in pixels/voxels
    radius: float  # mean radius: 2D in pixels, 3D in mm
    contrast: float  # added intensity (2D: fraction of range; 3D: HU)
    shape: str


@dataclass(frozen=True)
class Phantom2D:
    image: np.ndarray  # float32 (H, W) in [0, 1], radiograph-like (bright bone, dark lungs)
    mask: np.ndarray  # uint8 (H, W) label map
    boxes: list[Box]
    label: int  # 0 normal, 1 abnormal
    lesions: list[Lesion] = field(default_factory=list)
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class Phantom3D:
    volume: np.ndarray  # float32 (D, H, W) in HU
    mask: np.ndarray  # uint8 (D, H, W) label map
    label: int
    lesions: list[Lesion] = field(default_factory=list)
    spacing_mm: tuple[float, float, float] = (2.5, 1.0, 1.0)  # (z, y, x): field of view / shape
    boxes: list[tuple[int, int, int, int, int, int, int]] = field(default_factory=list)
    # z0, y0, x0, z1, y1, x1 (exclusive), label


def _lesion_profile(
    grids: tuple[np.ndarray, ...],
    lesion: Lesion,
    rng: np.random.Generator,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Soft lesion intensity profile in [0, 1] (1 inside), shaped per ``lesion.shape``.

    ``spacing`` (per axis) turns voxel offsets into the radius' unit (mm for 3D phantoms).
    """
    scale = spacing or (1.0,) * len(grids)
    offsets = [(g - c) * s for g, c, s in zip(grids, lesion.center, scale, strict=True)]
    axes = rng.uniform(0.7, 1.3, size=len(grids))
    dist = np.sqrt(sum((o / a) ** 2 for o, a in zip(offsets, axes, strict=True)))
    radius: np.ndarray | float = lesion.radius
    if lesion.shape in ("lobulated", "ring"):
        angle = np.arctan2(offsets[-2], offsets[-1])
        lobes = int(rng.integers(3, 7))
        phase = rng.uniform(0, 2 * np.pi)
        amp = 0.25 if lesion.shape == "lobulated" else 0.08
        radius = lesion.radius * (1 + amp * np.sin(lobes * angle + phase))
    edge = max(lesion.radius * 0.15, 0.6)
    profile = 1.0 / (1.0 + np.exp((dist - radius) / edge))
    if lesion.shape == "ring":  # rim-enhancing: bright rim, half-bright centre
        core = 1.0 / (1.0 + np.exp((dist - 0.6 * np.asarray(radius)) / edge))
        profile = profile - 0.5 * core
    return profile.astype(np.float32)


def _inside(profile: np.ndarray, shape: str) -> np.ndarray:
    # the ring's centre still belongs to the lesion: threshold the outer envelope
    return profile > (0.25 if shape == "ring" else 0.5)


def _box_2d(region: np.ndarray, label: int) -> Box | None:
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, label)


def _radiograph_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A chest-radiograph-like background and the lung-field mask where lesions may sit."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx = 0.5 + rng.uniform(-0.04, 0.04)
    body = ((xx - cx) / 0.46) ** 2 + ((yy - 0.55) / 0.52) ** 2 < 1
    image = np.where(body, 0.45, 0.05).astype(np.float32)
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lx = cx + side * rng.uniform(0.17, 0.21)
        lungs |= ((xx - lx) / rng.uniform(0.13, 0.16)) ** 2 + (
            (yy - 0.5) / rng.uniform(0.28, 0.33)
        ) ** 2 < 1
    image[lungs] = 0.2
    spine = np.abs(xx - cx) < 0.045
    image[spine & body] = 0.75
    for k in range(int(rng.integers(6, 10))):  # ribs: bright arcs over the lungs
        y0 = 0.22 + k * 0.075 + rng.uniform(-0.01, 0.01)
        rib = np.abs(yy - (y0 + 0.08 * (xx - cx) ** 2 * 4)) < 0.008 + rng.uniform(0, 0.004)
        image[rib & body] += 0.12
    image = ndimage.gaussian_filter(image, sigma=size / 128)
    low = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)).astype(np.float32), sigma=size / 8)
    image += 0.04 * low / (np.abs(low).max() + 1e-6)
    return image, lungs


def make_2d_phantom(
    rng: np.random.Generator,
    size: int = 256,
    lesion_count: int | None = None,
    p_normal: float = 0.4,
    noise: float | None = None,
) -> Phantom2D:
    """A radiograph-like image with 0..3 lesions in the lung fields (``lesion_count`` forces it)."""
    image, lungs = _radiograph_background(rng, size)
    count = (
        lesion_count
        if lesion_count is not None
        else (0 if rng.random() < p_normal else int(rng.integers(1, 4)))
    )
    grids = tuple(np.mgrid[0:size, 0:size].astype(np.float32))
    mask = np.zeros((size, size), np.uint8)
    lesions: list[Lesion] = []
    boxes: list[Box] = []
    candidates = np.argwhere(ndimage.binary_erosion(lungs, iterations=max(1, size // 32)))
    attempts = 0
    while len(lesions) < count and attempts < 50 and len(candidates):
        attempts += 1
        cy, cx = candidates[int(rng.integers(len(candidates)))]
        radius = float(rng.uniform(0.025, 0.08) * size)
        if mask[
            max(0, int(cy - radius * 1.5)) : int(cy + radius * 1.5),
            max(0, int(cx - radius * 1.5)) : int(cx + radius * 1.5),
        ].any():
            continue  # keep lesions apart so each box is one lesion
        lesion = Lesion(
            (float(cy), float(cx)), radius, float(rng.uniform(0.12, 0.35)), str(rng.choice(SHAPES))
        )
        profile = _lesion_profile(grids, lesion, rng)
        image += lesion.contrast * profile
        region = _inside(profile, lesion.shape)
        box = _box_2d(region, 1)
        if box is None:
            continue
        mask[region] = 1
        boxes.append(box)
        lesions.append(lesion)
    sigma = noise if noise is not None else float(rng.uniform(0.01, 0.035))
    image += rng.normal(0, sigma, image.shape).astype(np.float32)
    image = np.clip(image, 0, 1).astype(np.float32)
    return Phantom2D(image, mask, boxes, int(bool(lesions)), lesions)


FIELD_OF_VIEW_3D_MM = (160.0, 320.0, 320.0)  # (z, y, x): an abdomen, whatever the matrix
LESION_RADIUS_3D_MM = (10.0, 25.0)


def make_3d_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (64, 128, 128),
    lesion_count: int | None = None,
    p_normal: float = 0.3,
) -> Phantom3D:
    """A CT-like abdomen volume in HU with 0..3 hypo-/hyperdense lesions in a liver-like organ.

    The volume spans :data:`FIELD_OF_VIEW_3D_MM` (spacing = field of view / ``shape``) and lesion
    radii are 10–25 mm, so lesion size in mm does not depend on the matrix size.
    """
    d, h, w = shape
    spacing = tuple(f / n for f, n in zip(FIELD_OF_VIEW_3D_MM, shape, strict=True))
    zz, yy, xx = (g.astype(np.float32) for g in np.mgrid[0:d, 0:h, 0:w])
    zn, yn, xn = zz / d, yy / h, xx / w
    vol = np.full(shape, -1000.0, np.float32)
    body = ((xn - 0.5) / 0.44) ** 2 + ((yn - 0.5) / 0.36) ** 2 < 1
    fat = body & ~(((xn - 0.5) / 0.40) ** 2 + ((yn - 0.5) / 0.32) ** 2 < 1)
    vol[body] = 40.0
    vol[fat] = -100.0
    organ = ((xn - 0.38) / 0.2) ** 2 + ((yn - 0.47) / 0.17) ** 2 + ((zn - 0.5) / 0.42) ** 2 < 1
    vol[organ] = float(rng.uniform(50, 70))
    spine = ((xn - 0.5) / 0.05) ** 2 + ((yn - 0.75) / 0.05) ** 2 < 1
    vol[spine] = 700.0
    kidney = ((xn - 0.68) / 0.06) ** 2 + ((yn - 0.6) / 0.08) ** 2 + ((zn - 0.5) / 0.25) ** 2 < 1
    vol[kidney] = 150.0  # a bright decoy that is not a lesion
    count = (
        lesion_count
        if lesion_count is not None
        else (0 if rng.random() < p_normal else int(rng.integers(1, 4)))
    )
    mask = np.zeros(shape, np.uint8)
    lesions: list[Lesion] = []
    boxes: list[tuple[int, int, int, int, int, int, int]] = []
    candidates = np.argwhere(ndimage.binary_erosion(organ, iterations=3))
    attempts = 0
    while len(lesions) < count and attempts < 50 and len(candidates):
        attempts += 1
        c = candidates[int(rng.integers(len(candidates)))]
        radius = float(rng.uniform(*LESION_RADIUS_3D_MM))
        reach = [radius * 1.6 / s for s in spacing]  # keep lesions apart (in voxels per axis)
        if mask[
            tuple(slice(max(0, int(v - r)), int(v + r) + 1) for v, r in zip(c, reach, strict=True))
        ].any():
            continue
        sign = -1.0 if rng.random() < 0.6 else 1.0
        lesion = Lesion(
            tuple(float(v) for v in c),
            radius,
            sign * float(rng.uniform(30, 90)),
            str(rng.choice(SHAPES)),
        )
        profile = _lesion_profile((zz, yy, xx), lesion, rng, spacing)
        vol += lesion.contrast * profile * organ
        region = _inside(profile, lesion.shape) & organ
        idx = np.argwhere(region)
        if idx.size == 0:
            continue
        mask[region] = 1
        lesions.append(lesion)
        lo_i, hi_i = idx.min(0), idx.max(0) + 1
        boxes.append((*(int(v) for v in lo_i), *(int(v) for v in hi_i), 1))  # type: ignore[arg-type]
    vol = ndimage.gaussian_filter(vol, sigma=0.7)
    vol += rng.normal(0, float(rng.uniform(8, 18)), shape).astype(np.float32)
    return Phantom3D(
        vol.astype(np.float32),
        mask,
        int(bool(lesions)),
        lesions,
        spacing_mm=spacing,  # type: ignore[arg-type]
        boxes=boxes,
    )
