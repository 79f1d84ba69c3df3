"""Secondary Capture wrapping of pictures: valid DICOM (dciodvfy) carrying the typed patient details."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from web.uploads import PatientDetails, UploadError, picture_to_secondary_capture, sniff


def _png(mode: str, size: tuple[int, int] = (48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90 if mode == "L" else (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_picture_becomes_valid_secondary_capture(tmp_path: Path, mode: str) -> None:
    details = PatientDetails("Doe^Jane", "P1", "A1", "Skin photo").validated()
    ds = picture_to_secondary_capture(_png(mode), details, "1.2.3.4", "1.2.3.4.5", 1)
    path = tmp_path / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert (back.PatientName, back.PatientID, back.AccessionNumber) == ("Doe^Jane", "P1", "A1")
    assert back.pixel_array.shape == ((32, 48) if mode == "L" else (32, 48, 3))
    assert back.PhotometricInterpretation == ("MONOCHROME2" if mode == "L" else "RGB")
    if mode == "RGB":
        assert np.array_equal(back.pixel_array[0, 0], [10, 200, 30])
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [
            line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")
        ]
        assert not errors, errors


def test_sniff_and_bad_details() -> None:
    assert sniff(b"\0" * 128 + b"DICM") == "dicom"
    assert sniff(b"\x89PNG\r\n\x1a\n") == "png" and sniff(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff(b"PK\x03\x04") == "zip" and sniff(b"GIF89a") == "unknown"
    with pytest.raises(UploadError, match="backslash"):
        PatientDetails(patient_name="a\\b").validated()
    with pytest.raises(UploadError, match="cannot be decoded"):
        picture_to_secondary_capture(b"\x89PNG\r\n\x1a\nbroken", PatientDetails(), "1.2", "1.3", 1)
