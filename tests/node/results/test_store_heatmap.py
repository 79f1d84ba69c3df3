"""The compact heat map saved beside a result: the highest label probability per pixel as uint8,
what the console's heat map shows (and derived from arrays.npz for older results)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from node.results.store import HEATMAP_NPZ, heatmap_of, load_heatmap, load_result, save_result
from tests.node.results.factories import make_result, mr_series


def test_heatmap_is_saved_and_is_the_highest_label_probability(tmp_path: Path) -> None:
    result = make_result(mr_series())
    seg = result.segmentation
    assert seg is not None and seg.probabilities is not None
    rng = np.random.default_rng(7)
    probabilities = rng.random(seg.probabilities.shape, dtype=np.float32)
    result = replace(result, segmentation=replace(seg, probabilities=probabilities))
    save_result(result, tmp_path)
    assert (tmp_path / HEATMAP_NPZ).is_file()
    heat = load_heatmap(tmp_path)
    assert heat is not None and heat.dtype == np.uint8
    assert heat.shape == probabilities.shape[1:]
    np.testing.assert_array_equal(heat, np.rint(probabilities.max(axis=0) * 255).astype(np.uint8))
    # the float maps are still what the result reloads with
    reloaded = load_result(tmp_path).segmentation
    assert reloaded is not None and np.array_equal(reloaded.probabilities, probabilities)
    # an older result without heatmap.npz: the same map, derived
    (tmp_path / HEATMAP_NPZ).unlink()
    np.testing.assert_array_equal(load_heatmap(tmp_path), heat)


def test_no_probabilities_no_heatmap_and_no_result_is_an_error(tmp_path: Path) -> None:
    result = make_result(mr_series())
    assert result.segmentation is not None
    plain = replace(result, segmentation=replace(result.segmentation, probabilities=None))
    save_result(plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / HEATMAP_NPZ).exists()
    assert load_heatmap(tmp_path / "plain") is None
    save_result(replace(result, segmentation=None), tmp_path / "classification")
    assert load_heatmap(tmp_path / "classification") is None
    with pytest.raises(FileNotFoundError):
        load_heatmap(tmp_path / "missing")


def test_heatmap_of_clips_to_the_unit_range() -> None:
    probabilities = np.array([[[[-0.2, 0.5, 1.4]]], [[[0.1, 0.25, 0.0]]]], dtype=np.float32)
    np.testing.assert_array_equal(heatmap_of(probabilities), [[[26, 128, 255]]])
