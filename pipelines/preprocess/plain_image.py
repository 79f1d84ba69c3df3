"""What decoding needs of one plain image, read from the file's bytes without building a dataset.

Most volumes the node processes are stacks of single-frame, uncompressed little-endian grey
images (CT, MR). For those, pydicom's reader — a dataset of every element, each value converted
on access — was most of the cost of decoding a series (100 CT slices of 512²: ~0.08 s of
~0.1 s, the pixel conversion the rest). :func:`read_plain_image` walks the elements with
``struct`` instead, keeps the ~20 values :mod:`.decode` reads and converts them as pydicom does
(UI and CS: trailing NUL and space dropped; US: little-endian unsigned 16 bits; IS and DS:
Python's ``int``/``float`` of a plain decimal).

It answers only for what it can read exactly as pydicom would and returns None for anything
else, so the caller decodes that file with pydicom: another transfer syntax (compressed, big
endian, deflated), multi-frame, colour, functional groups, Modality or VOI LUT sequences, an
element it cannot walk (an unknown VR, implicit items in an explicit file, undefined-length UN),
a value that is empty where decoding needs one, multi-valued where it needs one, or not a plain
decimal, or a tag with another VR than the standard's.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNDEFINED = 0xFFFFFFFF
HEAD_BYTES = 16384  # read first: the header of a CT or MR slice is 1-6 KB
MAX_DEPTH = 16  # nested undefined-length sequences walked before handing the file to pydicom

# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        *(b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT"),
        *(b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"),
    }
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010

# tag -> VR of the values decoding reads
_WANTED = {
    0x00080016: b"UI",  # SOP Class UID
    0x00080018: b"UI",  # SOP Instance UID
    0x0020000E: b"UI",  # Series Instance UID
    0x00200011: b"IS",  # Series Number
    0x00200013: b"IS",  # Instance Number
    0x00200032: b"DS",  # Image Position (Patient)
    0x00200037: b"DS",  # Image Orientation (Patient)
    0x00280002: b"US",  # Samples per Pixel
    0x00280004: b"CS",  # Photometric Interpretation
    0x00280008: b"IS",  # Number of Frames
    0x00280010: b"US",  # Rows
    0x00280011: b"US",  # Columns
    0x00280100: b"US",  # Bits Allocated
    0x00280101: b"US",  # Bits Stored
    0x00280103: b"US",  # Pixel Representation
    0x00281050: b"DS",  # Window Center
    0x00281051: b"DS",  # Window Width
    0x00281052: b"DS",  # Rescale Intercept
    0x00281053: b"DS",  # Rescale Slope
}
# present: the image is not plain (per-frame values, LUTs, float pixels): pydicom's path
_NOT_PLAIN = frozenset(
    {
        0x00283000,  # Modality LUT Sequence
        0x00283010,  # VOI LUT Sequence
        0x52009229,  # Shared Functional Groups Sequence
        0x52009230,  # Per-frame Functional Groups Sequence
        0x7FE00008,  # Float Pixel Data
        0x7FE00009,  # Double Float Pixel Data
    }
)
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_DECIMAL = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
_INTEGER = re.compile(r" *[+-]?[0-9]+ *")
_HEADER = struct.Struct("<HH2sH")  # explicit VR: group, element, VR, 2-byte length
_IMPLICIT = struct.Struct("<HHL")  # implicit VR (and item tags): group, element, 4-byte length
_LONG = struct.Struct("<L")
_US = struct.Struct("<H")


class _NotPlain(Exception):
    """The file is not one this reader answers for (pydicom reads it)."""


class _ReadMore(_NotPlain):
    """The elements go on past the bytes read so far."""


_DECLINED = (_NotPlain, struct.error, ValueError, IndexError, UnicodeDecodeError, RecursionError)


def _past(data: bytes, size: int) -> _NotPlain:
    """What to raise for an element that runs past ``data``: read more, unless it is the file."""
    return _ReadMore() if len(data) < size else _NotPlain()


@dataclass(frozen=True)
class PlainImage:
    """The values :mod:`.decode` reads of one plain image, as pydicom would give them."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    instance_number: int | None
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    rescale: tuple[float, float]  # slope, intercept; (1, 0) unless both are in the file
    window: tuple[float, float] | None  # first centre and width, when the file has both
    position: tuple[float, ...] | None  # 3 numbers
    orientation: tuple[float, ...] | None  # 6 numbers
    path: Path
    pixel_offset: int  # where the Pixel Data's value starts in the file
    pixel_length: int

    def pixel_bytes(self, count: int) -> bytes:
        """The first ``count`` bytes of the Pixel Data, read from the file (OSError if it
        cannot be read; fewer bytes if it became shorter)."""
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.pixel_offset)
            return handle.read(min(count, self.pixel_length))


def read_plain_image(path: Path) -> PlainImage | None:
    """The values of a single-frame native little-endian grey image, or None (use pydicom).

    Only the header is read (the first ``HEAD_BYTES``; the whole file when its elements do not
    end with the pixel data there): the pixels are read where they are converted
    (``pixel_offset``), so a series' pixel bytes are never all in memory at once.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(HEAD_BYTES)
            if len(data) < size:
                try:
                    return _plain(data, size, path)
                except (_ReadMore, struct.error):  # a longer header, or elements after the pixels
                    handle.seek(0)
                    data = handle.read()
                except _DECLINED:
                    return None
    except OSError:
        return None  # pydicom names the problem
    try:
        return _plain(data, size, path)
    except _DECLINED:
        return None


def _plain(data: bytes, size: int, path: Path) -> PlainImage:
    """``data``: the file's first bytes (all of them when ``len(data) == size``)."""
    if data[128:132] != b"DICM":
        raise _NotPlain
    syntax, pos = _file_meta(data, 132)
    if syntax not in (EXPLICIT_LE, IMPLICIT_LE):
        raise _NotPlain
    implicit = syntax == IMPLICIT_LE
    if pos + 6 <= len(data):
        vr = data[pos + 4 : pos + 6]
        looks_explicit = 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B
        if looks_explicit == implicit:  # pydicom would switch the VR encoding: let it
            raise _NotPlain
    found: dict[int, tuple[int, int]] = {}
    end, pixels = _walk(data, pos, implicit, found, size)
    if end < size:
        raise _past(data, size)  # elements after the pixel data, not in ``data``
    if pixels is None or end != size:
        raise _NotPlain
    return _image(data, found, pixels, path)


def _file_meta(data: bytes, pos: int) -> tuple[str, int]:
    """The Transfer Syntax UID and where the dataset starts (group 2 is explicit VR LE)."""
    syntax = None
    while pos + 8 <= len(data):
        group, element, vr, length = _HEADER.unpack_from(data, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            length = _LONG.unpack_from(data, pos + 8)[0]
            pos += 12
        elif vr in _SHORT_VRS:
            pos += 8
        else:
            raise _NotPlain
        if length == UNDEFINED:
            raise _NotPlain
        if element == 0x0010:
            syntax = _ui(data[pos : pos + length])
        pos += length
    if syntax is None:
        raise _NotPlain
    return syntax, pos


def _walk(
    data: bytes,
    pos: int,
    implicit: bool,
    found: dict[int, tuple[int, int]] | None,
    size: int,
    depth: int = 0,
) -> tuple[int, tuple[int, int] | None]:
    """Walk a dataset's elements from ``pos``: the top level (``found`` given) to the end of
    ``data``, recording where the wanted values are, then (where it stopped, the pixel data's
    (offset, length)) — the pixel data may run past ``data`` to the file's ``size``; an
    undefined-length item's (``found`` None) to its delimiter, then (past it, None). Raises
    :class:`_NotPlain` for what it does not read as pydicom would, or that is not in ``data``."""
    end = len(data)
    pixels: tuple[int, int] | None = None
    while pos < end:
        if implicit:
            group, element, length = _IMPLICIT.unpack_from(data, pos)
            vr = None
            pos += 8
        else:
            group, element, vr, length = _HEADER.unpack_from(data, pos)
            if vr in _LONG_VRS:
                length = _LONG.unpack_from(data, pos + 8)[0]
                pos += 12
            elif vr in _SHORT_VRS:
                pos += 8
            elif group == 0xFFFE:  # item and delimiter tags have no VR
                length = _LONG.unpack_from(data, pos + 4)[0]
                pos += 8
            else:
                raise _NotPlain  # an unknown VR, or implicit VR in an explicit file
        tag = group << 16 | element
        if group == 0xFFFE:
            if found is None and tag == _ITEM_END:
                return pos, None
            raise _NotPlain
        if length == UNDEFINED:
            # a sequence (encapsulated pixel data, and UN holding implicit VR: pydicom's)
            if tag == _PIXEL_DATA or (vr is not None and vr != b"SQ") or depth >= MAX_DEPTH:
                raise _NotPlain
            pos = _skip_sequence(data, pos, implicit, size, depth + 1)
            continue
        if found is not None and tag == _PIXEL_DATA:
            if (vr is not None and vr not in (b"OB", b"OW")) or pos + length > size:
                raise _NotPlain  # truncated
            pixels = (pos, length)
            pos += length
            continue
        if pos + length > end:
            raise _past(data, size)
        if found is not None:
            if tag in _NOT_PLAIN:
                raise _NotPlain
            if tag in _WANTED:
                if vr is not None and vr != _WANTED[tag]:
                    raise _NotPlain
                found[tag] = (pos, length)
        pos += length
    if found is None:
        raise _past(data, size)  # an item without its delimiter (yet)
    return pos, pixels


def _skip_sequence(data: bytes, pos: int, implicit: bool, size: int, depth: int) -> int:
    """Past an undefined-length sequence: its items (each walked when of undefined length)
    and its delimiter."""
    while True:
        group, element, length = _IMPLICIT.unpack_from(data, pos)
        pos += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _NotPlain
        if length == UNDEFINED:
            pos = _walk(data, pos, implicit, None, size, depth)[0]
        elif pos + length > len(data):
            raise _past(data, size)
        else:
            pos += length


def _image(
    data: bytes, found: dict[int, tuple[int, int]], pixels: tuple[int, int], path: Path
) -> PlainImage:
    def raw(tag: int) -> bytes | None:
        where = found.get(tag)
        return None if where is None else data[where[0] : where[0] + where[1]]

    def required(tag: int) -> bytes:
        value = raw(tag)
        if not value:
            raise _NotPlain  # decoding would fail on it: let pydicom say why
        return value

    if _us(raw(0x00280002), default=1) != 1:
        raise _NotPlain  # colour
    frames = raw(0x00280008)
    if frames is not None and _integer(frames) not in (None, 1):
        raise _NotPlain  # multi-frame
    if _cs(required(0x00280004)) not in _GREY:
        raise _NotPlain
    window = None
    center, width = raw(0x00281050), raw(0x00281051)
    if center is not None and width is not None:
        window = (_decimals(center)[0], _decimals(width)[0])
    rescale = (1.0, 0.0)
    slope, intercept = raw(0x00281053), raw(0x00281052)
    if slope is not None and intercept is not None:
        rescale = (_decimal(slope), _decimal(intercept))
    return PlainImage(
        sop_class_uid=_ui(required(0x00080016)),
        sop_instance_uid=_ui(required(0x00080018)),
        series_instance_uid=_ui(required(0x0020000E)),
        series_number=_integer(raw(0x00200011)),
        instance_number=_integer(raw(0x00200013)),
        rows=_us(required(0x00280010)),
        columns=_us(required(0x00280011)),
        bits_allocated=_us(required(0x00280100)),
        bits_stored=_us(required(0x00280101)),
        signed=_us(required(0x00280103)) == 1,
        rescale=rescale,
        window=window,
        position=_vector(raw(0x00200032), 3),
        orientation=_vector(raw(0x00200037), 6),
        path=Path(path),
        pixel_offset=pixels[0],
        pixel_length=pixels[1],
    )


def _text(value: bytes) -> str:
    """A string value without its trailing padding (pydicom: ``rstrip(" \\x00")``)."""
    return value.decode("latin-1").rstrip(" \x00")


def _ui(value: bytes) -> str:
    text = _text(value)
    if "\\" in text:
        raise _NotPlain  # several UIDs where decoding reads one
    return text.strip()  # pydicom's UID strips


def _cs(value: bytes) -> str:
    text = _text(value)
    if "\\" in text:
        raise _NotPlain
    return text


def _us(value: bytes | None, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if value is None or len(value) != 2:
        raise _NotPlain
    return int(_US.unpack(value)[0])


def _integer(value: bytes | None) -> int | None:
    """An IS value as decoding reads it: None when absent or empty."""
    text = "" if value is None else _text(value).strip()
    if not text:
        return None
    if not _INTEGER.fullmatch(text):
        raise _NotPlain
    return int(text)


def _decimals(value: bytes) -> list[float]:
    """A DS value's numbers (pydicom: ``float`` of each, after stripping the padding)."""
    text = _text(value).strip()
    if not text:
        raise _NotPlain
    parts = text.split("\\")
    if not all(_DECIMAL.fullmatch(part) for part in parts):
        raise _NotPlain
    return [float(part) for part in parts]


def _decimal(value: bytes) -> float:
    numbers = _decimals(value)
    if len(numbers) != 1:
        raise _NotPlain
    return numbers[0]


def _vector(value: bytes | None, size: int) -> tuple[float, ...] | None:
    """Position or orientation: None when absent or empty, else exactly ``size`` numbers."""
    if value is None or not _text(value).strip():
        return None
    numbers = _decimals(value)
    if len(numbers) != size:
        raise _NotPlain
    return tuple(numbers)
