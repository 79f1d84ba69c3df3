"""Every transfer syntax the listener accepts for storage either decodes, to DCMTK's pixels, or is
refused by the decode path with a reason naming it (video, JPIP, JPEG XL, JPEG 2000 Part 2).

The samples are real files from pydicom-data; two syntaxes it has no file for are made here: JPEG
Lossless process 14 (selection value ≠ 1) by DCMTK's ``dcmcjpeg +el``, HTJ2K by relabelling a
JPEG 2000 Part 1 codestream (which an HTJ2K decoder must read, ITU-T T.814). The reference pixels
are DCMTK's decompression (``dcmdjpeg``, ``dcmdjpls``, ``dcmdrle``, ``dcmconv``) where DCMTK has a
codec, else the uncompressed original of the same image.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from node.ingest.contexts import SUPPORTED_CONTEXTS
from pipelines.contract import SourceSeries
from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import decode_series, undecodable_reason

ACCEPTED = sorted(
    set().union(*SUPPORTED_CONTEXTS.values()), key=lambda u: [int(p) for p in u.split(".")]
)
HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
# syntax -> (sample, how the reference is made: a DCMTK command or an uncompressed twin, tolerance)
SAMPLES: dict[str, tuple[str, str, int]] = {
    "1.2.840.10008.1.2": ("MR_small_implicit.dcm", "dcmconv", 0),
    "1.2.840.10008.1.2.1": ("CT_small.dcm", "dcmconv", 0),
    "1.2.840.10008.1.2.1.99": ("image_dfl.dcm", "dcmconv", 0),
    "1.2.840.10008.1.2.2": ("MR_small_bigendian.dcm", "dcmconv", 0),
    "1.2.840.10008.1.2.4.50": (
        "SC_rgb_jpeg_dcmtk.dcm",
        "dcmdjpeg",
        2,
    ),  # lossy: IDCT/YCbCr rounding
    "1.2.840.10008.1.2.4.51": ("JPEG-lossy.dcm", "dcmdjpeg", 1),  # 12-bit, malformed SOS
    "1.2.840.10008.1.2.4.57": ("CT_small.dcm", "dcmcjpeg +el", 0),
    "1.2.840.10008.1.2.4.70": ("JPEG-LL.dcm", "dcmdjpeg", 0),
    "1.2.840.10008.1.2.4.80": ("MR_small_jpeg_ls_lossless.dcm", "dcmdjpls", 0),
    "1.2.840.10008.1.2.4.81": ("JPEGLSNearLossless_16.dcm", "dcmdjpls", 0),
    "1.2.840.10008.1.2.4.90": ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0),
    "1.2.840.10008.1.2.4.91": ("MR2_J2KI.dcm", "MR2_J2KI.dcm", -1),  # lossy, no DCMTK codec
    **dict.fromkeys(HTJ2K, ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0)),
    "1.2.840.10008.1.2.5": ("MR_small_RLE.dcm", "dcmdrle", 0),
}


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (install pydicom-data)")
    return Path(path)


def _dcmtk(tool: str, source: Path, out: Path) -> Path:
    args = tool.split()
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} (DCMTK) not installed")
    if args[0] == "dcmconv":
        args.append("+te")  # explicit VR little endian: the plain reading of every pixel
    subprocess.run([*args, str(source), str(out)], check=True, capture_output=True, timeout=60)
    return out


def _sample_and_reference(syntax: str, tmp_path: Path) -> tuple[Path, np.ndarray | None, int]:
    name, reference, tolerance = SAMPLES[syntax]
    sample = _testfile(name)
    if reference.startswith("dcmcjpeg"):  # encode the sample, the original is the reference
        original = pydicom.dcmread(sample).pixel_array
        return _dcmtk(reference, sample, tmp_path / "encoded.dcm"), original, tolerance
    if syntax in HTJ2K:
        ds = pydicom.dcmread(sample)
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        sample = tmp_path / "htj2k.dcm"
        ds.save_as(sample, enforce_file_format=True)
    if reference.endswith(".dcm"):
        expected = pydicom.dcmread(_testfile(reference)).pixel_array if tolerance >= 0 else None
        return sample, expected, tolerance
    decompressed = _dcmtk(reference, sample, tmp_path / "reference.dcm")
    return sample, pydicom.dcmread(decompressed).pixel_array, tolerance


def _with_identifiers(path: Path, tmp_path: Path) -> Path:
    """The sample as the listener would have it: some pydicom-data files lack the series UID and
    modality that ingest requires (they are codec samples); a copy gets them."""
    ds = pydicom.dcmread(path)
    if "SeriesInstanceUID" in ds and "Modality" in ds:
        return path
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
    ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
    ds.Modality = ds.get("Modality") or "OT"
    copy = tmp_path / f"identified-{path.name}"
    ds.save_as(copy, enforce_file_format=True)
    return copy


def _series(path: Path) -> SourceSeries:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SourceSeries(str(ds.SeriesInstanceUID), str(ds.Modality), str(ds.SOPClassUID), (path,))


def test_every_accepted_syntax_is_sampled_or_refused_with_a_reason() -> None:
    unaccounted = [ts for ts in ACCEPTED if ts not in SAMPLES and undecodable_reason(ts) is None]
    assert unaccounted == [], "a decodable syntax without a sample here"
    assert all(ts in ACCEPTED for ts in SAMPLES)


@pytest.mark.parametrize("syntax", [ts for ts in ACCEPTED if ts in SAMPLES])
def test_accepted_syntax_decodes_to_dcmtks_pixels(syntax: str, tmp_path: Path) -> None:
    sample, expected, tolerance = _sample_and_reference(syntax, tmp_path)
    assert (
        str(pydicom.dcmread(sample, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    )
    assert undecodable_reason(syntax) is None
    decoded = decode_series(_series(_with_identifiers(sample, tmp_path)))  # model-input path
    pixels = pydicom.dcmread(sample).pixel_array  # with the node's decoder plugins registered
    colour = int(pydicom.dcmread(sample, stop_before_pixels=True).get("SamplesPerPixel", 1)) > 1
    assert decoded.shape == (pixels.shape[-3:-1] if colour else pixels.shape[-2:])
    if expected is not None:
        assert pixels.shape == expected.shape
        difference = np.abs(pixels.astype(np.int64) - expected.astype(np.int64)).max()
        assert difference <= tolerance, f"{UID(syntax).name}: max difference {difference}"


@pytest.mark.parametrize("syntax", [ts for ts in ACCEPTED if ts not in SAMPLES])
def test_syntax_without_a_decoder_is_an_input_error_naming_it(syntax: str, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "stored.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(PipelineInputError, match=syntax.replace(".", r"\.")):
        decode_series(_series(path))


def test_12_bit_jpeg_extended_with_a_malformed_scan_header_displays_and_repairs_only_that() -> None:
    from pydicom.encaps import generate_frames

    from pipelines.preprocess.display import display_frame
    from pipelines.preprocess.jpeg_repair import NothingToRepair, repair_sequential_scan_headers

    broken = pydicom.dcmread(_testfile("JPEG-lossy.dcm"))
    assert display_frame(broken).shape == (1024, 256)  # the console, overlay and PDF path
    fixed = pydicom.dcmread(_testfile("JPGExtended.dcm"))  # the same image, a legal SOS
    stream = next(generate_frames(broken.PixelData, number_of_frames=1))
    legal = next(generate_frames(fixed.PixelData, number_of_frames=1))
    assert repair_sequential_scan_headers(stream) == legal  # only Ss/Se/Ah-Al change
    with pytest.raises(NothingToRepair):
        repair_sequential_scan_headers(legal)
