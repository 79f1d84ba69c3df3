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

import math
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from pipelines.preprocess.frame_luts import frame_lut_view
from pipelines.preprocess.jpeg_repair import register as register_jpeg_repair
from pipelines.preprocess.percentiles import percentiles

register_jpeg_repair()  # sequential JPEG with malformed scan headers (see the module)
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
# modality -> (centre, width) in modality units for frames that carry no VOI of their own
MODALITY_DEFAULT_WINDOWS = {"CT": (40.0, 400.0)}


class DisplayError(ValueError):
    """The frame cannot be shown (no such frame, pixel data that cannot be decoded)."""


@dataclass(frozen=True)
class Window:
    """A linear VOI window in modality units (HU for CT): what a reviewer picks or drags."""

    center: float
    width: float

    def text(self) -> str:
        """``center,width`` as the console's ``window`` parameter spells it."""
        return f"{self.center:g},{self.width:g}"


# "file": the file's own VOI (else auto); "auto": the frame's 0.5-99.5 percentiles
WindowChoice = Window | Literal["file", "auto"]
# the usual CT presets (HU); an MR has no units a preset could name, so it gets "auto"
WINDOW_PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "soft": Window(40.0, 400.0),
    "bone": Window(480.0, 2500.0),
}
MAX_WINDOW_ABS = 1e7  # beyond any stored value range (32-bit pixels rescaled included)
_WINDOW_TEXT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")


def parse_window(text: str) -> WindowChoice:
    """A window as a request spells it: ``file``, ``auto``, a preset name (``lung``, ``soft``,
    ``bone``) or ``center,width`` in modality units (width at least 1, as the standard's linear
    VOI function needs). ValueError, with what is accepted, for anything else."""
    value = text.strip().lower()
    if value in ("", "file"):
        return "file"
    if value == "auto":
        return "auto"
    if value in WINDOW_PRESETS:
        return WINDOW_PRESETS[value]
    match = _WINDOW_TEXT.match(value)
    if match:
        center, width = float(match.group(1)), float(match.group(2))
        if (
            math.isfinite(center)
            and math.isfinite(width)
            and 1.0 <= width <= MAX_WINDOW_ABS
            and abs(center) <= MAX_WINDOW_ABS
        ):
            return Window(center, width)
    presets = ", ".join(WINDOW_PRESETS)
    raise ValueError(
        f"window must be file, auto, one of {presets}, or center,width with width >= 1 "
        f"(|values| <= {MAX_WINDOW_ABS:g}); got {text[:40]!r}"
    )


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


def _auto_window(values: np.ndarray) -> tuple[np.ndarray, Window]:
    if not values.size:
        return np.zeros(values.shape), Window(0.0, 1.0)
    low, high = (float(v) for v in percentiles(values, AUTO_WINDOW_PERCENTILES))
    unit = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    return unit, Window((low + high) / 2.0, max(high - low, 1.0))


def _file_window(view: Dataset) -> Window | None:
    """The first Window Center/Width of the view (a LUT has no centre and width to drag from)."""
    if "WindowCenter" not in view or "WindowWidth" not in view:
        return None
    center, width = view.WindowCenter, view.WindowWidth
    try:
        c = float(center[0] if _multi(center) else center)
        w = float(width[0] if _multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return Window(c, w)


def _multi(value: object) -> bool:
    return isinstance(value, list | tuple | MultiValue)


def _with_window(view: Dataset, window: Window) -> Dataset:
    """The view with ``window`` as its only VOI, linear (pydicom then applies exactly it)."""
    for keyword in ("VOILUTSequence", "VOILUTFunction"):
        if keyword in view:
            delattr(view, keyword)
    view.WindowCenter = window.center
    view.WindowWidth = window.width
    return view


def grey_unit_windowed(
    ds: Dataset, frame_index: int, pixels: np.ndarray, window: WindowChoice = "file"
) -> tuple[np.ndarray, Window | None]:
    """Modality LUT then VOI of one grey frame, scaled to [0, 1] (before any MONOCHROME1 flip),
    and the window that was applied (None for a VOI LUT, which has no centre and width).

    ``window`` replaces the file's VOI: a :class:`Window` is applied by pydicom's own windowing
    (linear), ``"auto"`` takes the frame's percentiles, ``"file"`` the file's VOI (else auto)."""
    view = frame_lut_view(ds, frame_index)
    values = apply_modality_lut(pixels, view)
    if window == "auto":
        return _auto_window(values.astype(np.float64))
    if isinstance(window, Window):
        view = _with_window(view, window)
    if _has_voi(view):
        try:
            with warnings.catch_warnings():  # a VOI LUT on rescaled (float) values is fine here
                warnings.simplefilter("ignore", UserWarning)
                shown = apply_voi_lut(values, view)
            low, high = _voi_output_range(view)
        except (AttributeError, IndexError, NotImplementedError, TypeError, ValueError):
            pass  # a VOI pydicom cannot apply (width < 1, LUT depth, missing pixel attributes)
        else:
            unit = np.clip((shown.astype(np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
            lut = view.get("VOILUTSequence")  # pydicom applies a LUT before any window
            return unit, None if lut and "LUTData" in lut[0] else _file_window(view)
    default = MODALITY_DEFAULT_WINDOWS.get(str(ds.get("Modality", "")).upper())
    if default is not None:  # no VOI in the file: the modality's usual window (CT soft tissue)
        return _linear_window(values.astype(np.float64), *default), Window(*default)
    return _auto_window(values.astype(np.float64))


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR windowing, to [0, 1]."""
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def grey_unit(ds: Dataset, frame_index: int, pixels: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI of one grey frame, scaled to [0, 1] (before any MONOCHROME1 flip)."""
    return grey_unit_windowed(ds, frame_index, pixels)[0]


def display_frame_windowed(
    ds: Dataset, frame_index: int = 0, window: WindowChoice = "file"
) -> tuple[np.ndarray, Window | None]:
    """:func:`display_frame` under a chosen ``window`` (see :func:`grey_unit_windowed`), and the
    window applied: the console starts a window/level drag from it. Colour frames ignore the
    window (None)."""
    pixels = _frame_pixels(ds, frame_index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR" or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4)):
        return _colour(ds, pixels), None
    unit, applied = grey_unit_windowed(ds, frame_index, pixels, window)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8), applied


def display_frame(ds: Dataset, frame_index: int = 0) -> np.ndarray:
    """The ``frame_index``-th (0-based) frame as a viewer shows it.

    ``(rows, cols)`` uint8 grey, or ``(rows, cols, 3)`` uint8 RGB for colour images.
    Raises :class:`DisplayError` for a frame that does not exist or cannot be decoded.
    """
    return display_frame_windowed(ds, frame_index)[0]
