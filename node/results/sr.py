"""TID 1500 Measurement Report (Comprehensive 3D SR) from a PipelineResult, with highdicom.sr.

Observer = the algorithm as a device; procedure reported = the source study's procedure code (or
one for the modality); image library = the source images. Per finding a measurement group with
tracking identifier/UID, finding type, measurements referencing the SEG segment, severity and the
classification result, and the detection boxes as regions on the source images.

Segments are cited by their template: on planar sources (one frame, or no patient geometry, e.g.
CR/DX) TID 1410 with the segment's SEG frame ("Referenced Segmentation Frame"); on volumes (CT/MR
series, enhanced multi-frame) TID 1411 with the "Referenced Segment". Every finding also gets a
TID 1410 group on its key slice with an SCOORD POLYLINE (its outline, or its box for a detection)
on the source image, because OHIF v3 lists and draws only groups with coordinates; it shares the
finding's tracking UID (the same finding, as viewers merge it). Because viewers merge them, each
measurement is written once per finding: area and circularity (of the largest cross-section) in the
outline's group, volume and mean intensity (of the whole finding) in the segment's; OHIF then lists
each finding once with each value once. Boxes are always SCOORD polylines; a box attached to a
finding that has other groups gets its own tracking UID and no measurements of its own.
pixelmed's DicomSRValidator accepts the mix (0 errors, tests/node/results/test_conformance.py).
Outline and box groups are also in Cornerstone3D's encoding (each NUM INFERRED FROM the group's
SCOORD, a Comment with the tracking ID, the freehand tool named in an outline's tracking
identifier), so OHIF can load them into its Measurements panel (``_infer_from_region``).

The study-level CAD summary ("with"/"without findings"), the classification decision, the class
probabilities, the conclusion and where the findings are (by InstanceNumber) are TID 1500's
document-level "Qualitative Evaluations"; a report without ROI groups has the summary and the
classification as TID 1501 groups too, so a study without findings still gets a report that says so.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from scipy import ndimage

from core.dicom_uids import deterministic_uid
from core.domain import ArtifactKind
from node.results import concepts as c
from node.results.equipment import MANUFACTURER
from node.results.geometry import frame_plane
from node.results.image_library import LibraryPlaceholder, encode_library, placeholder, splice
from node.results.locations import finding_slice_mask, outline
from node.results.overlay import key_frame_index
from node.results.seg import BuiltSegmentation, seg_frame_for
from node.results.uids import result_uid, series_number
from pipelines.contract import DetectionBox, Finding, PipelineResult, SourceFrame, Structure

_log = logging.getLogger(__name__)

Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class BuiltReport:
    """The report, and its image library encoded apart (``node.results.image_library``): what
    leaves the node is ``finish(encode(dataset))``."""

    dataset: hd.sr.Comprehensive3DSR
    placeholder: LibraryPlaceholder | None
    library: bytes | None

    def finish(self, data: bytes) -> bytes:
        """The encoded dataset with its library in place of the placeholder."""
        if self.placeholder is None or self.library is None:
            return data
        return splice(data, self.placeholder, self.library)


@dataclass(frozen=True)
class SrOptions:
    result_version: int = 1
    institution_name: str = ""


def _observer_device_uid(result: PipelineResult) -> str:
    if len(result.model_runs) == 1 and result.model_runs[0].device_uid:
        return result.model_runs[0].device_uid
    return deterministic_uid(*[result.pipeline_name, "observer-device"])


def _observation_context(result: PipelineResult) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_observer_device_uid(result),
        name=result.pipeline_name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=f"{result.pipeline_name} {result.pipeline_version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def procedure_reported(source: Dataset, modality: str) -> hd.sr.CodedConcept:
    """The source study's procedure code when CID 100 lists it, else one for the modality."""
    for item in source.get("ProcedureCodeSequence", []):
        key = (item.get("CodeValue"), item.get("CodingSchemeDesignator"))
        if key in c.PROCEDURE_CODES and item.get("CodeMeaning"):
            return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
    return c.procedure_for_modality(modality)


def _measurements(result: PipelineResult, finding: Finding | Structure) -> list[hd.sr.Measurement]:
    m = finding.measurements
    items: list[hd.sr.Measurement] = []
    if m.area_mm2 is not None:
        items.append(hd.sr.Measurement(name=c.AREA, value=float(m.area_mm2), unit=c.SQUARE_MM))
    if m.volume_mm3 is not None:
        items.append(hd.sr.Measurement(name=c.VOLUME, value=float(m.volume_mm3), unit=c.CUBIC_MM))
    if m.mean_intensity is not None:
        name, unit = c.intensity_concept(result.modality, m.intensity_unit)
        items.append(
            hd.sr.Measurement(
                name=name, value=float(m.mean_intensity), unit=unit, derivation=c.MEAN
            )
        )
    if m.circularity is not None:
        items.append(
            hd.sr.Measurement(name=c.CIRCULARITY, value=float(m.circularity), unit=c.NO_UNITS)
        )
    return items


def _classification_items(
    result: PipelineResult,
) -> tuple[list[hd.sr.QualitativeEvaluation], list[hd.sr.Measurement]]:
    cls = result.classification
    if cls is None:
        return [], []
    decision = cls.decision
    evaluation = hd.sr.QualitativeEvaluation(
        c.CLASSIFICATION_RESULT, c.class_concept(cls, decision)
    )
    probability = hd.sr.Measurement(
        name=c.PROBABILITY,
        value=float(cls.probabilities[cls.classes.index(decision)]),
        unit=c.NO_UNITS,
    )
    return [evaluation], [probability]


def _source_frame_ref(frame: SourceFrame) -> dict[str, object]:
    return {
        "referenced_sop_class_uid": frame.sop_class_uid,
        "referenced_sop_instance_uid": frame.sop_instance_uid,
        "referenced_frame_numbers": [frame.frame_number] if frame.frame_number else None,
    }


def _source_dataset(
    sources: Sequence[Dataset], result: PipelineResult, frame_index: int
) -> Dataset:
    return sources[0] if len(sources) == 1 else sources[frame_index]


def _box_group(
    box: DetectionBox,
    tracking: hd.sr.TrackingIdentifier,
    label: str,
    result: PipelineResult,
    common: dict[str, object],
) -> Group:
    """A closed rectangle as an SCOORD POLYLINE on its source frame (TID 1410), in volumes too.

    Box edges are pixel edges, which is what SCOORD coordinates are (0.0 = the top-left pixel's
    outer corner). A 3D "Volume Surface" (SCOORD3D POLYGON) is not used: OHIF v3's stack viewport
    fails on it (``isPlaneViewable`` TypeError) and stops drawing the report.
    """
    frame = result.source_frames[box.frame_index]
    columns = np.array([box.x0, box.x1, box.x1, box.x0, box.x0], dtype=float)
    rows = np.array([box.y0, box.y0, box.y1, box.y1, box.y0], dtype=float)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.stack([columns, rows], axis=1),
        source_image=hd.sr.SourceImageForRegion(**_source_frame_ref(frame)),  # type: ignore[arg-type]
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        **common,  # type: ignore[arg-type]
    )
    _cornerstone_encoding(group, label)
    return group


# Cornerstone3D's SR adapters (OHIF v3 hydrates SRs into its Measurements panel with them) pick
# the tool by this Tracking Identifier prefix; the finding's own tracking ID follows it.
FREEHAND_TRACKING_PREFIX = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"


def _cornerstone_encoding(group: Group, label: str) -> None:
    """Name a TID 1410 group for OHIF: Cornerstone's SR adapters label the measurement they
    hydrate with the group's Comment (DCM 121106). See ``_infer_from_region`` for the rest."""
    group[0].ContentSequence.append(_text(c.COMMENT, label))


_CONTENT_SEQUENCE = 0x0040A730


def _infer_from_region(report: Dataset) -> None:
    """Tie each NUM of a TID 1410 group to the group's region: a copy of its SCOORD as an
    INFERRED FROM child (TID 300's "Image or Spatial Coordinates", TID 320: no concept name).

    Cornerstone's SR adapters (OHIF v3 hydrates an SR into its Measurements panel with them)
    read a group's coordinates from its first NUM's children, not from the group's own SCOORD,
    and fail ("No spatial coordinates group found") without them. highdicom's Measurement cannot
    hold an SCOORD child, so it is added on the built report, after highdicom's checks.
    """
    for container in report.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in container.ContentSequence:
            items = list(group.ContentSequence)
            region = next((item for item in items if item.ValueType == "SCOORD"), None)
            if region is None:
                continue
            for item in items:
                if item.ValueType != "NUM":
                    continue
                child = Dataset()
                for element in region:
                    if element.keyword != "ConceptNameCodeSequence":
                        child.add(copy.deepcopy(element))
                child.RelationshipType = hd.sr.RelationshipTypeValues.INFERRED_FROM.value
                # set as a plain element: highdicom's setter wants named (highdicom) items
                children = DicomSequence([*item.get("ContentSequence", []), child])
                item.add_new(_CONTENT_SEQUENCE, "SQ", children)


def _is_planar_report(result: PipelineResult, sources: Sequence[Dataset]) -> bool:
    """TID 1410 groups for one-frame results and sources without patient geometry."""
    if len(result.source_frames) <= 1:
        return True
    first = result.source_frames[0]
    return frame_plane(_source_dataset(sources, result, 0), first.frame_number) is None


def _bbox_as_box(finding: Finding) -> DetectionBox:
    f0, r0, c0, _f1, r1, c1 = finding.measurements.bbox
    frame = finding.frame_indices[len(finding.frame_indices) // 2] if finding.frame_indices else f0
    return DetectionBox(
        frame, float(c0), float(r0), float(c1 + 1), float(r1 + 1), finding.label, 1.0
    )


_KEY_SLICE_MEASURES = (c.AREA, c.CIRCULARITY)


def _of_key_slice(measurement: hd.sr.Measurement) -> bool:
    """Area and circularity are of the largest cross-section, the key slice the outline is on;
    volume and mean intensity are of the whole finding, its segment.

    Each measurement is written in one group only: viewers merge a finding's groups by tracking
    UID (OHIF v3 concatenates their measurements), so one written in both is listed twice."""
    return any(measurement.name == name for name in _KEY_SLICE_MEASURES)


def _finding_groups(
    finding: Finding,
    result: PipelineResult,
    sources: Sequence[Dataset],
    seg: BuiltSegmentation | None,
    planar: bool,
) -> list[Group]:
    """The finding's groups: its own segment (volume, or SEG frame on planar sources), its planar
    ROI on its key slice (outline, or box for a detection) that viewers list and draw, and an
    attached detection box."""
    tracking = hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id)
    has_outline = finding.segment_number is not None and result.segmentation is not None
    measurements = _measurements(result, finding)
    common = {
        "finding_type": c.coded(finding.label.type),
        "finding_category": c.coded(finding.label.category),
        "measurements": measurements,
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(c.SEVERITY, c.SEVERITY_VALUES[finding.severity]),
            *_classification_items(result)[0],
        ],
    }
    segment_number = seg.segment_of(finding) if seg is not None else None
    groups: list[Group] = []
    if segment_number is not None and seg is not None:
        whole = [m for m in measurements if not _of_key_slice(m)] if has_outline else measurements
        group = _segment_group(
            finding,
            result,
            seg,
            segment_number,
            tracking,
            {**common, "measurements": whole},
            planar,
        )
        if group is not None:
            groups.append(group)
    if has_outline:
        cited = bool(groups)  # the segment's group holds the whole-finding measurements
        slice_measures = [m for m in measurements if _of_key_slice(m) or not cited]
        outline_common = {
            **common,
            "measurements": [m for m in slice_measures if m.name != c.VOLUME],
        }
        groups.append(_outline_group(finding, result, tracking, outline_common))
    box = finding.box
    if box is None and not groups:
        box = _bbox_as_box(finding)  # no pixels to outline: the finding's bounding box instead
    if box is not None:
        box_tracking, box_label, box_common = tracking, finding.tracking_id, common
        if groups:  # one region per group: the box gets its own group and tracking UID
            box_label = f"{finding.tracking_id} box"[:64]
            box_tracking = hd.sr.TrackingIdentifier(
                uid=deterministic_uid(*[finding.tracking_uid, "box"]), identifier=box_label
            )
            # the finding's measurements are its segment's and outline's, not the box's: a
            # viewer listing the box would otherwise show them a second time as the box's own
            box_common = {**common, "measurements": None}
        groups.append(_box_group(box, box_tracking, box_label, result, box_common))
    return groups


def _outline_group(
    finding: Finding,
    result: PipelineResult,
    tracking: hd.sr.TrackingIdentifier,
    common: dict[str, object],
) -> Group:
    """TID 1410: the finding's outline on its key slice as a closed SCOORD polyline (column, row)
    on the source image; OHIF v3 lists and draws only groups with such coordinates. ``common``
    holds the measurements of this slice (see ``_of_key_slice``)."""
    index = result.key_index_of(finding)
    frame = result.source_frames[index]
    points = outline(finding_slice_mask(result, finding, index))
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=hd.sr.SourceImageForRegion(**_source_frame_ref(frame)),  # type: ignore[arg-type]
    )
    # the tool prefix lets Cornerstone's SR adapter (OHIF) hydrate the outline as a freehand ROI
    tool_tracking = hd.sr.TrackingIdentifier(
        uid=finding.tracking_uid, identifier=f"{FREEHAND_TRACKING_PREFIX}:{finding.tracking_id}"
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tool_tracking,
        referenced_region=region,
        **common,  # type: ignore[arg-type]
    )
    _cornerstone_encoding(group, finding.tracking_id)
    return group


def _structure_groups(
    structure: Structure,
    result: PipelineResult,
    seg: BuiltSegmentation | None,
    planar: bool,
) -> list[Group]:
    """An anatomical structure: its segment with its measurements, no severity (not a lesion)."""
    segment_number = seg.segment_of_structure(structure) if seg is not None else None
    if segment_number is None or seg is None:
        return []
    tracking = hd.sr.TrackingIdentifier(
        uid=structure.tracking_uid, identifier=structure.tracking_id[:64]
    )
    common: dict[str, object] = {
        "finding_type": c.coded(structure.label.type),
        "finding_category": c.coded(structure.label.category),
        "measurements": _measurements(result, structure),
    }
    group = _segment_group(structure, result, seg, segment_number, tracking, common, planar)
    return [group] if group is not None else []


def _segment_group(
    finding: Finding | Structure,
    result: PipelineResult,
    seg: BuiltSegmentation,
    segment_number: int,
    tracking: hd.sr.TrackingIdentifier,
    common: dict[str, object],
    planar: bool,
) -> Group | None:
    if planar:
        return _segment_frame_group(finding, result, seg, segment_number, tracking, common)
    frames = [result.source_frames[i] for i in finding.frame_indices]
    reference_3d = hd.sr.ReferencedSegment(
        sop_class_uid=seg.dataset.SOPClassUID,
        sop_instance_uid=seg.dataset.SOPInstanceUID,
        segment_number=segment_number,
        source_images=[hd.sr.SourceImageForSegmentation(**_source_frame_ref(f)) for f in frames]  # type: ignore[arg-type]
        if frames
        else None,
        source_series=None
        if frames
        else hd.sr.SourceSeriesForSegmentation(result.series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=reference_3d,
        **common,  # type: ignore[arg-type]
    )


def _segment_frame_group(
    finding: Finding | Structure,
    result: PipelineResult,
    seg: BuiltSegmentation,
    segment_number: int,
    tracking: hd.sr.TrackingIdentifier,
    common: dict[str, object],
) -> Group | None:
    """TID 1410: the SEG frame of the segment on the finding's (central) source frame."""
    indices = finding.frame_indices or (0,)
    frame = result.source_frames[indices[len(indices) // 2]]
    seg_frame = seg_frame_for(
        seg.dataset, segment_number, frame.sop_instance_uid, frame.frame_number
    )
    if seg_frame is None:  # empty frames omitted: nothing of this segment on that frame
        _log.warning("finding %s has no SEG frame to cite", finding.tracking_id)
        return None
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.dataset.SOPClassUID,
        sop_instance_uid=seg.dataset.SOPInstanceUID,
        frame_number=seg_frame,
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation(**_source_frame_ref(frame)),  # type: ignore[arg-type]
    )
    # highdicom writes both Referenced Frame Number and Referenced Segment Number; PS3.3 (and
    # dciodvfy) allow the segment number only without a frame number. The frame names the segment.
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=reference,
        **common,  # type: ignore[arg-type]
    )


def _text(name: object, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name,  # type: ignore[arg-type]
        value=value[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _located_texts(result: PipelineResult, key_frame: int) -> list[hd.sr.TextContentItem]:
    """The conclusion (Impression), the key image and each finding where a reader finds it, by
    the scanner's InstanceNumber/SeriesNumber and slice position, as readable text."""
    items = [_text(c.IMPRESSION, result.conclusion())]
    key = result.source_frames[key_frame].describe()
    if key:
        items.append(_text(c.KEY_IMAGES, key))
    for finding in result.findings:
        where = [
            f"images {images}" if (images := result.images_of(finding)) else "",
            f"key {key_image}" if (key_image := result.key_image_of(finding)) else "",
        ]
        located = ", ".join(w for w in where if w)
        text = f"{finding.tracking_id} ({finding.severity.meaning})"
        items.append(_text(c.FINDING, f"{text}: {located}" if located else text))
    return items


def _qualitative_evaluations(result: PipelineResult, key_frame: int) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: study-level CAD summary, decision, class probabilities, the conclusion
    and where the key image and each finding are."""
    summary = c.cad_summary(result)
    cls = result.classification
    coded = [(c.CAD_SUMMARY, summary)]
    if cls is not None:
        coded.append((c.CLASSIFICATION_RESULT, c.class_concept(cls, cls.decision)))
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for name, value in coded
    ]
    for name, value in zip(cls.classes, cls.probabilities, strict=True) if cls else ():
        items.append(
            hd.sr.TextContentItem(
                name=c.PROBABILITY,
                value=f"{name}: {float(value):.4f}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if result.anomaly is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=c.ANOMALY_RESULT,
                value=c.ANOMALY_VALUES[result.anomaly.anomalous],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    items.extend(_located_texts(result, key_frame))
    container = hd.sr.ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _enhancement_groups(
    result: PipelineResult,
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Study level (TID 1501): the noise σ estimated from the source and from the denoised
    series, in the source's units (HU for CT), the quality figures where no reference exists."""
    enhancement = result.enhancement
    if enhancement is None:
        return []
    unit = c.HOUNSFIELD if result.modality.upper() == "CT" else c.ARBITRARY_UNIT
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=_summary_uid(result, "enhancement"), identifier="image denoising"
            ),
            finding_type=c.ENHANCEMENT_FINDING,
            measurements=[
                hd.sr.Measurement(
                    name=c.NOISE_SIGMA_BEFORE, value=float(enhancement.sigma_before), unit=unit
                ),
                hd.sr.Measurement(
                    name=c.NOISE_SIGMA_AFTER, value=float(enhancement.sigma_after), unit=unit
                ),
            ],
        )
    ]


def _summary_uid(result: PipelineResult, part: str) -> str:
    sources = [result.study_instance_uid, result.pipeline_name, result.pipeline_version, part]
    return deterministic_uid(*sources)


def _summary_groups(result: PipelineResult) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Study level: CAD summary (with/without findings), the decision, one group per class."""
    summary = c.cad_summary(result)
    evaluations, probability = _classification_items(result)
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=_summary_uid(result, "summary"), identifier="study summary"
            ),
            finding_type=c.FINDING,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(c.CAD_SUMMARY, summary),
                *evaluations,
            ],
            measurements=probability or None,
        )
    ]
    cls = result.classification
    for name, value in zip(cls.classes, cls.probabilities, strict=True) if cls else ():
        assert cls is not None
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_summary_uid(result, f"class:{name}"), identifier=f"class {name}"[:64]
                ),
                finding_type=c.class_concept(cls, name),
                measurements=[
                    hd.sr.Measurement(name=c.PROBABILITY, value=float(value), unit=c.NO_UNITS)
                ],
            )
        )
    return groups


def _anomaly_content(result: PipelineResult) -> dict[str, object]:
    """The anomaly group's finding type, score, calibrated threshold and decision."""
    anomaly = result.anomaly
    assert anomaly is not None
    return {
        "finding_type": c.ANOMALY_FINDING,
        "measurements": [
            hd.sr.Measurement(name=c.ANOMALY_SCORE, value=float(anomaly.score), unit=c.NO_UNITS),
            hd.sr.Measurement(
                name=c.ANOMALY_THRESHOLD, value=float(anomaly.threshold), unit=c.NO_UNITS
            ),
        ],
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(c.ANOMALY_RESULT, c.ANOMALY_VALUES[anomaly.anomalous])
        ],
    }


def anomaly_peak_box(result: PipelineResult) -> tuple[int, int, int, int, int] | None:
    """(frame, row0, col0, row1, col1), exclusive ends: the map's hottest region on the frame with
    the highest score (the connected pixels at >= 80 % of that frame's peak around the peak)."""
    anomaly = result.anomaly
    if anomaly is None or anomaly.map is None or len(anomaly.map) != len(result.source_frames):
        return None
    frame = int(np.argmax(anomaly.map.reshape(len(anomaly.map), -1).max(axis=1)))
    plane = anomaly.map[frame]
    peak = np.unravel_index(int(np.argmax(plane)), plane.shape)
    top = float(plane[peak])
    if not np.isfinite(top) or top <= 0:
        return None
    labels, _count = ndimage.label(plane >= 0.8 * top)
    rows, cols = np.nonzero(labels == labels[peak])
    return frame, int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _anomaly_groups(result: PipelineResult) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Study level (TID 1501): the anomaly score, its calibrated threshold and the decision."""
    if result.anomaly is None:
        return []
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=_summary_uid(result, "anomaly"), identifier="image anomaly"
            ),
            **_anomaly_content(result),  # type: ignore[arg-type]
        )
    ]


def _anomaly_region_group(
    result: PipelineResult,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1410: the same figures on the map's hottest region (a box on its source frame), for
    reports with ROI groups: TID 1500 validators refuse a plain 1501 group after 1410/1411 ones,
    and viewers list and draw only groups with coordinates."""
    box = anomaly_peak_box(result)
    if box is None:
        return None
    frame_index, r0, c0, r1, c1 = box
    columns = np.array([c0, c1, c1, c0, c0], dtype=float)
    rows = np.array([r0, r0, r1, r1, r0], dtype=float)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.stack([columns, rows], axis=1),
        source_image=hd.sr.SourceImageForRegion(
            **_source_frame_ref(result.source_frames[frame_index])  # type: ignore[arg-type]
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_summary_uid(result, "anomaly"), identifier="image anomaly"
        ),
        referenced_region=region,
        **_anomaly_content(result),  # type: ignore[arg-type]
    )


def _measurement_report(
    result: PipelineResult,
    sources: Sequence[Dataset],
    groups: list[Group],
    library: LibraryPlaceholder | None,
) -> hd.sr.MeasurementReport:
    """TID 1500; the image library (row 4, before the Imaging Measurements) is ``library``'s
    placeholder, replaced by the encoded library when the report is encoded."""
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result),
        procedure_reported=procedure_reported(sources[0], result.modality),
        imaging_measurements=groups,
    )
    if library is not None:
        content = report[0].ContentSequence
        content.insert(len(content) - 1, library.item)
    return report


def _document(
    report: hd.sr.MeasurementReport, evidence: Sequence[Dataset], **kwargs: object
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR around ``report``, with the same bytes as highdicom's constructor
    given the whole report, without its cost.

    highdicom's constructor deep-copies the content tree and parses the copy back into its own
    item types (for ``.content``): seconds for a 100-image library, three quarters of building
    the SR. It is given the root container with an empty Content Sequence (the header, evidence and flags
    come from ``evidence`` alone: every source and the SEG are evidence whether cited or not), and
    the root's elements are then set on the document as highdicom sets them. ``.content`` of the
    returned document is that childless root; what leaves the node is re-read from its bytes.
    """
    root = report[0]
    childless = Dataset()
    for element in root:
        if element.tag != _CONTENT_SEQUENCE:
            childless.add(element)
    childless.add_new(_CONTENT_SEQUENCE, "SQ", DicomSequence())
    document = hd.sr.Comprehensive3DSR(evidence=evidence, content=childless, **kwargs)  # type: ignore[arg-type]
    for tag, value in root.items():
        document[tag] = value
    return document


_GEOMETRY_VALUE_TYPES = {"SCOORD", "SCOORD3D", "IMAGE", "COMPOSITE"}
_FINDING_NAMES = {("121071", "DCM"), ("276214006", "SCT")}  # Finding, Finding category


def _template_row_order(report: Dataset) -> None:
    """Put each measurement group's items in TID 1410/1411/1501 row order.

    highdicom appends the image region / referenced segment after the measurements; the
    templates (and pixelmed's validator) want context, finding, geometry, then measurements.
    """
    for container in report.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in container.ContentSequence:
            items = list(group.ContentSequence)

            def rank(item: Dataset) -> int:
                if item.RelationshipType == "HAS OBS CONTEXT":
                    return 0
                name = item.ConceptNameCodeSequence[0]
                if (name.CodeValue, name.CodingSchemeDesignator) in _FINDING_NAMES:
                    return 1
                return 2 if item.ValueType in _GEOMETRY_VALUE_TYPES else 3

            group.ContentSequence = sorted(items, key=rank)  # stable: keeps order within a rank


def build_sr(
    result: PipelineResult,
    sources: Sequence[Dataset],
    seg: BuiltSegmentation | None,
    options: SrOptions,
) -> BuiltReport:
    """The TID 1500 report; evidence = the sources and the SEG it cites."""
    planar_report = _is_planar_report(result, sources)
    roi_groups: list[Group] = []
    for finding in result.findings:
        roi_groups.extend(_finding_groups(finding, result, sources, seg, planar_report))
    for structure in result.structures:
        roi_groups.extend(_structure_groups(structure, result, seg, planar_report))
    # TID 1500 lists planar (1410), then volumetric (1411), then plain (1501) groups; validators
    # match the groups against the rows in that order.
    planar = [
        g for g in roi_groups if isinstance(g, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
    ]
    volumetric = [
        g
        for g in roi_groups
        if not isinstance(g, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
    ]
    if roi_groups:  # the anomaly's region joins the planar groups (text only without a map)
        anomaly_region = _anomaly_region_group(result)
        planar += [anomaly_region] if anomaly_region is not None else []
        groups: list[Group] = [*planar, *volumetric]
    else:
        groups = [*_summary_groups(result), *_anomaly_groups(result)]
    groups += _enhancement_groups(result)  # a plain (TID 1501) group: after the ROI ones
    library = encode_library(sources)
    sop_instance_uid = result_uid(result, ArtifactKind.SR, "instance", options.result_version)
    marker = placeholder(sop_instance_uid) if library is not None else None
    report = _measurement_report(result, sources, groups, marker)
    _template_row_order(report[0])
    report[0].ContentSequence.append(_qualitative_evaluations(result, key_frame_index(result)))
    evidence = [*sources, *([seg.dataset] if seg is not None else [])]
    document = _document(
        report,
        evidence,
        series_instance_uid=result_uid(result, ArtifactKind.SR, "series", options.result_version),
        series_number=series_number(ArtifactKind.SR),
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        institution_name=options.institution_name or None,
    )
    _infer_from_region(document)
    # the private codes (circularity, mean intensity, anomaly score...) name their scheme
    document.CodingSchemeIdentificationSequence = [c.private_scheme_identification()]
    return BuiltReport(document, marker, library)
