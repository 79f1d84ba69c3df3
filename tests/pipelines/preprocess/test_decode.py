"""Decoding real files: every transfer syntax and photometric interpretation, against pydicom."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut

from pipelines.contract import SourceSeries
from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import decode_series
from pipelines.preprocess.intensity import dicom_linear_window, grey_image
from pipelines.spec import PreprocessingSpec, Window
from tests.conftest import SHARED_DATA

MR_SERIES = SHARED_DATA / "mr-series-ge-adc"


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (install pydicom-data)")
    return Path(path)


def _series(*paths: Path) -> SourceSeries:
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return SourceSeries(
        str(ds.SeriesInstanceUID), str(ds.Modality), str(ds.SOPClassUID), tuple(paths)
    )


class _CardIntensity:
    mode = "percentile"
    center = None
    width = None
    lower_percentile = 0.0
    upper_percentile = 100.0


def _reference(name: str) -> np.ndarray:
    ds = pydicom.dcmread(_testfile(name))
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)


@pytest.mark.parametrize(
    ("encoded", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ],
)
def test_compressed_and_big_endian_decode_to_the_same_values(encoded: str, reference: str) -> None:
    decoded = decode_series(_series(_testfile(encoded)))
    assert decoded.values.shape == (1, *_reference(reference).shape)
    np.testing.assert_array_equal(decoded.values[0], _reference(reference))


def test_ct_values_are_hounsfield_units() -> None:
    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    decoded = decode_series(_series(path))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(decoded.values[0], hu)
    assert decoded.intensity_unit == "HU"
    assert decoded.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))


def test_monochrome1_is_inverted_after_the_file_window() -> None:
    path = _testfile("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    decoded = decode_series(_series(path))
    assert decoded.photometric == "MONOCHROME1"
    assert decoded.pixel_spacing_mm is None  # the file's 0\0 spacing is not used
    shown = grey_image(decoded, _CardIntensity(), PreprocessingSpec(voi="file"), per_frame=True)
    window = dicom_linear_window(decoded.values[0], float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(shown[0], 1.0 - window, atol=1e-6)
    # bright = dense: the highest stored value (most transparent in MONOCHROME1) shows darkest
    raw = ds.pixel_array
    assert shown[0][np.unravel_index(raw.argmax(), raw.shape)] == shown[0].min()


def test_pipeline_window_matches_pydicom_windowing() -> None:
    from pydicom.pixels import apply_windowing

    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.VOILUTFunction = "LINEAR"
    decoded = decode_series(_series(path))
    ours = grey_image(
        decoded,
        _CardIntensity(),
        PreprocessingSpec(voi="pipeline", window=Window(center=40, width=400)),
        True,
    )
    hu = apply_modality_lut(ds.pixel_array, ds)
    theirs = apply_windowing(hu, ds)  # output range: the stored range after rescale
    bits = int(ds.BitsStored)
    low, high = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    )
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    low, high = low * slope + intercept, high * slope + intercept
    np.testing.assert_allclose(ours[0], (theirs - low) / (high - low), atol=1e-4)


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb.dcm",
        "SC_rgb_rle.dcm",
        "SC_ybr_full_uncompressed.dcm",
        "US1_J2KR.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ],
)
def test_colour_sources_become_rgb_in_unit_range(name: str) -> None:
    path = _testfile(name)
    ds = pydicom.dcmread(path)
    decoded = decode_series(_series(path))
    assert decoded.rgb is not None
    np.testing.assert_allclose(decoded.rgb[0], ds.pixel_array / 255.0, atol=1e-6)
    assert decoded.values.shape == decoded.rgb.shape[:3]


def test_palette_colour_goes_through_its_lut() -> None:
    path = _testfile("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    decoded = decode_series(_series(path))
    rgb = apply_color_lut(ds.pixel_array, ds)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    assert decoded.rgb is not None
    np.testing.assert_allclose(decoded.rgb[0], rgb / (2**bits - 1), atol=1e-6)


def test_multiframe_file_gives_one_source_frame_per_frame() -> None:
    path = _testfile("emri_small.dcm")
    decoded = decode_series(_series(path))
    assert decoded.frame_count == 10
    assert [f.frame_number for f in decoded.source_frames] == list(range(1, 11))


def test_undecodable_file_is_a_clear_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(PipelineInputError, match="bad.dcm"):
        decode_series(SourceSeries("1.2", "CT", "1.2.3", (bad,)))


@pytest.mark.skipif(not MR_SERIES.is_dir(), reason=f"shared data not found at {MR_SERIES}")
def test_real_mr_series_stacks_along_the_normal_whatever_the_file_order() -> None:
    files = sorted(MR_SERIES.glob("*.dcm"))
    shuffled = files[:]
    random.Random(1).shuffle(shuffled)
    decoded = decode_series(_series(*shuffled))
    assert decoded.frame_count == len(files) == 20
    assert decoded.orientation == "AXIAL"
    assert decoded.slice_spacing_mm == pytest.approx(3.0, abs=0.01)
    assert decoded.pixel_spacing_mm == pytest.approx((0.7031, 0.7031))
    datasets = [pydicom.dcmread(p) for p in files]
    normal = np.cross(
        np.asarray(datasets[0].ImageOrientationPatient[:3], float),
        np.asarray(datasets[0].ImageOrientationPatient[3:], float),
    )
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    expected_uids = [d.SOPInstanceUID for d in datasets]
    assert [f.sop_instance_uid for f in decoded.source_frames] == expected_uids
    for index, ds in enumerate(datasets):
        np.testing.assert_array_equal(
            decoded.values[index], apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        )


def test_jpeg_lossless_process_14_decodes() -> None:
    path = _testfile("JPEG-LL.dcm")
    decoded = decode_series(_series(path))
    np.testing.assert_array_equal(decoded.values[0], _reference("JPEG-LL.dcm"))


def _enhanced_ct(tmp_path: Path) -> tuple[Path, list[float], np.ndarray]:
    """An Enhanced CT-like multi-frame file: positions and rescale in functional groups, frames
    stored out of spatial order."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2000, (4, 8, 8), dtype=np.uint16)
    z_positions = [10.0, 0.0, 15.0, 5.0]
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 8, 8, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = pydicom.Dataset()
    measures, orient = pydicom.Dataset(), pydicom.Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.8, 0.8], 5.0
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform = pydicom.Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for z in z_positions:
        item, plane = pydicom.Dataset(), pydicom.Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, z]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = stored.tobytes()
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, z_positions, stored


def test_enhanced_multiframe_is_stacked_by_its_functional_groups(tmp_path: Path) -> None:
    path, z_positions, stored = _enhanced_ct(tmp_path)
    decoded = decode_series(_series(path))
    order = np.argsort(z_positions)  # feet-to-head along the normal (0, 0, 1)
    assert [f.frame_number for f in decoded.source_frames] == [int(i) + 1 for i in order]
    np.testing.assert_array_equal(decoded.values, stored[order].astype(np.float32) - 1024)
    assert decoded.pixel_spacing_mm == (0.8, 0.8)
    assert decoded.slice_spacing_mm == pytest.approx(5.0)
    assert decoded.orientation == "AXIAL"


def test_images_of_another_size_are_skipped_with_a_warning_for_2d() -> None:
    small, other = _testfile("MR_small.dcm"), _testfile("CT_small.dcm")
    series = SourceSeries("1.2", "MR", "1.2.3", (small, other, small))
    with pytest.raises(PipelineInputError, match="differ in size"):
        decode_series(series)
    decoded = decode_series(series, allow_subset=True)
    assert decoded.frame_count == 2 and decoded.shape == (64, 64)
    assert "not processed" in decoded.warnings[0]


def test_rescale_fast_path_equals_pydicoms_float64_rescale_cast_to_float32() -> None:
    """The float32 shortcut for slope 1 gives exactly the values of pydicom's float64 rescale."""
    from pipelines.preprocess.decode import _linear

    rng = np.random.default_rng(4)
    arrays = [
        rng.integers(-32768, 32767, (64, 64), dtype=np.int16),
        rng.integers(0, 65535, (64, 64), dtype=np.uint16),
        rng.integers(0, 255, (64, 64), dtype=np.uint8),
        rng.integers(-(2**30), 2**30, (64, 64), dtype=np.int32),  # beyond float32's integers
    ]
    rescales = [(1.0, -1024.0), (1.0, 0.0), (1.0, -1024.5), (1.0, 0.1), (2.5, -3.0), (0.00123, 7.0)]
    for raw in arrays:
        for slope, intercept in rescales:
            expected = (raw.astype(np.float64) * slope + intercept).astype(np.float32)
            out = _linear(raw, slope, intercept)
            assert out.dtype == np.float32
            assert np.array_equal(out, expected), (raw.dtype, slope, intercept)
