"""The result's arrays on disk: deflated where that pays, stored where it does not (a model's
float probabilities), and read back exactly either way."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from node.results.store import ARRAYS_NPZ, load_result, save_result, write_npz
from tests.node.results.factories import make_result, mr_series


def _entries(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: info.compress_type for info in archive.infolist()}


def test_noise_is_stored_and_maps_are_deflated_both_read_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    noise = rng.random((4, 300, 300), dtype=np.float32)  # larger than the deflate sample
    labels = np.zeros((4, 300, 300), np.uint8)
    labels[1:3, 100:140, 50:90] = 2
    flags = labels > 0  # a bool array and a non-contiguous one go through the same writer
    path = tmp_path / "a.npz"
    write_npz(path, {"noise": noise, "labels": labels, "flags": flags, "view": noise[:, ::2]})
    assert _entries(path) == {
        "noise.npy": zipfile.ZIP_STORED,
        "labels.npy": zipfile.ZIP_DEFLATED,
        "flags.npy": zipfile.ZIP_DEFLATED,
        "view.npy": zipfile.ZIP_STORED,
    }
    assert path.stat().st_size < noise.nbytes * 1.6  # the maps take almost nothing
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["noise"], noise)
        np.testing.assert_array_equal(saved["labels"], labels)
        np.testing.assert_array_equal(saved["flags"], flags)
        np.testing.assert_array_equal(saved["view"], noise[:, ::2])
    assert not list(tmp_path.glob("*.tmp*"))


def test_saved_result_keeps_noisy_probabilities_uncompressed_and_exact(tmp_path: Path) -> None:
    result = make_result(mr_series())
    seg = result.segmentation
    assert seg is not None and seg.probabilities is not None
    probabilities = np.random.default_rng(5).random(seg.probabilities.shape, dtype=np.float32)
    save_result(replace(result, segmentation=replace(seg, probabilities=probabilities)), tmp_path)
    entries = _entries(tmp_path / ARRAYS_NPZ)
    assert entries["probabilities.npy"] == zipfile.ZIP_STORED
    assert entries["label_map.npy"] == zipfile.ZIP_DEFLATED
    reloaded = load_result(tmp_path).segmentation
    assert reloaded is not None
    np.testing.assert_array_equal(reloaded.probabilities, probabilities)
    np.testing.assert_array_equal(reloaded.label_map, seg.label_map)
