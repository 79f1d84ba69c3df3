"""Phantoms have what they claim: lesions where the mask and boxes say, none in normal cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.training.dicom_export import (
    CT_IMAGE_STORAGE,
    DX_IMAGE_STORAGE,
    read_volume,
    write_series,
)
from models.training.phantoms import make_2d_phantom, make_3d_phantom


@pytest.mark.parametrize("seed", range(12))
def test_2d_phantom_truth_is_consistent(seed: int) -> None:
    phantom = make_2d_phantom(np.random.default_rng(seed), size=128)
    assert phantom.image.dtype == np.float32 and phantom.image.shape == (128, 128)
    assert phantom.image.min() >= 0.0 and phantom.image.max() <= 1.0
    assert phantom.label == int(bool(phantom.boxes)) == int(phantom.mask.any())
    assert len(phantom.boxes) == len(phantom.lesions) <= 3
    covered = np.zeros_like(phantom.mask, bool)
    for x0, y0, x1, y1, label in phantom.boxes:
        assert label == 1 and 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        assert phantom.mask[y0:y1, x0:x1].any()
        covered[y0:y1, x0:x1] = True
    assert not (phantom.mask.astype(bool) & ~covered).any()  # every lesion pixel is in a box


def test_lesions_are_visible_in_the_image() -> None:
    rng = np.random.default_rng(3)
    diffs = []
    for _ in range(10):
        phantom = make_2d_phantom(rng, size=128, lesion_count=2, noise=0.0)
        ring = phantom.mask == 0
        diffs.append(phantom.image[phantom.mask == 1].mean() - phantom.image[ring].mean())
    assert np.mean(diffs) > 0  # lesions are brighter than their lung background on average


def test_variety_sizes_shapes_counts_and_normals() -> None:
    rng = np.random.default_rng(7)
    phantoms = [make_2d_phantom(rng, size=128) for _ in range(60)]
    counts = {len(p.boxes) for p in phantoms}
    assert {0, 1, 2, 3} <= counts
    shapes = {lesion.shape for p in phantoms for lesion in p.lesions}
    assert shapes == {"ellipse", "lobulated", "ring"}
    radii = [lesion.radius for p in phantoms for lesion in p.lesions]
    assert max(radii) > 2 * min(radii)
    contrasts = [lesion.contrast for p in phantoms for lesion in p.lesions]
    assert max(contrasts) > 2 * min(contrasts)


def test_same_seed_same_phantom() -> None:
    a = make_2d_phantom(np.random.default_rng(11))
    b = make_2d_phantom(np.random.default_rng(11))
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes


def test_3d_phantom_is_ct_like_with_lesions_in_boxes() -> None:
    phantom = make_3d_phantom(np.random.default_rng(5), shape=(24, 64, 64), lesion_count=2)
    assert phantom.volume.shape == phantom.mask.shape == (24, 64, 64)
    assert phantom.volume.min() < -900 and phantom.volume.max() > 500  # air and bone in HU
    assert phantom.label == 1 and len(phantom.boxes) == len(phantom.lesions) >= 1
    for z0, y0, x0, z1, y1, x1, _ in phantom.boxes:
        assert phantom.mask[z0:z1, y0:y1, x0:x1].any()
    normal = make_3d_phantom(np.random.default_rng(5), shape=(24, 64, 64), lesion_count=0)
    assert normal.label == 0 and not normal.mask.any()


def test_2d_phantom_as_dx_dicom(tmp_path: Path) -> None:
    phantom = make_2d_phantom(np.random.default_rng(1), size=64)
    (path,) = write_series(phantom, tmp_path, study_uid="1.2.3.4")
    ds = pydicom.dcmread(path)
    assert (
        ds.SOPClassUID == DX_IMAGE_STORAGE
        and ds.Modality == "DX"
        and ds.StudyInstanceUID == "1.2.3.4"
    )
    assert np.allclose(ds.pixel_array / 4095, phantom.image, atol=1e-3)


def test_3d_phantom_as_ct_series_round_trips_hu(tmp_path: Path) -> None:
    phantom = make_3d_phantom(np.random.default_rng(2), shape=(8, 32, 32))
    paths = write_series(phantom, tmp_path)
    assert len(paths) == 8
    first = pydicom.dcmread(paths[0])
    assert first.SOPClassUID == CT_IMAGE_STORAGE and first.Modality == "CT"
    assert {pydicom.dcmread(p).SeriesInstanceUID for p in paths} == {first.SeriesInstanceUID}
    volume = read_volume(paths)
    assert np.abs(volume - np.clip(np.round(phantom.volume), -1024, 3071)).max() == 0
