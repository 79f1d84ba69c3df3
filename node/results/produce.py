"""The worker's entry point: PipelineResult + source datasets → validated Part-10 files.

A result with an explanation (classification ``explain``) also gets a Parametric Map of it, and
one with an enhancement a derived series of the denoised images (one object per source instance).

Every object is built, finalised (fixed times, deterministic UIDs, IHE AIR identification),
validated from its bytes and only then written, atomically, into ``out_dir``. SEG and SR carry the
result: if either fails nothing is returned, the job fails and nothing is sent. The overlay and the
PDF are renderings of it: one that cannot be built (an undecodable source frame, say) is left out
with a warning, and the job succeeds with warnings instead of losing the SEG and SR too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from functools import partial
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from reportlab.platypus.doctemplate import LayoutError

from core.domain import ArtifactKind
from node.results.common import finalise
from node.results.enhanced import build_enhanced, validate_enhanced
from node.results.locations import with_locations
from node.results.maps import MapLayer
from node.results.overlay import (
    build_map_overlay,
    build_overlay,
    has_content,
    overlay_map_layers,
)
from node.results.pdf import build_pdf
from node.results.pmap import build_parametric_map
from node.results.seg import SegOptions, build_segmentation
from node.results.source import clean_sources, content_time
from node.results.sr import SrOptions, build_sr
from node.results.validate import (
    ResultValidationError,
    encode,
    validate_overlay,
    validate_pdf,
    validate_pmap,
    validate_seg,
    validate_sr,
)
from pipelines.contract import PipelineResult

__all__ = [
    "OutputOptions",
    "ProducedObject",
    "ProducedResults",
    "ResultValidationError",
    "produce_results",
]
log = logging.getLogger(__name__)
# what a builder raises on input it cannot render (highdicom/pydicom/numpy/PIL/reportlab's page
# layout), besides the gate
# RuntimeError: highdicom's multi-frame builders raise it for geometry they cannot index
BUILD_ERRORS = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    RuntimeError,
    LayoutError,
)


@dataclass(frozen=True)
class OutputOptions:
    seg_type: str = "BINARY"  # or "FRACTIONAL"
    omit_empty_frames: bool = True
    overlay: bool = True
    skip_empty_overlay: bool = True  # no overlay when nothing is on it (no mask, box, finding)
    pdf: bool = True
    sr: bool = True
    seg: bool = True
    seg_segments: str = "per_finding"  # or "per_label"
    result_version: int = 1
    institution_name: str = ""
    zone: tzinfo = UTC  # the node's time zone (Settings.zone): ContentDate/Time, the PDF


@dataclass(frozen=True)
class ProducedObject:
    kind: ArtifactKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    size_bytes: int


class ProducedResults(list[ProducedObject]):
    """The objects written, in dispatch order, plus why an optional one is missing: ``warnings``
    when it failed (the job succeeds with warnings), ``notes`` when it was left out by design
    (an overlay with nothing on it)."""

    def __init__(
        self,
        objects: Iterable[ProducedObject] = (),
        warnings: Sequence[str] = (),
        notes: Sequence[str] = (),
    ):
        super().__init__(objects)
        self.warnings = tuple(warnings)
        self.notes = tuple(notes)


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


# (kind, dataset, encoded bytes, file name suffix: "" or "-<name>" of a kind's further object)
Built = list[tuple[ArtifactKind, Dataset, bytes, str]]


EMPTY_OVERLAY_NOTE = (
    "overlay not made: nothing to show (no findings, no segmented pixels, no boxes);"
    " outputs.skip_empty_overlay is on"
)


def _build_all(
    result: PipelineResult, sources: Sequence[Dataset], options: OutputOptions
) -> tuple[Built, list[str], list[str]]:
    when = content_time(result, options.zone)
    cleaned = clean_sources(sources)
    result = with_locations(result, cleaned)
    built: Built = []
    warnings: list[str] = []
    notes: list[str] = []

    def add(
        kind: ArtifactKind,
        dataset: Dataset,
        validate: Callable[[bytes], None],
        name: str = "",
        finish: Callable[[bytes], bytes] | None = None,
    ) -> None:
        finalise(dataset, result, kind, when, options.institution_name)
        data = encode(dataset)
        if finish is not None:  # the SR's image library, encoded apart
            data = finish(data)
        validate(data)
        built.append((kind, dataset, data, f"-{name}" if name else ""))

    def optional(kind: ArtifactKind, make: Callable[[], None]) -> None:
        try:
            make()
        except BUILD_ERRORS as exc:  # ResultValidationError is a ValueError too
            reason = exc.reason if isinstance(exc, ResultValidationError) else str(exc)
            warnings.append(f"{kind.value} not made: {type(exc).__name__}: {reason}"[:500])
            log.warning("optional %s left out: %s", kind.value, exc)

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
            built_seg = seg
            add(
                ArtifactKind.SEG,
                seg.dataset,
                lambda data: validate_seg(data, result, built_seg, options.seg_type.upper()),
            )
    if result.explanation is not None:
        # supplementary to the decision the SR carries, like the overlay: a map highdicom cannot
        # build for this source (a Secondary Capture with odd geometry) leaves the other results
        # and the job "succeeded with warnings"; a map that reads back different is never sent
        def add_pmap() -> None:
            pmap = build_parametric_map(result, cleaned, options.result_version)
            if pmap is not None:
                add(ArtifactKind.PMAP, pmap, lambda data: validate_pmap(data, result))

        optional(ArtifactKind.PMAP, add_pmap)
    # the pipeline asked for it: a failure fails the job like the SEG
    for index, dataset in enumerate(build_enhanced(result, cleaned, options.result_version)):
        add(ArtifactKind.ENHANCED, dataset, _enhanced_check(result, cleaned[index], index))
    if options.overlay and options.skip_empty_overlay and not has_content(result):
        notes.append(EMPTY_OVERLAY_NOTE)
    elif options.overlay:
        optional(
            ArtifactKind.OVERLAY,
            lambda: add(
                ArtifactKind.OVERLAY,
                build_overlay(result, cleaned, options.result_version),
                lambda data: validate_overlay(data, result),
            ),
        )
    if options.overlay:  # each map as a further image of the overlay series, even without one

        def add_map(layer: MapLayer) -> None:
            image = build_map_overlay(result, cleaned, options.result_version, layer)
            add(
                ArtifactKind.OVERLAY, image, lambda data: validate_overlay(data, result), layer.role
            )

        for layer in overlay_map_layers(result):
            optional(ArtifactKind.OVERLAY, partial(add_map, layer))
    if options.pdf:
        optional(
            ArtifactKind.PDF,
            lambda: add(
                ArtifactKind.PDF,
                build_pdf(result, cleaned, when, options.result_version),
                lambda data: validate_pdf(data, result),
            ),
        )
    if options.sr:
        report = build_sr(
            result, cleaned, seg, SrOptions(options.result_version, options.institution_name)
        )
        seg_uid = str(seg.dataset.SOPInstanceUID) if seg else None
        add(
            ArtifactKind.SR,
            report.dataset,
            lambda data: validate_sr(data, result, seg_uid),
            finish=report.finish,
        )
    return built, warnings, notes


def _enhanced_check(result: PipelineResult, source: Dataset, index: int) -> Callable[[bytes], None]:
    """The read-back check of the derived instance made from ``source`` (frame ``index``)."""
    assert result.enhancement is not None and result.enhancement.image is not None
    frame = result.enhancement.image[index]
    return lambda data: validate_enhanced(data, result, source, frame)


def produce_results(
    result: PipelineResult,
    sources: Sequence[pydicom.Dataset],
    options: OutputOptions,
    out_dir: Path,
) -> ProducedResults:
    """Build, validate and write every enabled object; dispatch order SEG, overlay, PDF, SR.

    ``warnings`` on the returned list name the optional objects that could not be made, ``notes``
    those left out by design."""
    try:
        built, warnings, notes = _build_all(result, sources, options)
    except ResultValidationError:
        raise
    except BUILD_ERRORS as exc:
        raise ResultValidationError(_failing_kind(exc), f"could not build: {exc}") from exc
    produced = ProducedResults(warnings=warnings, notes=notes)
    per_kind: dict[ArtifactKind, int] = {}
    for kind, dataset, data, named in sorted(built, key=lambda b: b[0].dispatch_rank):
        per_kind[kind] = per_kind.get(kind, 0) + 1
        # a derived series has one file per instance; an overlay map its own name ("-anomaly")
        suffix = f"-{per_kind[kind]:04d}" if kind is ArtifactKind.ENHANCED else named
        path = Path(out_dir) / f"{kind.value}{suffix}.dcm"
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
        "pmap": ArtifactKind.PMAP,
        "enhanced": ArtifactKind.ENHANCED,
    }
    while tb is not None:
        module = Path(tb.tb_frame.f_code.co_filename).stem
        if module in names and "node/results" in tb.tb_frame.f_code.co_filename:
            kind = names[module]
        tb = tb.tb_next
    return kind
