"""Burned-in overlay for viewers that cannot show SEG: Secondary Capture, BurnedInAnnotation YES.

The key source frame (the one with most mask pixels) is shown as a viewer shows it
(:func:`pipelines.preprocess.display.display_frame`: modality LUT, the file's Window Center/Width
or VOI LUT, else the modality's default window), the mask drawn as a translucent red-green heatmap
(probabilities when present) and boxes as rectangles. Each finding on the frame is labelled with
its tracking ID (the name the SR, the PDF and the console give it), and an "AI" mark in the top
right corner says, in the pixels themselves, that the picture is a machine's output: a secondary
capture travels without its series description. Colour sources (ultrasound, secondary capture:
three samples per pixel, RGB or YBR, which pydicom returns as RGB) keep their colours under the
heatmap.

An overlay with nothing on it (no mask pixels, no boxes, no findings) repeats the source image;
:func:`has_content` lets the producer leave it out (``outputs.skip_empty_overlay``).

A result with an explanation map (Grad-CAM & co.) or an anomaly map gets each map as a further
image of the same overlay series (instance 2: explanation, 3: anomaly; their own deterministic
UIDs): the source under the map in jet colours (:mod:`node.results.maps`), with the mask's outline,
boxes, finding IDs and the "AI" mark still on it, and a caption ("Grad-CAM for abnormal", "anomaly
map (red >= threshold ...)") over a low -> high colour bar. Separate images, not one blend, so
the mask is never hidden under a map and each map is read on its own, as a PACS user scrolls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from core.domain import ArtifactKind
from node.results.equipment import MANUFACTURER
from node.results.fonts import find_font
from node.results.maps import MapLayer, blend, jet, map_layers
from node.results.uids import result_uid, series_number
from pipelines.contract import PipelineResult
from pipelines.preprocess.display import display_frame, frame_count

AI_MARK = "AI"
LABEL_COLOUR = (255, 255, 0)
AI_MARK_COLOUR = (255, 140, 0)


def has_content(result: PipelineResult) -> bool:
    """Whether an overlay would show anything beyond the source image."""
    seg = result.segmentation
    return bool(result.findings or result.detections or (seg is not None and seg.label_map.any()))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = find_font("DejaVuSans-Bold.ttf") or find_font("DejaVuSans.ttf")
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size=size)


def finding_labels(result: PipelineResult, frame_index: int) -> list[tuple[str, int, int]]:
    """(tracking ID, column, row) of the top-left corner of each finding shown on the frame:
    its detection box there, else its segmented extent."""
    anchors: list[tuple[str, int, int]] = []
    for finding in result.findings:
        if finding.box is not None and finding.box.frame_index == frame_index:
            anchors.append((finding.tracking_id, int(finding.box.x0), int(finding.box.y0)))
        elif frame_index in finding.frame_indices:
            _f0, row0, col0, _f1, _r1, _c1 = finding.measurements.bbox
            anchors.append((finding.tracking_id, int(col0), int(row0)))
    return anchors


@dataclass(frozen=True)
class Annotation:
    """A text burned into the overlay and the rectangle (x0, y0, x1, y1, inclusive) it covers."""

    text: str
    box: tuple[int, int, int, int]
    is_mark: bool


def annotation_layout(
    result: PipelineResult, frame_index: int, size: tuple[int, int]
) -> list[Annotation]:
    """Where the finding IDs and the "AI" mark go on a ``size`` = (width, height) image: the mark
    in the top right corner, each ID above its finding (below its top edge when there is no
    room), moved left of the mark rather than under it."""
    width, height = size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    mark_font = _font(max(10, min(width, height) // 14))
    left, top, right, bottom = (round(v) for v in probe.textbbox((0, 0), AI_MARK, font=mark_font))
    pad = max(2, (bottom - top) // 4)
    mark = (width - (right - left) - 3 * pad, pad, width - pad, (bottom - top) + 3 * pad)
    font = _font(max(9, min(width, height) // 20))
    out: list[Annotation] = []
    for text, col, row in finding_labels(result, frame_index):
        left, top, right, bottom = (
            round(v) for v in probe.textbbox((0, 0), text, font=font, stroke_width=_stroke(font))
        )
        w, h = right - left, bottom - top
        x = min(max(col, 0), max(width - w - 1, 0))
        y = row - h - 3
        y = y if y >= 0 else min(row + 2, max(height - h - 1, 0))
        if y <= mark[3] + 2 and x + w >= mark[0] - 2:  # would sit under the mark
            x = max(mark[0] - w - 4, 0)
        out.append(Annotation(text, (x, y, x + w, y + h), False))
    out.append(Annotation(AI_MARK, mark, True))
    return out


def _stroke(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    return max(1, int(getattr(font, "size", 10)) // 8)


def _annotate(image: Image.Image, result: PipelineResult, frame_index: int) -> None:
    """Finding IDs in yellow with a black outline (legible on bright and dark tissue), and the
    "AI" mark: orange on a black box."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    font = _font(max(9, min(width, height) // 20))
    mark_font = _font(max(10, min(width, height) // 14))
    for item in annotation_layout(result, frame_index, image.size):
        x0, y0, x1, y1 = item.box
        if item.is_mark:
            pad = max(2, (y1 - y0) // 7)
            draw.rectangle(item.box, fill=(0, 0, 0), outline=AI_MARK_COLOUR, width=max(1, pad // 2))
            left, top, right, bottom = draw.textbbox((0, 0), item.text, font=mark_font)
            x = x0 + ((x1 - x0) - (right - left)) // 2 - left
            y = y0 + ((y1 - y0) - (bottom - top)) // 2 - top
            draw.text((x, y), item.text, font=mark_font, fill=AI_MARK_COLOUR)
        else:
            left, top, _r, _b = draw.textbbox(
                (0, 0), item.text, font=font, stroke_width=_stroke(font)
            )
            draw.text((x0 - left, y0 - top), item.text, font=font, fill=LABEL_COLOUR,
                      stroke_width=_stroke(font), stroke_fill=(0, 0, 0))  # fmt: skip


def key_frame_index(result: PipelineResult) -> int:
    """The frame with most mask pixels, else the first detection's frame, else the middle."""
    seg = result.segmentation
    if seg is not None:
        # frame by frame: count_nonzero of one frame is a vectorised count without a boolean
        # copy; the SEG, SR, PDF and overlay each ask, 13 -> 1.5 ms for 100 × 512²
        counts = np.fromiter(
            (np.count_nonzero(frame) for frame in seg.label_map), np.int64, len(seg.label_map)
        )
        if counts.any():
            return int(np.argmax(counts))
    if result.detections:
        return result.detections[0].frame_index
    return len(result.source_frames) // 2


def source_frame_pixels(sources: Sequence[Dataset], frame_index: int) -> np.ndarray:
    """The result frame's source as a viewer shows it (the console's review page shows the same
    pixels): uint8 grey ``(rows, cols)`` or RGB ``(rows, cols, 3)``."""
    dataset = sources[0] if len(sources) == 1 else sources[frame_index]
    return display_frame(dataset, frame_index if frame_count(dataset) > 1 else 0)


def _draw_boxes(image: Image.Image, result: PipelineResult, frame_index: int) -> None:
    """The frame's detection boxes as yellow rectangles."""
    draw = ImageDraw.Draw(image)
    width = max(1, min(image.size) // 200)
    for box in result.detections:
        if box.frame_index == frame_index:
            draw.rectangle(
                [box.x0, box.y0, box.x1 - 1, box.y1 - 1], outline=(255, 255, 0), width=width
            )


def render_overlay(
    result: PipelineResult, sources: Sequence[Dataset], frame_index: int
) -> np.ndarray:
    """(rows, cols, 3) uint8 RGB: the displayed source, red-green heatmap of the mask, boxes,
    finding IDs and the "AI" mark."""
    shown = source_frame_pixels(sources, frame_index)
    if shown.ndim == 2:
        shown = np.repeat(shown[:, :, None], 3, axis=2)
    rgb = shown.astype(np.float32)
    seg = result.segmentation
    if seg is not None:
        mask = seg.label_map[frame_index] > 0
        if seg.probabilities is not None:
            heat = np.clip(seg.probabilities[:, frame_index].max(axis=0), 0, 1)
        elif seg.heat is not None:
            heat = np.clip(seg.heat[frame_index], 0, 1)
        else:
            heat = mask.astype(np.float32)
        colour = np.stack([heat, 1.0 - heat, np.zeros_like(heat)], axis=-1) * 255
        alpha = 0.45 * mask[:, :, None]
        rgb = rgb * (1 - alpha) + colour * alpha
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    _draw_boxes(image, result, frame_index)
    _annotate(image, result, frame_index)
    return np.asarray(image)


def render_explanation(
    result: PipelineResult, sources: Sequence[Dataset], frame_index: int
) -> np.ndarray | None:
    """(rows, cols, 3) uint8 RGB: the displayed source under the explanation map in jet colours
    (more opaque where the map is higher); None when the result has no explanation."""
    if result.explanation is None:
        return None
    shown = source_frame_pixels(sources, frame_index)
    return blend(shown, np.clip(result.explanation.maps[frame_index], 0.0, 1.0))


def _mask_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The ``width``-pixel inner rim of a 2D mask: what stays visible under a colour map."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def _caption(image: Image.Image, text: str) -> None:
    """The map's name and a low -> high colour bar, white on a black box in the bottom left."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    size = max(9, min(width, height) // 24)
    font = _font(size)
    left, top, right, bottom = (round(v) for v in draw.textbbox((0, 0), text, font=font))
    while right - left > width - 12 and size > 6:  # smaller type before a cut-off caption
        size -= 1
        font = _font(size)
        left, top, right, bottom = (round(v) for v in draw.textbbox((0, 0), text, font=font))
    pad = max(2, (bottom - top) // 4)
    bar_h = max(3, (bottom - top) // 2)
    box_w = min(width - 2 * pad, (right - left) + 2 * pad)
    box_h = (bottom - top) + bar_h + 3 * pad
    x0, y0 = pad, height - box_h - pad
    draw.rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=(0, 0, 0))
    draw.text((x0 + pad - left, y0 + pad - top), text, font=font, fill=(255, 255, 255))
    bar_w = max(2, box_w - 2 * pad)
    ramp = (jet(np.linspace(0.0, 1.0, bar_w)) * 255).astype(np.uint8)
    strip = np.repeat(ramp[None], bar_h, axis=0)
    image.paste(Image.fromarray(strip), (x0 + pad, y0 + box_h - pad - bar_h))


def render_map_overlay(
    result: PipelineResult, sources: Sequence[Dataset], layer: MapLayer
) -> np.ndarray:
    """(rows, cols, 3) uint8 RGB of ``layer.key_frame``: the displayed source under the map in
    jet colours, the mask's outline (white), boxes, finding IDs, the "AI" mark and a caption
    naming the map over a low -> high colour bar."""
    frame_index = layer.key_frame
    rgb = blend(source_frame_pixels(sources, frame_index), layer.values[frame_index])
    seg = result.segmentation
    if seg is not None and seg.label_map[frame_index].any():
        rim = _mask_outline(seg.label_map[frame_index] > 0, max(1, min(rgb.shape[:2]) // 256))
        rgb[rim] = (255, 255, 255)
    image = Image.fromarray(rgb)
    _draw_boxes(image, result, frame_index)
    _annotate(image, result, frame_index)
    _caption(image, layer.caption)
    return np.asarray(image)


def _direction_letter(vector: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if vector[axis] > 0 else negative


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """PatientOrientation of the source (or derived from its orientation; SC needs one)."""
    existing = source.get("PatientOrientation")
    # an oblique "L\\PF" is valid DICOM but highdicom takes one letter per axis: derive instead
    if existing and len(existing) == 2 and all(len(str(v)) == 1 for v in existing):
        return (str(existing[0]), str(existing[1]))
    orientation = source.get("ImageOrientationPatient")
    if orientation and len(orientation) == 6:
        values = [float(v) for v in orientation]
        return (_direction_letter(values[:3]), _direction_letter(values[3:]))
    return ("L", "F")  # projection radiograph convention when nothing is known (PA chest)


def build_overlay(
    result: PipelineResult, sources: Sequence[Dataset], result_version: int
) -> hd.sc.SCImage:
    """The overlay series' first image: the key frame with the mask, boxes and finding IDs."""
    frame_index = key_frame_index(result)
    pixels = render_overlay(result, sources, frame_index)
    comment = "AI result overlay - not for diagnostic use"
    return _secondary_capture(
        result, sources, result_version, _Placement(frame_index, "instance", 1, comment), pixels
    )


# instance numbers of the map images in the overlay series (the overlay itself is 1): fixed per
# map, so a viewer lists them in the same order whether or not the overlay itself was made
MAP_INSTANCE_NUMBERS = {"explanation": 2, "anomaly": 3}


def overlay_map_layers(result: PipelineResult) -> list[MapLayer]:
    """The maps the overlay series shows as images of their own (explanation on the key image
    the PDF shows it on, anomaly on its highest-scoring frame)."""
    return map_layers(result, key_frame_index(result))


def build_map_overlay(
    result: PipelineResult, sources: Sequence[Dataset], result_version: int, layer: MapLayer
) -> hd.sc.SCImage:
    """One map (explanation, anomaly) as a further image of the overlay series: its own
    deterministic SOP Instance UID (role ``instance-<map>``), instance number and caption."""
    pixels = render_map_overlay(result, sources, layer)
    comment = f"AI {layer.caption} - not for diagnostic use"
    placement = _Placement(
        layer.key_frame, f"instance-{layer.role}", MAP_INSTANCE_NUMBERS[layer.role], comment
    )
    return _secondary_capture(result, sources, result_version, placement, pixels)


@dataclass(frozen=True)
class _Placement:
    """Where an image goes in the overlay series and what it says about itself."""

    frame_index: int  # the result frame it shows
    uid_role: str  # result_uid's role of its SOP Instance UID
    instance_number: int
    comment: str  # Image Comments


def _secondary_capture(
    result: PipelineResult,
    sources: Sequence[Dataset],
    result_version: int,
    placement: _Placement,
    pixels: np.ndarray,
) -> hd.sc.SCImage:
    first = sources[0]
    spacing = first.get("PixelSpacing") or first.get("ImagerPixelSpacing")
    overlay = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=patient_orientation(first),
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=result_uid(result, ArtifactKind.OVERLAY, "series", result_version),
        series_number=series_number(ArtifactKind.OVERLAY),
        sop_instance_uid=result_uid(
            result, ArtifactKind.OVERLAY, placement.uid_role, result_version
        ),
        instance_number=placement.instance_number,
        manufacturer=MANUFACTURER,
        patient_id=first.get("PatientID", ""),
        patient_name=first.get("PatientName", ""),
        patient_birth_date=first.get("PatientBirthDate", ""),
        patient_sex=first.get("PatientSex", "") or None,
        accession_number=first.get("AccessionNumber", ""),
        study_id=first.get("StudyID", ""),
        study_date=first.get("StudyDate", "") or None,
        study_time=first.get("StudyTime", "") or None,
        referring_physician_name=first.get("ReferringPhysicianName", ""),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
    )
    if "SpecificCharacterSet" in first:  # names keep the source's encoding (SCImage drops it)
        overlay.SpecificCharacterSet = first.SpecificCharacterSet
    if first.get("StudyDescription"):  # SCImage takes no description; viewers list studies by it
        overlay.StudyDescription = first.StudyDescription
    overlay.BurnedInAnnotation = "YES"
    overlay.Laterality = first.get("Laterality", "")  # General Series type 2C
    overlay.Modality = "OT"
    frame = result.source_frames[placement.frame_index]
    ref = Dataset()
    ref.ReferencedSOPClassUID = frame.sop_class_uid
    ref.ReferencedSOPInstanceUID = frame.sop_instance_uid
    if frame.frame_number:
        ref.ReferencedFrameNumber = frame.frame_number
    overlay.SourceImageSequence = [ref]
    overlay.ImageComments = placement.comment
    return overlay
