"""Plain images read without pydicom decode exactly as through pydicom, or are left to pydicom.

The reference is decode's pydicom path (``_frames_of``), kept for every other file: each frame
the plain reader gives must equal it field for field (stored values and their dtype, rescale,
window, UIDs, numbers, position and orientation), and a decoded series must be the same whether
the plain reader is used or not.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from pipelines.contract import SourceSeries
from pipelines.errors import PipelineInputError
from pipelines.preprocess import decode
from pipelines.preprocess.plain_image import PlainImage, read_plain_image
from tests.conftest import SHARED_DATA
from tests.pipelines.ct_series import write_ct_series

MR_SERIES = sorted((SHARED_DATA / "mr-series-ge-adc").glob("*.dcm"))


def _test_files() -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom-data download notices
        return [Path(p) for p in sorted(get_testdata_files("*"))]


TEST_FILES = _test_files()


def _full(path: Path) -> list[Any] | Exception:
    """The frames through pydicom (the reference), or the error it raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode._frames_of(path)[1]
    except Exception as exc:  # noqa: BLE001 - the reference may refuse a broken file
        return exc


def _assert_same(a: Any, b: Any) -> None:
    """Dataclasses (frames, series) equal field by field; arrays by dtype and value."""
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), field.name
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert x == y, field.name


def _plain_or_same(path: Path) -> bool:
    """Whether the plain reader answered for ``path``; when it did, it equals pydicom's path."""
    plain = decode._plain_frame(path)
    if plain is None:
        return False
    full = _full(path)
    assert not isinstance(full, Exception), f"pydicom refuses {path.name}: {full}"
    assert len(full) == 1
    assert plain.raw is None and plain.plain is not None  # the pixels are read when stacked
    _assert_same(dataclasses.replace(plain, raw=plain.stored(), plain=None), full[0])
    return True


def test_test_files_are_read_as_pydicom_reads_them_or_left_to_it() -> None:
    answered = {path.name for path in TEST_FILES + MR_SERIES if _plain_or_same(path)}
    # explicit and implicit VR, CT and MR, private tags, sequences, a real GE series
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"} <= answered
    assert {p.name for p in MR_SERIES} <= answered
    assert len(answered) >= 30
    # compressed, big endian, deflated, multi-frame, colour, palette, LUT sequences: pydicom
    left = {
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "JPEG2000.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "emri_small.dcm",
        "SC_rgb.dcm",
        "OBXXXX1A.dcm",
        "mlut_18.dcm",
        "vlut_04.dcm",
        "SC_ybr_full_uncompressed.dcm",
    }
    assert left & answered == set()
    assert left <= {p.name for p in TEST_FILES}


def _series_decoded(
    series: SourceSeries, monkeypatch: pytest.MonkeyPatch, plain: bool
) -> decode.DecodedSeries:
    with monkeypatch.context() as patch:
        if not plain:
            patch.setattr(decode, "read_plain_image", lambda path: None)
        return decode.decode_series(series)


@pytest.mark.parametrize("kind", ["real GE MR", "CT, coronal, files in reverse"])
def test_a_series_decodes_the_same_with_the_plain_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "real GE MR":
        ds = pydicom.dcmread(MR_SERIES[0], stop_before_pixels=True)
        series = SourceSeries(
            str(ds.SeriesInstanceUID), "MR", str(ds.SOPClassUID), tuple(MR_SERIES)
        )
    else:
        series = write_ct_series(tmp_path / "ct", "coronal", reverse_files=True)
    answered: list[Path] = []

    def counted(path: Path) -> PlainImage | None:
        image = read_plain_image(path)
        if image is not None:
            answered.append(path)
        return image

    with monkeypatch.context() as patch:
        patch.setattr(decode, "read_plain_image", counted)
        fast = decode.decode_series(series)
    assert answered == list(series.files[1:])  # the first file is read by pydicom
    _assert_same(fast, _series_decoded(series, monkeypatch, plain=False))


def _ct_slice(**changes: Any) -> Dataset:
    """A plain 12-bit CT slice with garbage in the unused high bits (a real scanner's)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", "3", "17"
    ds.ImagePositionPatient = ["-120.5", "-99.75", "30.25"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 6, 10, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    rng = np.random.default_rng(5)
    ds.PixelData = rng.integers(0, 2**16, (6, 10), dtype=np.uint16).tobytes()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _raw(tag: int, vr: str, value: str) -> Callable[[Dataset], None]:
    """Set an element to exactly ``value`` (pydicom would reformat some numbers)."""

    def edit(ds: Dataset) -> None:
        ds[tag] = DataElement(tag, vr, value)

    return edit


def _nested_sequences(undefined: bool) -> Callable[[Dataset], None]:
    """Sequences (nested, of undefined length when asked) before the pixel data."""

    def edit(ds: Dataset) -> None:
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator = "T-D0050", "SRT"
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = generate_uid()
        item.PurposeOfReferenceCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        ds.add_new(0x00291010, "OB", b"\x00" * 8)  # a private element
        if undefined:
            ds["ReferencedImageSequence"].is_undefined_length = True
            item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
            for entry in (item, inner, ds.ReferencedImageSequence[1]):
                entry.is_undefined_length_sequence_item = True

    return edit


def _padding(ds: Dataset) -> None:
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 6)  # Data Set Trailing Padding


Edit = Callable[[Dataset], None] | tuple[bytes, bytes]
ANSWERED: dict[str, tuple[dict[str, Any], list[Edit], str]] = {
    "explicit VR": ({}, [], ExplicitVRLittleEndian),
    "implicit VR": ({}, [], ImplicitVRLittleEndian),
    "sequences": ({}, [_nested_sequences(False)], ExplicitVRLittleEndian),
    "undefined-length sequences": ({}, [_nested_sequences(True)], ExplicitVRLittleEndian),
    "undefined-length sequences, implicit": (
        {},
        [_nested_sequences(True)],
        ImplicitVRLittleEndian,
    ),
    "padding after the pixels": ({}, [_padding], ExplicitVRLittleEndian),
    "numbers as scanners write them": (
        {},
        [
            _raw(0x00200032, "DS", "-1.5\\+2E1\\.50"),
            (b"-1.5\\+2E1\\.50 ", b" -1.5\\+2E1\\.5 "),  # a leading space (pydicom drops it)
            _raw(0x00281050, "DS", "40.\\-600"),
            _raw(0x00281051, "DS", "4e2\\1500"),
            _raw(0x00281052, "DS", "-1024.000"),
            _raw(0x00281053, "DS", "0.5 "),
            _raw(0x00200011, "IS", "+3"),
            _raw(0x00200013, "IS", "007 "),
            _raw(0x0020000E, "UI", "1.2.3.4\x00"),
        ],
        ExplicitVRLittleEndian,
    ),
    "no rescale, window, position or numbers": (
        {
            "RescaleSlope": None,
            "RescaleIntercept": None,
            "WindowCenter": None,
            "WindowWidth": None,
            "ImagePositionPatient": None,
            "ImageOrientationPatient": None,
            "SeriesNumber": None,
            "InstanceNumber": "",
        },
        [],
        ExplicitVRLittleEndian,
    ),
    "a slope alone, a zero window width": (
        {"RescaleIntercept": None, "WindowWidth": "0"},
        [],
        ExplicitVRLittleEndian,
    ),
    "signed 12 bits": (
        {"PixelRepresentation": 1, "NumberOfFrames": "1"},
        [],
        ExplicitVRLittleEndian,
    ),
    "8-bit MONOCHROME1": (
        {
            "BitsAllocated": 8,
            "BitsStored": 8,
            "HighBit": 7,
            "PhotometricInterpretation": "MONOCHROME1",
            "PixelData": bytes(range(60)),
        },
        [],
        ImplicitVRLittleEndian,
    ),
}

LEFT: dict[str, tuple[dict[str, Any], list[Edit], str]] = {
    "big endian": ({}, [], ExplicitVRBigEndian),
    "two frames": (
        {"NumberOfFrames": "2", "Rows": 3},
        [],
        ExplicitVRLittleEndian,
    ),
    "a VOI LUT sequence": (
        {},
        [lambda ds: setattr(ds, "VOILUTSequence", Sequence([Dataset()]))],
        ExplicitVRLittleEndian,
    ),
    "RGB": (
        {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
        [],
        ExplicitVRLittleEndian,
    ),
    "an instance number that is not an integer": (
        {},
        [_raw(0x00200013, "IS", "1.0")],
        ExplicitVRLittleEndian,
    ),
    "an empty rescale slope": ({}, [_raw(0x00281053, "DS", "")], ExplicitVRLittleEndian),
    "a rescale that is not a number": (
        {},
        [_raw(0x00281052, "DS", "nan")],
        ExplicitVRLittleEndian,
    ),
    "two orientations' worth": (
        {},
        [_raw(0x00200037, "DS", "1\\0\\0\\0\\1\\0\\1")],
        ExplicitVRLittleEndian,
    ),
    "a short pixel data": ({}, [lambda ds: setattr(ds, "PixelData", b"\0" * 20)], ""),
    "rows with another VR": ({}, [_raw(0x00280010, "SS", 6)], ExplicitVRLittleEndian),  # type: ignore[arg-type]
}


def _write(
    tmp_path: Path, name: str, changes: dict[str, Any], edits: list[Edit], syntax: str
) -> Path:
    path = tmp_path / f"{name.replace(' ', '-').replace(',', '')}.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's validation of the odd values
        ds = _ct_slice(**changes)
        for edit in edits:
            if callable(edit):
                edit(ds)
        if syntax:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    for edit in edits:
        if not callable(edit):  # bytes in the written file, replaced by as many others
            old, new = edit
            assert len(old) == len(new) and path.read_bytes().count(old) == 1
            path.write_bytes(path.read_bytes().replace(old, new))
    return path


@pytest.mark.parametrize("name", list(ANSWERED))
def test_plain_images_are_read_exactly_as_through_pydicom(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, *ANSWERED[name])
    assert _plain_or_same(path), f"{name}: left to pydicom"
    written = path.read_bytes()
    if "undefined-length" in name:
        assert written.count(b"\xfe\xff\xdd\xe0") == 2  # two sequence delimiters
    if name == "numbers as scanners write them":
        assert b" -1.5\\+2E1\\.5 " in written and b"4e2\\1500" in written


@pytest.mark.parametrize("name", list(LEFT))
def test_anything_else_is_left_to_pydicom(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, *LEFT[name])
    assert decode._plain_frame(path) is None


def test_a_broken_file_is_refused_with_pydicoms_reason(tmp_path: Path) -> None:
    """Whatever the plain reader cannot read is decoded (and refused) as before."""
    good = _write(tmp_path, "good", {}, [], ExplicitVRLittleEndian)
    short = _write(tmp_path, "short", *LEFT["a short pixel data"])
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-40])
    for broken in (short, truncated):
        assert decode._plain_frame(broken) is None
        with pytest.raises(PipelineInputError, match="cannot decode pixel data"):
            decode.decode_series(SourceSeries("s", "CT", "x", (good, broken)))


def test_a_file_cut_short_after_its_header_was_read_is_an_input_error(tmp_path: Path) -> None:
    """The pixels are read when the volume is stacked: a file that lost them by then is refused
    by name, not decoded from whatever is left."""
    path = _write(tmp_path, "cut", {}, [], ExplicitVRLittleEndian)
    frame = decode._plain_frame(path)
    assert frame is not None
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(PipelineInputError, match=path.name):
        frame.stored()
