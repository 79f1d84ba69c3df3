"""Header parsing: indexed attributes match pydicom's reading, and broken bytes are refused."""

from __future__ import annotations

import re
import struct
import warnings
from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian

from node.ingest.header import HeaderError, build_file_meta, parse_instance
from tests.node.ingest.helpers import dataset_part, make_instance

TEST_FILES = [
    "CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm",
    "rtplan.dcm", "waveform_ecg.dcm",
]  # fmt: skip


@pytest.mark.parametrize("name", TEST_FILES)
def test_header_matches_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    raw = open(path, "rb").read()  # noqa: SIM115
    parsed = parse_instance(raw).header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.sop_class_uid == ds.SOPClassUID
    assert parsed.study_instance_uid == ds.StudyInstanceUID
    assert parsed.series_instance_uid == ds.SeriesInstanceUID
    assert parsed.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert parsed.patient_name == str(ds.get("PatientName", ""))
    assert parsed.modality == ds.get("Modality", "")


def test_bare_dataset_with_transfer_syntax() -> None:
    raw = make_instance(patient_name="Bare^Dataset")
    parsed = parse_instance(dataset_part(raw), "1.2.840.10008.1.2.1")
    assert parsed.header.patient_name == "Bare^Dataset"
    assert parsed.dataset_offset == 0 and not parsed.has_file_meta


def test_implicit_vr_dataset() -> None:
    ds = pydicom.dcmread(BytesIO(make_instance()))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out)
    parsed = parse_instance(out.getvalue())
    assert parsed.header.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.header.transfer_syntax_uid == ImplicitVRLittleEndian


@pytest.mark.parametrize("cut", [10, 200, 400, -3])
def test_truncated_instance_is_refused(cut: int) -> None:
    raw = make_instance()
    with pytest.raises(HeaderError):
        parse_instance(raw[:cut])


def test_truncated_encapsulated_pixel_data_is_refused() -> None:
    raw = open(get_testdata_file("JPEG2000.dcm"), "rb").read()  # noqa: SIM115
    with pytest.raises(HeaderError, match="not delimited|remain"):
        parse_instance(raw[:-20])


def test_missing_sop_instance_uid_is_refused() -> None:
    ds = pydicom.dcmread(BytesIO(make_instance()))
    del ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out)
    with pytest.raises(HeaderError, match="sop_instance_uid"):
        parse_instance(out.getvalue())


def test_absurd_length_is_refused() -> None:
    body = dataset_part(make_instance())
    # (0008,0016) UI with a 2-byte length is the first element; make the next one claim 4 GB
    patched = body + struct.pack("<HH2sHL", 0x0009, 0x0010, b"OB", 0, 0xFFFFFFF0)
    with pytest.raises(HeaderError, match="declares"):
        parse_instance(patched, "1.2.840.10008.1.2.1")


def test_wrong_vr_on_a_uid_is_refused() -> None:
    body = bytearray(dataset_part(make_instance()))
    at = body.find(struct.pack("<HH", 0x0008, 0x0018))
    body[at + 4 : at + 6] = b"US"
    with pytest.raises(HeaderError, match="VR US"):
        parse_instance(bytes(body), "1.2.840.10008.1.2.1")


def test_not_dicom_is_refused() -> None:
    with pytest.raises(HeaderError):
        parse_instance(b"hello world, this is not DICOM at all" * 10)


def test_hand_built_file_meta_reads_back_with_pydicom() -> None:
    raw = make_instance()
    body = dataset_part(raw)
    original = pydicom.dcmread(BytesIO(raw))
    meta = build_file_meta(
        original.SOPClassUID, original.SOPInstanceUID, "1.2.840.10008.1.2.1", "MODALITY1"
    )
    ds = pydicom.dcmread(BytesIO(meta + body))
    assert ds.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert ds.PixelData == original.PixelData
    assert parse_instance(meta + body).dataset_offset == len(meta)


def test_short_native_pixel_data_is_refused() -> None:
    """A well-formed element whose pixels are fewer than Rows x Columns needs (lost in transit)."""
    ds = pydicom.dcmread(BytesIO(make_instance(size=16)))
    ds.PixelData = ds.PixelData[:100]
    out = BytesIO()
    ds.save_as(out)
    with pytest.raises(HeaderError, match="pixel data has 100 bytes, the image needs 512"):
        parse_instance(out.getvalue())


@pytest.mark.parametrize("jpip_deflate", ["1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"])
def test_jpip_deflate_data_set_is_inflated(jpip_deflate: str) -> None:
    import zlib

    explicit = dataset_part(make_instance(patient_name="Jpip^Deflate"))  # explicit VR little endian
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = deflater.compress(explicit) + deflater.flush()
    parsed = parse_instance(raw, jpip_deflate).header
    assert parsed.patient_name == "Jpip^Deflate" and parsed.sop_instance_uid


@pytest.mark.parametrize(("edit", "attribute"), [
    (b"1.2.3.4.a", "Study Instance UID (0020,000D)"),  # a letter
    (b"1.2.3.4.\xe9", "Study Instance UID (0020,000D)"),  # a non-ASCII byte
    (b"1.2..4.55", "Study Instance UID (0020,000D)"),  # an empty component
])  # fmt: skip
def test_an_invalid_uid_is_refused_naming_the_attribute(edit: bytes, attribute: str) -> None:
    raw = dataset_part(make_instance(study_uid="1.2.3.4.5")).replace(b"1.2.3.4.5\0", edit + b"\0")
    with pytest.raises(HeaderError, match=re.escape(attribute)):
        parse_instance(raw, "1.2.840.10008.1.2.1")


def test_a_deflate_bomb_is_refused_without_inflating_it_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import zlib

    from node.ingest import header

    monkeypatch.setattr(header, "MAX_INFLATED", 1 << 20)
    explicit = dataset_part(make_instance(size=1024))  # 2 MiB of pixels: over the 1 MiB cap
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = deflater.compress(explicit) + deflater.flush()
    with pytest.raises(HeaderError, match="inflates to more than 1048576 bytes"):
        parse_instance(raw, "1.2.840.10008.1.2.1.99")
