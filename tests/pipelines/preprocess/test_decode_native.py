"""The numpy reader of native pixel data gives pydicom's pixels, bit for bit, or steps aside."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from pipelines.contract import SourceSeries
from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import decode_series, native_pixels


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _native_test_files() -> list[tuple[Path, Dataset]]:
    """pydicom's test files whose pixel data the numpy reader takes."""
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in get_testdata_files("*"):
            try:
                ds = pydicom.dcmread(name)
                frames = _frames(ds)
            except Exception:  # noqa: BLE001 - non-DICOM and broken files are not the subject
                continue
            if "PixelData" in ds and native_pixels(ds, frames) is not None:
                found.append((Path(name), ds))
    return found


NATIVE = _native_test_files()


def _kind(ds: Dataset) -> tuple[str, int, bool, bool, bool]:
    return (
        str(ds.PhotometricInterpretation),
        int(ds.BitsAllocated),
        int(ds.PixelRepresentation) == 1,
        int(ds.BitsStored) < int(ds.BitsAllocated),
        _frames(ds) > 1,
    )


def test_the_test_files_cover_what_the_numpy_reader_must_get_right() -> None:
    kinds = {_kind(ds) for _, ds in NATIVE}
    assert len(NATIVE) >= 15
    assert any(k[0] == "MONOCHROME1" for k in kinds)
    assert any(k[2] for k in kinds), "signed"
    assert any(k[3] for k in kinds), "Bits Stored < Bits Allocated"
    assert any(k[4] for k in kinds), "multi-frame"
    assert {8, 16, 32} <= {k[1] for k in kinds}
    syntaxes = {str(ds.file_meta.TransferSyntaxUID) for _, ds in NATIVE}
    assert {ImplicitVRLittleEndian, ExplicitVRLittleEndian} <= syntaxes


@pytest.mark.parametrize(("path", "ds"), NATIVE, ids=[p.name for p, _ in NATIVE])
def test_numpy_reader_equals_pydicoms_pixel_array(path: Path, ds: Dataset) -> None:
    ours = native_pixels(ds, _frames(ds))
    assert ours is not None
    theirs = ds.pixel_array
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))


PLAIN = [
    (p, ds)
    for p, ds in NATIVE
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds
]


@pytest.mark.parametrize(("path", "ds"), PLAIN, ids=[p.name for p, _ in PLAIN])
def test_decoded_values_equal_pixel_array_through_pydicoms_modality_lut(
    path: Path, ds: Dataset
) -> None:
    """What decode_series gives on the fast path is pydicom's rescale cast to float32."""
    decoded = decode_series(
        SourceSeries(str(ds.SeriesInstanceUID), "OT", str(ds.SOPClassUID), (path,))
    )
    expected = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    assert decoded.values.dtype == np.float32
    np.testing.assert_array_equal(decoded.values, expected.reshape(decoded.values.shape))


def _written(
    tmp_path: Path,
    pixels: np.ndarray,
    *,
    stored: int,
    signed: bool,
    syntax: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = (1.0, -1024.0),
) -> Path:
    frames, rows, cols = pixels.shape
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.tobytes()
    path = tmp_path / f"{generate_uid()}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize("signed", [False, True])
def test_garbage_in_the_unused_high_bits_is_shifted_out_as_pydicom_does(
    tmp_path: Path, signed: bool
) -> None:
    """12 bits stored in 16 with the top 4 bits set at random (PS3.5 8.1.1 lets them be)."""
    rng = np.random.default_rng(3)
    dtype = np.int16 if signed else np.uint16
    pixels = rng.integers(0, 2**16, (3, 16, 24), dtype=np.uint16).view(dtype)
    path = _written(tmp_path, pixels, stored=12, signed=signed)
    ds = pydicom.dcmread(path)
    ours = native_pixels(ds, 3)
    assert ours is not None
    np.testing.assert_array_equal(ours, ds.pixel_array)
    assert ours.min() >= (-2048 if signed else 0) and ours.max() <= (2047 if signed else 4095)
    decoded = decode_series(SourceSeries(str(ds.SeriesInstanceUID), "OT", "x", (path,)))
    np.testing.assert_array_equal(decoded.values, ds.pixel_array.astype(np.float32) - 1024.0)


def test_monochrome1_multiframe_implicit_vr_without_rescale(tmp_path: Path) -> None:
    pixels = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    path = _written(
        tmp_path,
        pixels,
        stored=8,
        signed=False,
        syntax=ImplicitVRLittleEndian,
        photometric="MONOCHROME1",
        rescale=None,
    )
    decoded = decode_series(SourceSeries("s", "OT", "x", (path,)))
    np.testing.assert_array_equal(decoded.values, pixels.astype(np.float32))
    assert decoded.photometric == "MONOCHROME1" and decoded.frame_count == 2


def test_other_syntaxes_and_short_pixel_data_are_left_to_pydicom(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    ds = pydicom.dcmread(_written(tmp_path, pixels, stored=16, signed=False))
    for syntax in (ExplicitVRBigEndian, RLELossless):
        ds.file_meta.TransferSyntaxUID = syntax
        assert native_pixels(ds, 1) is None
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = ds.PixelData[:-16]
    assert native_pixels(ds, 1) is None  # pydicom's error names what is wrong
    short = tmp_path / "short.dcm"
    pydicom.dcmwrite(short, ds, enforce_file_format=True)
    with pytest.raises(PipelineInputError, match="cannot decode pixel data"):
        decode_series(SourceSeries("s", "OT", "x", (short,)))
