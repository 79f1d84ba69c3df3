"""The one frame → display-pixels function against pydicom's own LUT functions.

Files from pydicom's test data (pydicom-data): a VOI LUT Sequence (vlut_04), a CT with rescale
and several windows, an enhanced CT whose rescale and windows live in functional groups.
"""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pipelines.preprocess.display import (
    WINDOW_PRESETS,
    DisplayError,
    Window,
    display_frame,
    display_frame_windowed,
    parse_window,
)
from pipelines.preprocess.frame_luts import frame_lut_view


def _read(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0, 1) * 255.0).astype(np.uint8)


def _window_range(ds: Dataset, slope: float, intercept: float) -> tuple[float, float]:
    """PS3.3 C.11.2.1.2: a window maps onto the range of the modality output."""
    bits = int(ds.BitsStored)
    low, high = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    )
    return low * slope + intercept, high * slope + intercept


def test_voi_lut_sequence_gives_pydicoms_pixels() -> None:
    ds = _read("vlut_04.dcm")
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) / float(2**bits - 1)
    shown = display_frame(ds)
    assert shown.dtype == np.uint8 and shown.shape == ds.pixel_array.shape
    np.testing.assert_array_equal(shown, _to_uint8(expected))
    assert len(np.unique(shown)) > 50  # a real image, not a saturated one


def test_first_of_several_windows_after_rescale_gives_pydicoms_pixels() -> None:
    ds = _read("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]
    hu = apply_modality_lut(ds.pixel_array, ds)
    low, high = _window_range(ds, float(ds.RescaleSlope), float(ds.RescaleIntercept))
    expected = (apply_voi_lut(hu, copy.deepcopy(ds), index=0) - low) / (high - low)
    np.testing.assert_array_equal(display_frame(ds), _to_uint8(expected))


def _enhanced_ct_with_per_frame_windows() -> tuple[Dataset, list[tuple[float, float]]]:
    """eCT_Supplemental (rescale and window in the shared groups), given a window per frame."""
    ds = _read("eCT_Supplemental.dcm")
    windows = [(49.0, 102.0), (300.0, 1500.0)]
    for item, (center, width) in zip(ds.PerFrameFunctionalGroupsSequence, windows, strict=True):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item.FrameVOILUTSequence = [voi]
    return ds, windows


def test_enhanced_multiframe_uses_each_frames_functional_groups() -> None:
    ds, windows = _enhanced_ct_with_per_frame_windows()
    shared = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    slope, intercept = float(shared.RescaleSlope), float(shared.RescaleIntercept)
    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds  # only in the groups
    for index, (center, width) in enumerate(windows):
        view = frame_lut_view(ds, index)
        assert (float(view.WindowCenter), float(view.WindowWidth)) == (center, width)
        assert float(view.RescaleIntercept) == intercept
        # the same frame as a plain (non-enhanced) dataset, through pydicom's functions
        flat = Dataset()
        flat.PhotometricInterpretation = "MONOCHROME2"
        flat.BitsStored, flat.PixelRepresentation = ds.BitsStored, ds.PixelRepresentation
        flat.RescaleSlope, flat.RescaleIntercept = slope, intercept
        flat.WindowCenter, flat.WindowWidth = center, width
        values = apply_modality_lut(ds.pixel_array[index], flat)
        low, high = _window_range(ds, slope, intercept)
        expected = (apply_voi_lut(values, flat) - low) / (high - low)
        np.testing.assert_array_equal(display_frame(ds, index), _to_uint8(expected))
    assert not np.array_equal(display_frame(ds, 0), display_frame(ds, 1))


def test_monochrome1_is_inverted_and_no_voi_is_auto_windowed() -> None:
    ds = _read("liver_1frame.dcm")
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    plain = display_frame(ds)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    low, high = np.percentile(values, (0.5, 99.5))
    np.testing.assert_array_equal(plain, _to_uint8((values - low) / (high - low)))
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(display_frame(ds), 255 - plain)


def test_colour_is_rgb_once_converted_and_bad_frames_are_refused() -> None:
    ybr = _read("SC_ybr_full_uncompressed.dcm")
    np.testing.assert_array_equal(display_frame(ybr), ybr.pixel_array)  # pydicom converted YBR
    palette = _read("examples_palette.dcm")
    assert display_frame(palette).shape == (*palette.pixel_array.shape, 3)
    with pytest.raises(DisplayError, match="out of range"):
        display_frame(ybr, 1)
    header_only = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    with pytest.raises(DisplayError, match="no pixel data"):
        display_frame(header_only)


def test_a_window_pydicom_refuses_falls_back_to_the_auto_window() -> None:
    ds = _read("CT_small.dcm")
    auto = display_frame(ds)
    ds.WindowCenter, ds.WindowWidth = 40, 0  # LINEAR needs a width of at least 1
    np.testing.assert_array_equal(display_frame(ds), auto)


# -- the reviewer's window (the console's ``window`` parameter) ----------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "file"),
        ("file", "file"),
        ("AUTO", "auto"),
        ("lung", WINDOW_PRESETS["lung"]),
        (" soft ", WINDOW_PRESETS["soft"]),
        ("bone", WINDOW_PRESETS["bone"]),
        ("-600,1500", Window(-600.0, 1500.0)),
        ("40.5, 400", Window(40.5, 400.0)),
    ],
)
def test_window_parameter_accepts_presets_and_center_width(text: str, expected: object) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "brain",
        "40",
        "40,0",
        "40,0.5",
        "40,-400",
        "nan,400",
        "1e3,400",
        "40,400,1",
        "40;400",
        "99999999,400",
        "0,99999999",
        "<script>",
    ],
)
def test_window_parameter_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="window must be"):
        parse_window(text)


def test_a_chosen_window_is_pydicoms_linear_window_after_rescale() -> None:
    ds = _read("CT_small.dcm")
    window = Window(40.0, 400.0)
    shown, applied = display_frame_windowed(ds, 0, window)
    assert applied == window
    view = copy.deepcopy(ds)
    view.WindowCenter, view.WindowWidth = 40.0, 400.0
    if "VOILUTFunction" in view:
        del view.VOILUTFunction  # linear, whatever the file says
    hu = apply_modality_lut(ds.pixel_array, ds)
    low, high = _window_range(ds, float(ds.RescaleSlope), float(ds.RescaleIntercept))
    expected = (apply_voi_lut(hu, view).astype(np.float64) - low) / (high - low)
    assert np.array_equal(shown, _to_uint8(expected))
    # a different window gives other pixels; the file's window is what display_frame shows
    assert not np.array_equal(shown, display_frame_windowed(ds, 0, WINDOW_PRESETS["bone"])[0])
    ds.WindowCenter, ds.WindowWidth = [60, 300], [500, 1500]
    file_shown, file_window = display_frame_windowed(ds, 0)
    assert np.array_equal(file_shown, display_frame(ds, 0))
    assert file_window == Window(60.0, 500.0)  # the first of the file's windows


def test_auto_window_reports_the_percentiles_it_used() -> None:
    ds = _read("CT_small.dcm")
    shown, applied = display_frame_windowed(ds, 0, "auto")
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    low, high = np.percentile(hu, (0.5, 99.5))
    assert applied == Window((low + high) / 2, high - low)
    assert shown.min() == 0 and shown.max() == 255
    # the reported window, asked for explicitly, shows (almost) the same pixels
    again, _ = display_frame_windowed(ds, 0, applied)
    assert np.abs(again.astype(int) - shown.astype(int)).max() <= 2


def test_colour_frames_ignore_the_window() -> None:
    ybr = _read("SC_ybr_full_uncompressed.dcm")
    shown, applied = display_frame_windowed(ybr, 0, WINDOW_PRESETS["lung"])
    assert applied is None and np.array_equal(shown, display_frame(ybr, 0))


def test_a_voi_lut_reports_no_window_to_drag_from() -> None:
    ds = _read("vlut_04.dcm")
    shown, applied = display_frame_windowed(ds)
    assert applied is None and np.array_equal(shown, display_frame(ds))
    # a chosen window replaces the LUT
    chosen, applied = display_frame_windowed(ds, 0, Window(2000.0, 1000.0))
    assert applied == Window(2000.0, 1000.0) and not np.array_equal(chosen, shown)
