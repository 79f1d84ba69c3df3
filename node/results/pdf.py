"""Encapsulated PDF report: reportlab renders it, pydicom wraps it as Encapsulated PDF Storage.

One or two pages: patient/study header, key image with the mask heatmap and boxes, measurements
table, class-probability chart (with the explanation map beside it when the pipeline made one),
severity, models with versions/weights/devices, processing time
and "Not for diagnostic use". Page content is deterministic (fixed creation time, no random ids)
so a retry produces identical bytes. Text is set in embedded Unicode fonts chosen per run
(:mod:`node.results.fonts`), and names are formatted from their PN components ("MÜLLER, Jörg").
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian
from reportlab import rl_config
from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, StyleSheet1, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image as FlowImage
from reportlab.platypus import (
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from core.domain import ArtifactKind, Severity
from core.units import with_unit
from node.results.equipment import MANUFACTURER
from node.results.fonts import markup, report_fonts
from node.results.overlay import key_frame_index, render_explanation, render_overlay
from node.results.pmap import explanation_description
from node.results.source import TYPE2_PATIENT_STUDY_ATTRIBUTES, ContentTime
from node.results.uids import result_uid, series_number
from pipelines.contract import AnomalyOutput, PipelineResult

DISCLAIMER = "Not for diagnostic use. Generated automatically by an AI pipeline."

# Binary (Flate only) streams instead of ASCII85 over Flate: without reportlab's C accelerator
# (the separate rl_accel package) its pure-Python ASCII85 encoder took 0.2-0.45 s for the key
# image of a 512² CT, a quarter of results writing, and made the PDF 25 % larger. A PDF has
# carried binary streams since 1.0; this process makes no other PDFs.
rl_config.useA85 = 0


def _format_group(group: str) -> str:
    """One PN component group: "FAMILY, Prefix Given Middle Suffix"; CJK family+given unspaced;
    Arabic and Hebrew "Given Middle Family" (their own order, and no comma to upset bidi)."""
    family, given, middle, prefix, suffix = ([p.strip() for p in group.split("^")] + [""] * 5)[:5]
    if any(ord(c) >= 0x2E80 for c in family + given):  # CJK: family name first, no separator
        core = family + given + middle
    elif any("\u0590" <= c <= "\u08ff" for c in family + given):
        core = " ".join(x for x in (prefix, given, middle, family) if x)
    else:
        first = " ".join(x for x in (prefix, given, middle) if x)
        core = ", ".join(x for x in (family, first) if x)
    return f"{core} {suffix}" if suffix else core


def format_person_name(value: object) -> str:
    """A PN value as people write it: ``MÜLLER^Jörg`` → "MÜLLER, Jörg"; the ideographic and
    phonetic groups follow in parentheses (``Yamada^Tarou=山田^太郎`` → "Yamada, Tarou (山田太郎)")."""
    groups = [_format_group(g) for g in str(value or "").split("=")]
    shown = [g for g in groups if g]
    if not shown:
        return ""
    return shown[0] + (f" ({' / '.join(shown[1:])})" if len(shown) > 1 else "")


def _styles() -> StyleSheet1:
    """The sample styles, in the embedded Unicode fonts."""
    fonts = report_fonts()
    styles = getSampleStyleSheet()
    for name in ("Normal", "Title", "Heading3"):
        style = styles[name]
        style.fontName = fonts.bold if "Bold" in style.fontName else fonts.regular
    styles.add(ParagraphStyle("Cell", parent=styles["Normal"], fontSize=8, leading=10))
    return styles


def key_image_text(result: PipelineResult, frame: int) -> str:
    """The key image as the scanner numbered it: "image 17 (series 3, 42.5 mm)", with our own
    index only where the source has no InstanceNumber."""
    described = result.source_frames[frame].describe()
    return described or f"frame {frame + 1} of {len(result.source_frames)}"


def _date(value: object) -> str:
    """A DICOM date (DA, already the acquisition's local date) as people write it: 2024-05-06."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _probability_chart(result: PipelineResult, width_mm: float = 160) -> Drawing | None:
    cls = result.classification
    if cls is None:
        return None
    drawing = Drawing(width_mm * mm, 12 * mm * len(cls.classes) + 10 * mm)
    chart = HorizontalBarChart()
    chart.x, chart.y = 30 * mm, 5 * mm
    chart.width, chart.height = (width_mm - 40) * mm, 12 * mm * len(cls.classes)
    chart.data = [[round(p, 4) for p in cls.probabilities]]
    chart.valueAxis.valueMin, chart.valueAxis.valueMax = 0, 1
    chart.categoryAxis.categoryNames = list(cls.classes)
    chart.bars[0].fillColor = colors.HexColor("#c0392b")
    drawing.add(chart)
    return drawing


def render_pdf(result: PipelineResult, sources: Sequence[Dataset], when: ContentTime) -> bytes:
    """The report as PDF bytes."""
    styles = _styles()
    buffer = io.BytesIO()
    title = f"AI report: {result.pipeline_name} v{result.pipeline_version}"
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        title=title,
        author=MANUFACTURER,
        creator=MANUFACTURER,
        invariant=1,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=12 * mm,
    )
    first = sources[0]
    story: list[object] = [
        Paragraph(markup(title), styles["Title"]),
        Paragraph(f"<b>{DISCLAIMER}</b>", styles["Normal"]),
        Spacer(1, 3 * mm),
    ]
    header = [
        [
            "Patient",
            format_person_name(first.get("PatientName", "")),
            "Patient ID",
            str(first.get("PatientID", "")),
        ],
        [
            "Birth date",
            _date(first.get("PatientBirthDate", "")),
            "Sex",
            str(first.get("PatientSex", "")),
        ],
        [
            "Study date",
            _date(first.get("StudyDate", "")),
            "Accession",
            str(first.get("AccessionNumber", "")),
        ],
        ["Study", str(first.get("StudyDescription", ""))[:40], "Modality", result.modality],
    ]
    story.append(_table(header, styles, head=False))
    story.append(Spacer(1, 3 * mm))
    frame = key_frame_index(result)
    picture = Image.fromarray(render_overlay(result, sources, frame))
    picture.thumbnail((512, 512))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    png.seek(0)
    side = 80 * mm  # the longer edge: a tall whole-body NM (1024x256) must fit a page too
    scale = side / max(picture.width, picture.height)
    story += [
        Paragraph(f"Conclusion: {escape(result.conclusion())}", styles["Heading2"]),
        Paragraph(f"Key image: {escape(key_image_text(result, frame))}", styles["Heading3"]),
        FlowImage(png, width=picture.width * scale, height=picture.height * scale),
    ]
    if result.findings:
        rows = [
            [
                "Finding",
                "Severity",
                "Images",
                "Key image",
                "Area mm²",
                "Volume mm³",
                "Mean",
                "Circ.",
            ]
        ]
        rows += [
            [
                f.tracking_id,
                f.severity.meaning,
                result.images_of(f) or "-",
                result.key_image_of(f) or "-",
                _fmt(f.measurements.area_mm2),
                _fmt(f.measurements.volume_mm3),
                with_unit(_fmt(f.measurements.mean_intensity), f.measurements.intensity_unit),
                _fmt(f.measurements.circularity, 2),
            ]
            for f in result.findings
        ]
        story += [Paragraph("Measurements", styles["Heading3"]), _table(rows, styles)]
    if result.structures:  # anatomy: measured structures, never lesions (no severity)
        rows = [["Structure", "Images", "Volume ml", "Largest area mm²", "Mean"]]
        rows += [
            [
                st.tracking_id,
                result.images_at(st.frame_indices) or "-",
                _fmt(st.measurements.volume_mm3 / 1000.0 if st.measurements.volume_mm3 else None),
                _fmt(st.measurements.area_mm2),
                _fmt(st.measurements.mean_intensity),
            ]
            for st in result.structures
        ]
        story += [Paragraph("Anatomical structures", styles["Heading3"]), _table(rows, styles)]
    explained = render_explanation(result, sources, frame)
    chart = _probability_chart(result, 160 if explained is None else 120)
    if chart is not None and result.classification is not None:
        cls = result.classification
        heading = Paragraph(
            f"Classification: {cls.decision} (confidence {cls.confidence:.2f}, "
            f"threshold {cls.threshold:.2f})",
            styles["Heading3"],
        )
        if explained is None:
            story += [heading, chart]
        else:  # the map of what drove the decision, small, beside the probabilities
            table = _chart_with_explanation(chart, explained, result, styles)
            story.append(KeepTogether([heading, table]))
    if result.anomaly is not None:
        story.append(Paragraph(_anomaly_text(result.anomaly), styles["Heading3"]))
    if result.enhancement is not None:
        story.append(Paragraph(_enhancement_text(result), styles["Heading3"]))
    worst = result.summary()["severity"]
    severities = [f.severity.meaning for f in result.findings]
    story.append(
        Paragraph(
            f"Severity: {Severity(worst).meaning if worst else 'none'}"
            + (f" ({', '.join(severities)})" if severities else ""),
            styles["Normal"],
        )
    )
    models = [
        ["Model", "Version", "Task", "Weight", "Weights sha256", "Device (requested → used)", "s"]
    ]
    models += [
        [
            r.model_name,
            r.model_version,
            r.task,
            f"{r.weight:.2f}",
            r.weights_sha256[:12],
            f"{r.device_requested} → {r.device_used}",
            f"{r.seconds:.2f}",
        ]
        for r in result.model_runs
    ]
    story += [Paragraph("Models", styles["Heading3"]), _table(models, styles)]
    for warning in result.warnings:
        story.append(Paragraph(markup(f"Warning: {warning}"), styles["Normal"]))
    story.append(
        Paragraph(
            f"Processing time {result.processing_seconds:.2f} s; created "
            f"{when.display}. {DISCLAIMER}",
            styles["Normal"],
        )
    )
    doc.build(story)
    return buffer.getvalue()


def _chart_with_explanation(
    chart: Drawing, explained: np.ndarray, result: PipelineResult, styles: StyleSheet1
) -> Table:
    picture = Image.fromarray(explained)
    picture.thumbnail((256, 256))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    png.seek(0)
    side = 45 * mm
    image = FlowImage(png, width=side, height=side * picture.height / picture.width)
    caption = Paragraph(escape(f"{explanation_description(result)} (key image)"), styles["Normal"])
    table = Table([[chart, [image, caption]]], colWidths=[125 * mm, 50 * mm])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def _enhancement_text(result: PipelineResult) -> str:
    """ "Denoised series: estimated noise σ 40.1 -> 9.2 HU (-77 %), by demo-denoise-dncnn"."""
    e = result.enhancement
    assert e is not None
    unit = " HU" if result.modality.upper() == "CT" else ""
    return (
        f"Denoised series: estimated noise σ {e.sigma_before:.3g} -> {e.sigma_after:.3g}{unit} "
        f"({-e.noise_reduction_percent:+.0f} %), by {', '.join(e.members)}"
    )


def _anomaly_text(anomaly: AnomalyOutput) -> str:
    """ "Anomaly: anomalous (score 12.3, threshold 10.1 = 95th percentile of normal images)"."""
    basis = (
        "each model's score over its own threshold"
        if anomaly.normalised
        else f"{anomaly.percentile:g}th percentile of held-out normal images"
    )
    return (
        f"Anomaly: {anomaly.decision} (score {anomaly.score:.3g}, threshold "
        f"{anomaly.threshold:.3g} = {basis})"
    )


def _table(rows: list[list[str]], styles: StyleSheet1, head: bool = True) -> Table:
    """Cells as Paragraphs, so every script gets a font that has its glyphs."""
    cells = [[Paragraph(markup(str(cell)), styles["Cell"]) for cell in row] for row in rows]
    table = Table(cells, hAlign="LEFT")
    style = [("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("FONTSIZE", (0, 0), (-1, -1), 8)]
    if head:
        style.append(("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey))
    table.setStyle(TableStyle(style))
    return table


def build_pdf(
    result: PipelineResult, sources: Sequence[Dataset], when: ContentTime, result_version: int
) -> Dataset:
    """Encapsulated PDF Storage instance carrying the rendered report."""
    pdf = render_pdf(result, sources, when)
    first = sources[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = result_uid(result, ArtifactKind.PDF, "instance", result_version)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES:
        setattr(ds, keyword, first.get(keyword, ""))
    if first.get("StudyDescription"):
        ds.StudyDescription = first.StudyDescription
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = result_uid(result, ArtifactKind.PDF, "series", result_version)
    # PS3.3 C.24.2 (1C): the report shows the key image, so it cites that source instance
    key = result.source_frames[key_frame_index(result)]
    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = key.sop_class_uid
    source_ref.ReferencedSOPInstanceUID = key.sop_instance_uid
    ds.SourceInstanceSequence = [source_ref]
    ds.Modality = "DOC"
    ds.SeriesNumber = series_number(ArtifactKind.PDF)
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "SYN"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = f"AI report {result.pipeline_name} v{result.pipeline_version}"[:64]
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = when.datetime_str
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds
