"""Streaming a multipart upload straight into a staging folder inside ``data_dir``.

Starlette's form parser spools every file to ``tempfile`` (``/tmp``), outside the data directory
and before the route's own checks run. Here the request stream is fed to python-multipart and each
file part is written, chunk by chunk, into the caller's staging folder under a name made from its
position only (the user's file name is kept for messages, never used in a path). The small text
fields are collected under tight limits, and ``before_files`` (the CSRF check) runs on the fields
seen before the first file, so no file byte reaches the disk for a request that fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

FILE_FIELD = "files"
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
MAX_FILES = 1000


class UploadRefused(Exception):
    """The request cannot be staged; ``status`` is the HTTP answer, the message is for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StagedFile:
    filename: str  # as the user named it, for messages (printable, at most 80 characters)
    path: Path  # inside the staging folder


@dataclass
class StagedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[StagedFile] = field(default_factory=list)


def display_name(raw: str) -> str:
    """The last component of a browser-sent file name, printable, at most 80 characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[-80:] or "file"


def disk_name(index: int, filename: str) -> str:
    """The staged file's name: its position only. The user's file name never becomes a path."""
    return f"{index:04d}.upload"


class _Collector:
    """python-multipart callbacks: fields into memory (bounded), file data queued for writing."""

    def __init__(self, folder: Path, before_files: Callable[[dict[str, str]], None]) -> None:
        self.folder = folder
        self.before_files = before_files
        self.form = StagedForm()
        self.checked = False
        self.pending: list[tuple[BinaryIO, bytes]] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: str | None = None
        self._value = bytearray()
        self._file: BinaryIO | None = None
        self._skip = False
        self.open_files: list[BinaryIO] = []

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._field, self._value, self._file, self._skip = None, bytearray(), None, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            if len(self.form.fields) >= MAX_FIELDS:
                raise UploadRefused(400, f"too many form fields (at most {MAX_FIELDS})")
            self._field = name
            return
        if name != FILE_FIELD:
            raise UploadRefused(400, f"unexpected file field {name!r}")
        filename = options[b"filename"].decode("utf-8", "replace")
        if not filename:  # a browser sends an empty part when no file was chosen
            self._skip = True
            return
        if not self.checked:
            self.before_files(self.form.fields)
            self.checked = True
        if len(self.form.files) >= MAX_FILES:
            raise UploadRefused(400, f"too many files (at most {MAX_FILES})")
        shown = display_name(filename)
        path = self.folder / disk_name(len(self.form.files), shown)
        self._file = path.open("xb")
        self.open_files.append(self._file)
        self.form.files.append(StagedFile(shown, path))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.pending.append((self._file, data[start:end]))
        elif self._field is not None:
            if len(self._value) + end - start > MAX_FIELD_BYTES:
                raise UploadRefused(400, f"form field {self._field!r} is too long")
            self._value += data[start:end]

    def on_part_end(self) -> None:
        if self._field is not None:
            self.form.fields[self._field] = self._value.decode("utf-8", "replace")
        self._field = None

    def flush(self) -> None:
        for handle, data in self.pending:
            handle.write(data)
        self.pending.clear()

    def close(self) -> None:
        for handle in self.open_files:
            handle.close()


async def stage_multipart(
    request: Request, folder: Path, before_files: Callable[[dict[str, str]], None]
) -> StagedForm:
    """Parse ``request``'s multipart body, files into ``folder``; ``before_files`` may raise.

    ``before_files`` is called once with the fields sent before the first file (or with all fields
    when there is no file). Raises :class:`UploadRefused`; ``ClientDisconnect`` passes through.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRefused(415, "send the files as multipart/form-data")
    collector = _Collector(folder, before_files)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if collector.pending:
                await run_in_threadpool(collector.flush)
        parser.finalize()
        await run_in_threadpool(collector.flush)
    except FormParserError as exc:
        raise UploadRefused(400, "the upload is not valid multipart/form-data") from exc
    finally:
        collector.close()
    if not collector.checked:
        before_files(collector.form.fields)
    return collector.form
