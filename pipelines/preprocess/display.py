"""A frame as a viewer shows it: the one frame → display-pixels function of the node.

The console's review page and the burned-in overlay (and the PDF that embeds it) show source
frames; they all call :func:`display_frame`, so a reviewer sees what the overlay shows. Grey
frames go through pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` (Modality LUT Sequence
or rescale; VOI LUT Sequence, else the first Window Center/Width, any VOI LUT Function); for an
enhanced multi-frame object the frame's own functional groups supply them (Pixel Value
Transformation and Frame VOI LUT, per-frame over shared over the top level), see
:func:`pipelines.preprocess.frame_luts.frame_lut_view`. A frame without any VOI gets its
modality's default window where Hounsfield units make one meaningful (CT: soft tissue, centre 40
width 400, so soft tissue is not one flat grey), else its 0.5-99.5 percentiles, as viewers do. MONOCHROME1 is inverted after the VOI, so bright means dense everywhere. Colour
frames come back as RGB (pydicom already converts YBR; PALETTE COLOR through its LUT).

Model inputs are not display pixels: :mod:`pipelines.preprocess.decode` keeps original units and
:mod:`pipelines.preprocess.intensity` applies the model card's VOI.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from pipelines.preprocess.frame_luts import frame_lut_view
from pipelines.preprocess.jpeg_repair import register as register_jpeg_repair

register_jpeg_repair()  # sequential JPEG with malformed scan headers (see the module)
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
# modality -> (centre, width) in modality units for frames that carry no VOI of their own
MODALITY_DEFAULT_WINDOWS = {"CT": (40.0, 400.0)}


class DisplayError(ValueError):
    """The frame cannot be shown (no such frame, pixel data that cannot be decoded)."""


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _frame_pixels(ds: Dataset, frame_index: int) -> np.ndarray:
    frames = frame_count(ds)
    if not 0 <= frame_index < frames:
        raise DisplayError(f"frame {frame_index} out of range (0-{frames - 1})")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DisplayError("the instance has no pixel data")
    try:
        if frames == 1:
            return np.asarray(ds.pixel_array)
        return np.asarray(pixel_array(ds, index=frame_index))  # decodes this frame only
    except (AttributeError, ValueError, NotImplementedError, RuntimeError, OSError) as exc:
        raise DisplayError(f"cannot decode the pixel data: {exc}") from exc


def _colour(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        bits = int(ds.get("BitsStored", 8))
    rgb = pixels[..., :3].astype(np.float64)
    if bits > 8:
        rgb = rgb / float(2**bits - 1) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def _has_voi(view: Dataset) -> bool:
    lut = view.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        return True
    return "WindowCenter" in view and "WindowWidth" in view


def _voi_output_range(view: Dataset) -> tuple[float, float]:
    """The range pydicom's VOI step maps into: the LUT's 2^n entries, else the window's range."""
    lut = view.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        return 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    # windowing maps everything below/above the window to the ends of its output range
    probe = np.array([-1e300, 1e300])
    with np.errstate(over="ignore"):
        low, high = (float(v) for v in apply_voi_lut(probe, view))
    return min(low, high), max(low, high)


def _auto_window(values: np.ndarray) -> np.ndarray:
    if not values.size:
        return np.zeros(values.shape)
    low, high = np.percentile(values, AUTO_WINDOW_PERCENTILES)
    return np.clip((values - low) / max(float(high - low), 1e-6), 0.0, 1.0)


def grey_unit(ds: Dataset, frame_index: int, pixels: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI of one grey frame, scaled to [0, 1] (before any MONOCHROME1 flip)."""
    view = frame_lut_view(ds, frame_index)
    values = apply_modality_lut(pixels, view)
    if _has_voi(view):
        try:
            with warnings.catch_warnings():  # a VOI LUT on rescaled (float) values is fine here
                warnings.simplefilter("ignore", UserWarning)
                shown = apply_voi_lut(values, view)
            low, high = _voi_output_range(view)
        except (AttributeError, IndexError, NotImplementedError, TypeError, ValueError):
            pass  # a VOI pydicom cannot apply (width < 1, LUT depth, missing pixel attributes)
        else:
            return np.clip((shown.astype(np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    default = MODALITY_DEFAULT_WINDOWS.get(str(ds.get("Modality", "")).upper())
    if default is not None:
        return _linear_window(values.astype(np.float64), *default)
    return _auto_window(values.astype(np.float64))


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR windowing, to [0, 1]."""
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def display_frame(ds: Dataset, frame_index: int = 0) -> np.ndarray:
    """The ``frame_index``-th (0-based) frame as a viewer shows it.

    ``(rows, cols)`` uint8 grey, or ``(rows, cols, 3)`` uint8 RGB for colour images.
    Raises :class:`DisplayError` for a frame that does not exist or cannot be decoded.
    """
    pixels = _frame_pixels(ds, frame_index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR" or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4)):
        return _colour(ds, pixels)
    unit = grey_unit(ds, frame_index, pixels)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)
