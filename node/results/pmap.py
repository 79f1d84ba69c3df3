"""DICOM Parametric Map of a classification's explanation (Grad-CAM & co.), with highdicom.

Float32 values 0..1 on the source geometry (one frame per source frame, the source's plane
positions and frame of reference via highdicom), a Real World Value Mapping that says what the
numbers mean (unitless relative importance, identity slope/intercept) and the same IHE AIR
identification as the SEG/SR (``node.results.common.finalise``). A viewer that knows Parametric
Maps (OHIF, 3D Slicer) overlays it on the source series.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.dicom_uids import deterministic_uid
from core.domain import ArtifactKind
from node.results.concepts import PRIVATE_SCHEME
from node.results.equipment import MANUFACTURER, software_versions
from node.results.seg import expected_frames
from node.results.uids import result_uid, series_number
from pipelines.contract import PipelineResult

METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "occlusion": "occlusion sensitivity",
}
# no standard code names "relative importance for a classifier's decision": the node's own scheme
QUANTITY = hd.sr.CodedConcept("explanation", PRIVATE_SCHEME, "Relative importance for decision")
LUT_LABEL = "EXPLANATION"


def with_frame_of_reference(sources: Sequence[Dataset]) -> list[Dataset]:
    """Sources for highdicom, each with a frame of reference, giving one to those without.

    The Parametric Map IOD requires the Frame of Reference module and plane position/orientation
    (the SEG does not), which a projection radiograph (CR/DX/MG) has no use for. Such a source
    gets, in a copy only highdicom reads, a frame of reference of its own (derived from its SOP
    Instance UID, so retries are identical), the identity orientation and its pixel spacing (the
    imager's, else 1 mm); the map then lies pixel for pixel on the image it cites.
    """
    out: list[Dataset] = []
    for source in sources:
        if "FrameOfReferenceUID" not in source:
            source = copy.deepcopy(source)
            source.FrameOfReferenceUID = deterministic_uid(
                "pacsnode-pmap-frame-of-reference", str(source.SOPInstanceUID)
            )
            source.PositionReferenceIndicator = ""
            spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1, 1]
            source.PixelSpacing = [float(v) for v in spacing]
            source.SliceThickness = 1.0
            source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            source.ImagePositionPatient = [0.0, 0.0, 0.0]
        out.append(source)
    return out


def explanation_description(result: PipelineResult) -> str:
    """ "Grad-CAM for abnormal": what the map shows, for the object and the console."""
    explanation = result.explanation
    if explanation is None:
        return ""
    method = METHOD_NAMES.get(explanation.method, explanation.method)
    return f"{method} for {explanation.class_name}"[:64]


def build_parametric_map(
    result: PipelineResult, sources: Sequence[Dataset], result_version: int = 1
) -> hd.pm.ParametricMap | None:
    """The explanation as a Parametric Map; ``None`` when the result has no explanation."""
    explanation = result.explanation
    if explanation is None:
        return None
    maps = np.asarray(explanation.maps, dtype=np.float32)
    frames = expected_frames(sources)
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if maps.shape != (frames, rows, columns):
        raise ValueError(
            f"explanation map shape {maps.shape} does not match the source {(frames, rows, columns)}"
        )
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=explanation_description(result),
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=QUANTITY,
    )
    pixels = np.clip(maps, 0.0, 1.0)
    dataset = hd.pm.ParametricMap(
        source_images=with_frame_of_reference(sources),
        pixel_array=pixels if frames > 1 else pixels[0],
        series_instance_uid=result_uid(result, ArtifactKind.PMAP, "series", result_version),
        series_number=series_number(ArtifactKind.PMAP),
        sop_instance_uid=result_uid(result, ArtifactKind.PMAP, "instance", result_version),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=result.pipeline_name[:64],
        software_versions=list(software_versions(result)),  # type: ignore[arg-type]
        device_serial_number=result.pipeline_version[:64] or "unknown",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="AI_EXPLANATION",
        content_description=explanation_description(result),
    )
    if "FrameOfReferenceUID" not in dataset and "PatientOrientation" not in dataset:
        dataset.PatientOrientation = sources[0].get("PatientOrientation", "")
    if "Laterality" not in dataset:  # General Series type 2C
        dataset.Laterality = sources[0].get("Laterality", "")
    return dataset
