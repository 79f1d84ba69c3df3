"""Burned-in overlay for viewers that cannot show SEG: Secondary Capture, BurnedInAnnotation YES.

The key source frame (the one with most mask pixels) is shown as a viewer shows it
(:func:`pipelines.preprocess.display.display_frame`: modality LUT, the file's VOI), the mask
drawn as a translucent red-green heatmap (probabilities when present) and boxes as rectangles.
Colour sources (ultrasound, secondary capture: three samples per pixel, RGB or YBR, which pydicom
returns as RGB) keep their colours under the heatmap.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from node.results.equipment import MANUFACTURER
from node.results.uids import result_uid, series_number
from pipelines.contract import PipelineResult
from pipelines.preprocess.display import display_frame, frame_count


def key_frame_index(result: PipelineResult) -> int:
    """The frame with most mask pixels, else the first detection's frame, else the middle."""
    seg = result.segmentation
    if seg is not None and seg.label_map.any():
        return int(np.argmax((seg.label_map > 0).reshape(seg.label_map.shape[0], -1).sum(axis=1)))
    if result.detections:
        return result.detections[0].frame_index
    return len(result.source_frames) // 2


def source_frame_pixels(sources: Sequence[Dataset], frame_index: int) -> np.ndarray:
    """The result frame's source as a viewer shows it (the console's review page shows the same
    pixels): uint8 grey ``(rows, cols)`` or RGB ``(rows, cols, 3)``."""
    dataset = sources[0] if len(sources) == 1 else sources[frame_index]
    return display_frame(dataset, frame_index if frame_count(dataset) > 1 else 0)


def render_overlay(
    result: PipelineResult, sources: Sequence[Dataset], frame_index: int
) -> np.ndarray:
    """(rows, cols, 3) uint8 RGB: the displayed source, red-green heatmap of the mask, boxes."""
    shown = source_frame_pixels(sources, frame_index)
    if shown.ndim == 2:
        shown = np.repeat(shown[:, :, None], 3, axis=2)
    rgb = shown.astype(np.float32)
    seg = result.segmentation
    if seg is not None:
        mask = seg.label_map[frame_index] > 0
        if seg.probabilities is not None:
            heat = np.clip(seg.probabilities[:, frame_index].max(axis=0), 0, 1)
        else:
            heat = mask.astype(np.float32)
        colour = np.stack([heat, 1.0 - heat, np.zeros_like(heat)], axis=-1) * 255
        alpha = 0.45 * mask[:, :, None]
        rgb = rgb * (1 - alpha) + colour * alpha
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(1, min(image.size) // 200)
    for box in result.detections:
        if box.frame_index == frame_index:
            draw.rectangle(
                [box.x0, box.y0, box.x1 - 1, box.y1 - 1], outline=(255, 255, 0), width=width
            )
    return np.asarray(image)


def jet(values: np.ndarray) -> np.ndarray:
    """The familiar blue -> cyan -> green -> yellow -> red ramp of probability maps, (..., 3)
    floats 0..1; the console's heat map PNGs and the report's explanation use the same one."""
    v = np.clip(values, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1)


def render_explanation(
    result: PipelineResult, sources: Sequence[Dataset], frame_index: int
) -> np.ndarray | None:
    """(rows, cols, 3) uint8 RGB: the displayed source under the explanation map in jet colours
    (more opaque where the map is higher); None when the result has no explanation."""
    if result.explanation is None:
        return None
    shown = source_frame_pixels(sources, frame_index)
    if shown.ndim == 2:
        shown = np.repeat(shown[:, :, None], 3, axis=2)
    values = np.clip(result.explanation.maps[frame_index], 0.0, 1.0)
    alpha = (0.6 * values)[:, :, None]
    rgb = shown.astype(np.float32) * (1 - alpha) + jet(values) * 255.0 * alpha
    return rgb.clip(0, 255).astype(np.uint8)


def _direction_letter(vector: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if vector[axis] > 0 else negative


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """PatientOrientation of the source (or derived from its orientation; SC needs one)."""
    existing = source.get("PatientOrientation")
    if existing and len(existing) == 2 and all(existing):
        return (str(existing[0]), str(existing[1]))
    orientation = source.get("ImageOrientationPatient")
    if orientation and len(orientation) == 6:
        values = [float(v) for v in orientation]
        return (_direction_letter(values[:3]), _direction_letter(values[3:]))
    return ("L", "F")  # projection radiograph convention when nothing is known (PA chest)


def build_overlay(
    result: PipelineResult, sources: Sequence[Dataset], result_version: int
) -> hd.sc.SCImage:
    frame_index = key_frame_index(result)
    first = sources[0]
    pixels = render_overlay(result, sources, frame_index)
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
        sop_instance_uid=result_uid(result, ArtifactKind.OVERLAY, "instance", result_version),
        instance_number=1,
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
    frame = result.source_frames[frame_index]
    ref = Dataset()
    ref.ReferencedSOPClassUID = frame.sop_class_uid
    ref.ReferencedSOPInstanceUID = frame.sop_instance_uid
    if frame.frame_number:
        ref.ReferencedFrameNumber = frame.frame_number
    overlay.SourceImageSequence = [ref]
    overlay.ImageComments = "AI result overlay - not for diagnostic use"
    return overlay
