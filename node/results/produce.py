"""The worker's entry point: PipelineResult + source datasets → validated Part-10 files.

Every object is built, finalised (fixed times, deterministic UIDs, IHE AIR identification),
validated from its bytes and only then written, atomically, into ``out_dir``. One failure and
nothing is returned: the job fails and nothing is sent.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from node.results.common import finalise
from node.results.locations import with_locations
from node.results.overlay import build_overlay
from node.results.pdf import build_pdf
from node.results.seg import SegOptions, build_segmentation
from node.results.source import clean_sources, content_time
from node.results.sr import SrOptions, build_sr
from node.results.validate import (
    ResultValidationError,
    encode,
    validate_overlay,
    validate_pdf,
    validate_seg,
    validate_sr,
)
from pipelines.result import PipelineResult

__all__ = ["OutputOptions", "ProducedObject", "ResultValidationError", "produce_results"]


@dataclass(frozen=True)
class OutputOptions:
    seg_type: str = "BINARY"  # or "FRACTIONAL"
    omit_empty_frames: bool = True
    overlay: bool = True
    pdf: bool = True
    sr: bool = True
    seg: bool = True
    seg_segments: str = "per_finding"  # or "per_label"
    result_version: int = 1
    institution_name: str = ""


@dataclass(frozen=True)
class ProducedObject:
    kind: ArtifactKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    size_bytes: int


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build_all(
    result: PipelineResult, sources: Sequence[Dataset], options: OutputOptions
) -> list[tuple[ArtifactKind, Dataset, bytes]]:
    when = content_time(result)
    cleaned = clean_sources(sources)
    result = with_locations(result, cleaned)
    built: list[tuple[ArtifactKind, Dataset, bytes]] = []

    def add(kind: ArtifactKind, dataset: Dataset) -> bytes:
        finalise(dataset, result, kind, when, options.institution_name)
        data = encode(dataset)
        built.append((kind, dataset, data))
        return data

    seg = None
    if options.seg:
        seg = build_segmentation(
            result,
            cleaned,
            SegOptions(
                options.seg_type.upper(),
                options.omit_empty_frames,
                options.result_version,
                options.seg_segments,
            ),
        )
        if seg is not None:
            data = add(ArtifactKind.SEG, seg.dataset)
            validate_seg(data, result, seg, options.seg_type.upper())
    if options.overlay:
        validate_overlay(
            add(ArtifactKind.OVERLAY, build_overlay(result, cleaned, options.result_version)),
            result,
        )
    if options.pdf:
        validate_pdf(
            add(ArtifactKind.PDF, build_pdf(result, cleaned, when, options.result_version)), result
        )
    if options.sr:
        report = build_sr(
            result, cleaned, seg, SrOptions(options.result_version, options.institution_name)
        )
        data = add(ArtifactKind.SR, report)
        validate_sr(data, result, str(seg.dataset.SOPInstanceUID) if seg else None)
    return built


def produce_results(
    result: PipelineResult,
    sources: Sequence[pydicom.Dataset],
    options: OutputOptions,
    out_dir: Path,
) -> list[ProducedObject]:
    """Build, validate and write every enabled object; dispatch order SEG, overlay, PDF, SR."""
    try:
        built = _build_all(result, sources, options)
    except ResultValidationError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise ResultValidationError(_failing_kind(exc), f"could not build: {exc}") from exc
    produced = []
    for kind, dataset, data in sorted(built, key=lambda b: b[0].dispatch_rank):
        path = Path(out_dir) / f"{kind.value}.dcm"
        _write_atomically(path, data)
        produced.append(
            ProducedObject(
                kind,
                path,
                str(dataset.SOPClassUID),
                str(dataset.SOPInstanceUID),
                str(dataset.SeriesInstanceUID),
                len(data),
            )
        )
    return produced


def _failing_kind(exc: BaseException) -> ArtifactKind:
    """Best guess of the object a builder exception came from, from its traceback."""
    tb = exc.__traceback__
    kind = ArtifactKind.SEG
    names = {
        "seg": ArtifactKind.SEG,
        "overlay": ArtifactKind.OVERLAY,
        "pdf": ArtifactKind.PDF,
        "sr": ArtifactKind.SR,
    }
    while tb is not None:
        module = Path(tb.tb_frame.f_code.co_filename).stem
        if module in names and "node/results" in tb.tb_frame.f_code.co_filename:
            kind = names[module]
        tb = tb.tb_next
    return kind
