"""DICOM Segmentation (BINARY or FRACTIONAL) from a PipelineResult, with highdicom.

``per_finding`` (the default): one segment per finding, labelled and tracked with the finding's
tracking ID/UID and coded with its label's SNOMED CT category/type, so each SR measurement group
can cite exactly its own lesion (dcmqi's TID 1500 practice); then one segment per anatomical
structure (an ``anatomy`` label: the organ, not a lesion), named after its label. ``per_label``: one segment per label
of the model card. Either way with algorithm identification and AUTOMATIC algorithm type. Geometry (frame of reference, plane positions, pixel
measures) comes from the source images, so 2D (CR/DX), single-frame series (CT/MR) and multi-frame
sources are all handled by highdicom. Only BINARY/FRACTIONAL: Orthanc 1.10 and dciodvfy do not know
the newer label-map SEG class.

A study where every segment is empty gets *no* SEG (``build_segmentation`` returns ``None``): there
is nothing to show, and the SR and PDF say "no findings". Segments that are empty while others are
not are kept (with no frames), so the SEG still lists everything the model looked for.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.domain import ArtifactKind, CodedConcept
from node.results.equipment import MANUFACTURER, software_versions
from node.results.locations import finding_mask
from node.results.uids import result_uid, series_number
from pipelines.contract import Finding, LabelSpec, PipelineResult, SegmentationOutput, Structure


@dataclass(frozen=True)
class SegOptions:
    seg_type: str = "BINARY"
    omit_empty_frames: bool = True
    result_version: int = 1
    segments: str = "per_finding"  # or "per_label"


@dataclass(frozen=True)
class BuiltSegmentation:
    dataset: hd.seg.Segmentation
    segment_numbers: dict[int, int]  # label value -> SEG segment number (per_label)
    # (frames, rows, cols): the segment number each pixel belongs to, what a re-read must give
    expected: np.ndarray
    # tracking UID -> number, of findings and anatomical structures
    finding_segments: dict[str, int] = field(default_factory=dict)

    def segment_of_structure(self, structure: Structure) -> int | None:
        """The segment that holds an anatomical structure: its own, else its label's."""
        if self.finding_segments:
            return self.finding_segments.get(structure.tracking_uid)
        return self.segment_numbers.get(structure.label.value)

    def segment_of(self, finding: Finding) -> int | None:
        """The segment that holds ``finding``: its own, else its label's."""
        if finding.segment_number is None:
            return None
        if self.finding_segments:
            return self.finding_segments.get(finding.tracking_uid)
        return self.segment_numbers.get(finding.segment_number)


def coded(concept: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(concept.value, concept.scheme_designator, concept.meaning)


def algorithm_identification(result: PipelineResult) -> hd.AlgorithmIdentificationSequence:
    """The pipeline as the segmenting algorithm, with its member models as parameters."""
    parameters = {run.model_name[:60]: run.model_version for run in result.model_runs}
    return hd.AlgorithmIdentificationSequence(
        name=result.pipeline_name,
        family=codes.DCM.ArtificialIntelligence,
        version=result.pipeline_version or "unknown",
        source=MANUFACTURER,
        parameters=parameters or None,
    )


def _segment_description(
    number: int,
    label: LabelSpec,
    algorithm: hd.AlgorithmIdentificationSequence,
    finding: Finding | Structure | None = None,
) -> hd.seg.SegmentDescription:
    red, green, blue = (min(max(int(c), 0), 255) for c in label.color_rgb)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=(finding.tracking_id if finding else label.name)[:64],
        tracking_id=finding.tracking_id[:64] if finding else None,
        tracking_uid=finding.tracking_uid if finding else None,
        segmented_property_category=coded(label.category),
        segmented_property_type=coded(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
    )
    if label.type_modifier is not None:  # left/right kidney: same type, laterality modifier
        modifier = Dataset()
        modifier.CodeValue = label.type_modifier.value
        modifier.CodingSchemeDesignator = label.type_modifier.scheme_designator
        modifier.CodeMeaning = label.type_modifier.meaning
        description.SegmentedPropertyTypeCodeSequence[
            0
        ].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def expected_frames(sources: Sequence[Dataset]) -> int:
    """How many mask frames the sources call for (frames of one multi-frame, or slices)."""
    if len(sources) == 1:
        return int(sources[0].get("NumberOfFrames", 1) or 1)
    return len(sources)


def _pixel_array(seg: SegmentationOutput, labels: Sequence[LabelSpec], seg_type: str) -> np.ndarray:
    """(frames, rows, cols, segments): bool for BINARY, float in [0, 1] for FRACTIONAL."""
    masks = np.stack([seg.label_map == label.value for label in labels], axis=-1)
    if seg_type == "BINARY":
        return masks
    if seg.probabilities is None:
        return masks.astype(np.float32)
    order = [i for i, _ in enumerate(seg.labels) if seg.labels[i] in labels]
    probabilities = np.clip(seg.probabilities[order], 0.0, 1.0).astype(np.float32)
    return np.moveaxis(probabilities, 0, -1)


def build_segmentation(
    result: PipelineResult, sources: Sequence[Dataset], options: SegOptions
) -> BuiltSegmentation | None:
    """The SEG for ``result``; ``None`` when it has no segmentation or every segment is empty."""
    seg = result.segmentation
    if seg is None or not seg.labels or not seg.label_map.any():
        return None
    seg_type = options.seg_type.upper()
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise ValueError(f"seg_type must be BINARY or FRACTIONAL, not {options.seg_type!r}")
    if options.segments not in ("per_finding", "per_label"):
        raise ValueError(f"segments must be per_finding or per_label, not {options.segments!r}")
    frames = expected_frames(sources)
    if seg.label_map.ndim != 3 or seg.label_map.shape[0] != frames:
        raise ValueError(
            f"label map shape {seg.label_map.shape} does not match {frames} source frame(s)"
        )
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if seg.label_map.shape[1:] != (rows, columns):
        raise ValueError(f"label map is {seg.label_map.shape[1:]}, source is {(rows, columns)}")
    algorithm = algorithm_identification(result)
    per_finding = [f for f in result.findings if f.segment_number is not None]
    if options.segments == "per_finding" and (per_finding or result.structures):
        descriptions, pixels, expected, finding_segments = _per_finding(
            result, seg, [*per_finding, *result.structures], seg_type, algorithm
        )
        numbers: dict[int, int] = {}
    else:
        labels = sorted(seg.labels, key=lambda label: label.value)
        descriptions = [
            _segment_description(number, label, algorithm)
            for number, label in enumerate(labels, start=1)
        ]
        numbers = {label.value: number for number, label in enumerate(labels, start=1)}
        lookup = np.zeros(max(int(seg.label_map.max()), *numbers) + 1, np.uint16)
        for value, number in numbers.items():
            lookup[value] = number
        expected, finding_segments = lookup[seg.label_map], {}
        # BINARY: the segment-number map itself (labels never overlap), not a stack of one
        # boolean volume per label (8 GB for 104 organs on a 300-slice CT)
        pixels = expected if seg_type == "BINARY" else _pixel_array(seg, labels, seg_type)
    dataset = hd.seg.Segmentation(
        source_images=_without_projection_spacing(sources),
        pixel_array=pixels,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=result_uid(result, ArtifactKind.SEG, "series", options.result_version),
        series_number=series_number(ArtifactKind.SEG),
        sop_instance_uid=result_uid(result, ArtifactKind.SEG, "instance", options.result_version),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=result.pipeline_name[:64],
        # a list: a tuple makes pydicom warn (highdicom's annotation says tuple[str] | str)
        software_versions=list(software_versions(result)),  # type: ignore[arg-type]
        device_serial_number=result.pipeline_version[:64] or "unknown",
        omit_empty_frames=options.omit_empty_frames,
        content_label="AI_SEGMENTATION",
        content_description=f"{result.pipeline_name} v{result.pipeline_version}"[:64],
    )
    if "PatientOrientation" not in dataset and not _has_plane_orientation(dataset):
        # General Image: PatientOrientation is type 2C when no Plane Orientation is given
        # (CR/DX without a frame of reference, a whole-body NM with one but no plane).
        dataset.PatientOrientation = sources[0].get("PatientOrientation", "")
    return BuiltSegmentation(dataset, numbers, expected, finding_segments)


def _per_finding(
    result: PipelineResult,
    seg: SegmentationOutput,
    entries: Sequence[Finding | Structure],
    seg_type: str,
    algorithm: hd.AlgorithmIdentificationSequence,
) -> tuple[list[hd.seg.SegmentDescription], np.ndarray, np.ndarray, dict[str, int]]:
    """Segments 1..N for the segment findings, then one per anatomical structure: descriptions,
    pixels for highdicom, the segment-number map a re-read must give, and tracking UID →
    segment number.

    BINARY pixels go to highdicom as that map (an integer label array: one frame per segment and
    source frame, without an (N × frames) boolean stack); FRACTIONAL ones as each finding's
    label probability inside its own pixels.
    """
    findings = [f for f in entries if isinstance(f, Finding)]
    expected = np.zeros(seg.label_map.shape, np.uint16 if len(entries) < 65535 else np.uint32)
    if not findings:
        pass
    elif seg.finding_map is not None and all(f.component is not None for f in findings):
        lookup = np.zeros(int(seg.finding_map.max()) + 1, expected.dtype)
        for number, finding in enumerate(findings, start=1):
            lookup[finding.component] = number
        if np.array_equal(lookup, np.arange(lookup.size)):  # components are 1..N in order
            expected = seg.finding_map.astype(expected.dtype)  # a copy, 5x faster than a lookup
        else:
            expected = lookup[seg.finding_map]
    else:  # a result without a finding map: each finding's label inside its box
        for number, finding in enumerate(findings, start=1):
            expected[finding_mask(result, finding) & (expected == 0)] = number
    if len(findings) < len(entries):  # anatomical structures: every pixel of their label
        lookup = np.zeros(int(seg.label_map.max()) + 1, expected.dtype)
        for number, entry in enumerate(entries, start=1):
            if isinstance(entry, Structure) and entry.label.value < lookup.size:
                lookup[entry.label.value] = number
        structure_numbers = lookup[seg.label_map]
        np.copyto(expected, structure_numbers, where=expected == 0)
        del structure_numbers
    descriptions = [
        _segment_description(number, entry.label, algorithm, entry)
        for number, entry in enumerate(entries, start=1)
    ]
    numbers = {entry.tracking_uid: number for number, entry in enumerate(entries, start=1)}
    if seg_type == "BINARY":
        return descriptions, expected, expected, numbers
    order = {label.value: i for i, label in enumerate(seg.labels)}
    fractions = np.zeros((*expected.shape, len(entries)), np.float32)
    for number, entry in enumerate(entries, start=1):
        own = expected == number
        if seg.probabilities is None:
            fractions[..., number - 1] = own
        else:
            probability = seg.probabilities[order[entry.label.value]]
            fractions[..., number - 1] = np.where(own, np.clip(probability, 0.0, 1.0), 0.0)
    return descriptions, fractions, expected, numbers


def _has_plane_orientation(dataset: Dataset) -> bool:
    frames = dataset.get("PerFrameFunctionalGroupsSequence") or [Dataset()]
    return frame_group_item(dataset, frames[0], "PlaneOrientationSequence") is not None


def _without_projection_spacing(sources: Sequence[Dataset]) -> list[Dataset]:
    """Sources for highdicom, without PixelSpacing where there is no image plane in patient space.

    A projection radiograph (CR/DX/MG) has no patient coordinate system; given its PixelSpacing,
    highdicom writes a Pixel Measures item without SliceThickness, which its own ``segread`` (and
    so our validation gate) then refuses. Real CRs usually carry only ImagerPixelSpacing and get no
    Pixel Measures at all; we make the same SEG for those that also carry PixelSpacing, and for
    images with a frame of reference but no plane (a whole-body NM secondary capture carries
    FrameOfReferenceUID and PixelSpacing without ImageOrientationPatient)."""
    out: list[Dataset] = []
    for source in sources:
        planar = "FrameOfReferenceUID" in source and (
            "ImageOrientationPatient" in source or "SharedFunctionalGroupsSequence" in source
        )
        if not planar and "PixelSpacing" in source:
            source = copy.deepcopy(source)
            del source.PixelSpacing
        out.append(source)
    return out


def frame_group_item(dataset: Dataset, frame_item: Dataset, keyword: str) -> Dataset | None:
    """A functional group macro of one SEG frame: from its per-frame item, else from the shared
    groups (highdicom moves a macro there when every frame has the same value, e.g. a single
    segment)."""
    if keyword in frame_item:
        return frame_item[keyword].value[0]  # type: ignore[no-any-return]
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        return shared[0][keyword].value[0]  # type: ignore[no-any-return]
    return None


def segment_number_of(dataset: Dataset, frame_item: Dataset) -> int:
    item = frame_group_item(dataset, frame_item, "SegmentIdentificationSequence")
    if item is None:
        raise ValueError("SEG frame without a Segment Identification Sequence")
    return int(item.ReferencedSegmentNumber)


def seg_frame_for(
    dataset: Dataset, segment_number: int, source_sop_uid: str, source_frame: int | None = None
) -> int | None:
    """The 1-based SEG frame holding ``segment_number`` for one source image (frame), if any."""
    for index, item in enumerate(dataset.PerFrameFunctionalGroupsSequence, start=1):
        if segment_number_of(dataset, item) != segment_number:
            continue
        derivations = item.get("DerivationImageSequence") or [
            d for d in [frame_group_item(dataset, item, "DerivationImageSequence")] if d is not None
        ]
        for derivation in derivations:
            for ref in derivation.get("SourceImageSequence", []):
                if ref.ReferencedSOPInstanceUID != source_sop_uid:
                    continue
                ref_frames = ref.get("ReferencedFrameNumber")
                if source_frame is None or ref_frames is None:
                    return index
                values = ref_frames if isinstance(ref_frames, list | tuple) else [ref_frames]
                if any(int(v) == source_frame for v in values):
                    return index
    return None
