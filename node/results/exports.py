"""Downloads for the console: findings CSV, mask PNGs + SEG zip, PDFs zip, result JSON, and the
streamed bulk forms of the CSV and the PDFs zip for many jobs at once."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.contract import PipelineResult

CSV_COLUMNS = (
    "tracking_id",
    "tracking_uid",
    "label",
    "finding_type",
    "severity",
    "segment_number",
    "frames",
    "area_mm2",
    "area_pct",
    "volume_mm3",
    "mean_intensity",
    "max_intensity",
    "intensity_unit",
    "circularity",
    "pixel_count",
    "box_score",
    "images",
    "key_image",
)
# Fixed zip timestamps: the same result always zips to the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def finding_rows(result: PipelineResult) -> Iterator[list[object]]:
    """One row per finding in :data:`CSV_COLUMNS` order, then one per anatomical structure
    (empty severity), measurements in source units."""
    for f in result.findings:
        m = f.measurements
        yield [
            f.tracking_id,
            f.tracking_uid,
            f.label.name,
            f.label.type.meaning,
            f.severity.meaning,
            "" if f.segment_number is None else f.segment_number,
            " ".join(str(i) for i in f.frame_indices),
            m.area_mm2,
            m.area_pct,
            m.volume_mm3,
            m.mean_intensity,
            m.max_intensity,
            m.intensity_unit,
            m.circularity,
            m.pixel_count,
            f.box.score if f.box else "",
            result.images_of(f),
            result.key_image_of(f),
        ]
    for st in result.structures:  # anatomy: measured, no severity (not a lesion)
        m = st.measurements
        yield [
            st.tracking_id,
            st.tracking_uid,
            st.label.name,
            st.label.type.meaning,
            "",
            st.label.value,
            " ".join(str(i) for i in st.frame_indices),
            m.area_mm2,
            m.area_pct,
            m.volume_mm3,
            m.mean_intensity,
            m.max_intensity,
            m.intensity_unit,
            "",
            m.pixel_count,
            "",
            result.images_at(st.frame_indices),
            "",
        ]


def findings_csv(result: PipelineResult) -> str:
    """One row per finding, then one per anatomical structure, measurements in source units."""
    return "".join(csv_lines(CSV_COLUMNS, finding_rows(result)))


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """The header, then each row, as CSV text one line at a time (for a streamed download)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def line(row: Sequence[object]) -> str:
        writer.writerow(row)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(header)
    for row in rows:
        yield line(row)


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data, compress_type=zipfile.ZIP_DEFLATED)


def masks_zip(result: PipelineResult, seg_path: Path | None) -> bytes:
    """A PNG per frame of the label map (pixel value = label value) plus the SEG file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if result.segmentation is not None:
            for index, frame in enumerate(result.segmentation.label_map):
                png = io.BytesIO()
                Image.fromarray(frame.astype(np.uint8)).save(png, format="PNG")
                _add(archive, f"masks/frame_{index + 1:04d}.png", png.getvalue())
        if seg_path is not None and Path(seg_path).exists():
            _add(archive, "seg.dcm", Path(seg_path).read_bytes())
    return buffer.getvalue()


def pdfs_zip(paths: Iterable[Path]) -> bytes:
    """The given files (Encapsulated PDF objects or plain PDFs) in one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in paths:
            path = Path(path)
            _add(archive, path.name, path.read_bytes())
    return buffer.getvalue()


def result_json(result: PipelineResult) -> str:
    return json.dumps(result.to_json_dict(), indent=1, sort_keys=True)


class _Chunks(io.RawIOBase):
    """A write-only, unseekable stream that hands what was written to the caller in chunks;
    ``zipfile`` then writes data descriptors instead of seeking back, so a zip is streamed."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        self._chunks.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def stream_zip(members: Iterable[tuple[str, Path | bytes]]) -> Iterator[bytes]:
    """A zip of ``(name in the zip, file or bytes)`` produced member by member: at most one
    member is in memory, so a bulk export of thousands of PDFs starts at once and stays small."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w") as archive:
        for name, content in members:
            _add(
                archive, name, content if isinstance(content, bytes) else Path(content).read_bytes()
            )
            yield sink.take()
    yield sink.take()
