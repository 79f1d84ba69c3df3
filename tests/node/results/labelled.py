"""A DICOM series and its lesion mask as the result a segmentation pipeline would give.

Shared by the labelled MR volumes (:mod:`tests.node.results.labelled_volumes`) and the results
benchmark's CT phantom (``bench/results.py``): the series is decoded as the worker decodes it,
the mask is put in the decoded (slice-normal) order, and its connected components become findings
through the pipelines' own finding builder, so the SEG, SR, PDF and overlay describe the mask.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipelines.contract import PipelineResult, SegmentationOutput, SourceSeries
from pipelines.findings import FindingContext, segment_findings_and_map
from pipelines.preprocess.decode import decode_series
from pipelines.spec import SeverityRules
from tests.node.results.factories import LESION, _model_runs


def lesion_result(
    paths: list[Path], mask: np.ndarray, modality: str, **fields: Any
) -> tuple[list[Dataset], PipelineResult]:
    """Sources (in the decoded order) and demo-3d's result whose findings are ``mask``'s lesions.

    ``mask``: (slices, rows, cols) in the order of ``paths``, non-zero where a lesion is (its
    values are kept as the label map's); ``fields`` replace the result's defaults (model runs,
    creation time, a classification...)."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    decoded = decode_series(
        SourceSeries(str(first.SeriesInstanceUID), modality, str(first.SOPClassUID), tuple(paths))
    )
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): i
              for i, p in enumerate(paths)}  # fmt: skip
    order = [by_uid[f.sop_instance_uid] for f in decoded.source_frames]
    label_map = mask[order]
    ctx = FindingContext(
        str(first.StudyInstanceUID), "demo-3d", "1.0.0", decoded.values,
        decoded.pixel_spacing_mm, decoded.slice_spacing_mm, True, decoded.intensity_unit,
        SeverityRules(),
    )  # fmt: skip
    findings, finding_map = segment_findings_and_map(ctx, label_map, (LESION,))
    result = PipelineResult(
        pipeline_name="demo-3d",
        pipeline_version="1.0.0",
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        modality=modality,
        source_frames=decoded.source_frames,
        pixel_spacing_mm=decoded.pixel_spacing_mm,
        slice_thickness_mm=decoded.slice_thickness_mm,
        model_runs=_model_runs(),
        segmentation=SegmentationOutput((LESION,), label_map, None, {}, finding_map),
        findings=tuple(findings),
        processing_seconds=1.0,
        created_at="2024-05-06T07:08:09+00:00",
    )
    sources = [pydicom.dcmread(paths[i]) for i in order]
    return sources, replace(result, **fields)
