"""The SR's TID 1600 Image Library, encoded once from the source headers.

highdicom's ``ImageLibrary`` builds ~13 content items per source image (modality, frame of
reference, matrix, pixel spacing, position, orientation, thickness), each through its validating
constructors: ~10 ms an image, and as many again for pydicom to encode the ~250 elements. A
100-slice CT's library was most of the SR's cost, yet nearly all of its items are the same on every
slice (only the position and the image reference differ). Here each distinct descriptor item is
built once with highdicom's own constructors and encoded once by pydicom; an entry's bytes are its
image reference's encoded head followed by its descriptors' bytes, in pydicom's framing (explicit
VR little endian, sequences and items of defined length, as pydicom writes them).

The report carries a placeholder item where the library belongs; :func:`splice` replaces the
placeholder's bytes in the encoded report with the library's. The result is byte for byte what
highdicom and pydicom write for the same sources (tests/node/results/test_image_library.py).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import highdicom as hd
from highdicom._standard_utils import does_iod_have_pixel_data
from highdicom.sr.templates import _get_coded_modality
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sr.codedict import codes

from core.dicom_uids import deterministic_uid

_log = logging.getLogger(__name__)

_CONTENT_SEQUENCE = 0x0040A730
_ACQ = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
_PIXELS = hd.sr.CodedConcept(value="{pixels}", meaning="Pixels", scheme_designator="UCUM")
_UNIT_INTERVAL = hd.sr.CodedConcept(value="{-1:1}", meaning="{-1:1}", scheme_designator="UCUM")
_SOURCE = hd.sr.CodedConcept(value="260753009", meaning="Source", scheme_designator="SCT")
_CROSS_SECTIONAL = ("CT", "MR", "PT")  # highdicom's ImageLibraryEntryDescriptors
_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")

# (0040,A730) Content Sequence, explicit VR "SQ", and an item tag: pydicom gives sequences and
# items their length
_SEQUENCE = b"\x40\x00\x30\xa7SQ\x00\x00"
_ITEM = b"\xfe\xff\x00\xe0"


def _encode_head(item: Dataset) -> bytes:
    """The item's elements except its Content Sequence (the last element of a content item:
    every other attribute of one has a lower tag), as pydicom writes them in a sequence."""
    head = Dataset()
    for element in item:
        if element.tag != _CONTENT_SEQUENCE:
            if element.tag > _CONTENT_SEQUENCE:
                raise ValueError(f"content item element {element.tag} after the Content Sequence")
            head.add(element)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, head)
    return buffer.getvalue()


def _item(head: bytes, children: Sequence[bytes] = ()) -> bytes:
    """An encoded sequence item: its head, then its children as its Content Sequence."""
    body = head
    if children:
        content = b"".join(children)
        body += _SEQUENCE + struct.pack("<I", len(content)) + content
    return _ITEM + struct.pack("<I", len(body)) + body


class _Items:
    """Each distinct descriptor built (by highdicom) and encoded (by pydicom) once."""

    def __init__(self) -> None:
        self._encoded: dict[tuple[object, ...], bytes] = {}

    def get(self, key: tuple[object, ...], build: Callable[[], Dataset]) -> bytes:
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._encoded[key] = _item(_encode_head(build()))
        return encoded

    def num(self, name: Any, value: Any, unit: Any) -> bytes:
        key = ("NUM", name.value, type(value).__name__, str(value), unit.value)
        return self.get(
            key,
            lambda: hd.sr.NumContentItem(name=name, value=value, relationship_type=_ACQ, unit=unit),
        )

    def text(self, name: Any, value: Any) -> bytes:
        key = ("TEXT", name.value, str(value))
        return self.get(
            key, lambda: hd.sr.TextContentItem(name=name, value=value, relationship_type=_ACQ)
        )


@lru_cache(maxsize=64)
def _modality(sop_class_uid: str) -> Any:
    """The coded modality of an image SOP class (ValueError for a class that is no image)."""
    modality = _get_coded_modality(sop_class_uid)
    if not does_iod_have_pixel_data(sop_class_uid):
        raise ValueError(f"SOP class {sop_class_uid} is not an image")
    return modality


def _descriptors(image: Dataset, items: _Items) -> list[bytes]:
    """TID 1602 for one image: highdicom's ImageLibraryEntryDescriptors, item for item; raises
    what it raises (AttributeError for an attribute it reads as required)."""
    modality = _modality(str(image.SOPClassUID))
    out = [
        items.get(
            ("MODALITY", modality.value, modality.scheme_designator),
            lambda: hd.sr.CodeContentItem(
                name=codes.DCM.Modality, value=modality, relationship_type=_ACQ
            ),
        )
    ]
    if "FrameOfReferenceUID" in image:
        out.append(_frame_of_reference(image.FrameOfReferenceUID, items))
    out.append(items.num(codes.DCM.PixelDataRows, image.Rows, _PIXELS))
    out.append(items.num(codes.DCM.PixelDataColumns, image.Columns, _PIXELS))
    if image.Modality in _CROSS_SECTIONAL:
        spacing = image.PixelSpacing
        orientation = image.ImageOrientationPatient
        position = image.ImagePositionPatient
        mm = codes.UCUM.Millimeter
        out += [
            items.num(codes.DCM.HorizontalPixelSpacing, spacing[1], mm),
            items.num(codes.DCM.VerticalPixelSpacing, spacing[0], mm),
            items.num(codes.DCM.SliceThickness, image.SliceThickness, mm),
            items.num(codes.DCM.ImagePositionPatientX, position[0], mm),
            items.num(codes.DCM.ImagePositionPatientY, position[1], mm),
            items.num(codes.DCM.ImagePositionPatientZ, position[2], mm),
            items.num(codes.DCM.ImageOrientationPatientRowX, orientation[0], _UNIT_INTERVAL),
            items.num(codes.DCM.ImageOrientationPatientRowY, orientation[1], _UNIT_INTERVAL),
            items.num(codes.DCM.ImageOrientationPatientRowZ, orientation[2], _UNIT_INTERVAL),
            items.num(codes.DCM.ImageOrientationPatientColumnX, orientation[3], _UNIT_INTERVAL),
            items.num(codes.DCM.ImageOrientationPatientColumnY, orientation[4], _UNIT_INTERVAL),
            items.num(codes.DCM.ImageOrientationPatientColumnZ, orientation[5], _UNIT_INTERVAL),
        ]
        if hasattr(image, "SpacingBetweenSlices"):
            out.append(items.num(codes.DCM.SpacingBetweenSlices, image.SpacingBetweenSlices, mm))
    elif image.Modality in _PROJECTION:
        orientation = image.PatientOrientation
        spacing = image.ImagerPixelSpacing
        out += [
            items.text(codes.DCM.PatientOrientationRow, orientation[0]),
            items.text(codes.DCM.PatientOrientationColumn, orientation[1]),
            items.num(codes.DCM.HorizontalPixelSpacing, spacing[1], codes.UCUM.Millimeter),
            items.num(codes.DCM.VerticalPixelSpacing, spacing[0], codes.UCUM.Millimeter),
        ]
    return out


def _frame_of_reference(uid: str, items: _Items) -> bytes:
    return items.get(
        ("FOR", str(uid)),
        lambda: hd.sr.UIDRefContentItem(
            name=codes.DCM.FrameOfReferenceUID, value=uid, relationship_type=_ACQ
        ),
    )


def _built_image_head(sop_instance_uid: str, sop_class_uid: str) -> bytes:
    return _encode_head(
        hd.sr.ImageContentItem(
            name=_SOURCE,
            referenced_sop_instance_uid=sop_instance_uid,
            referenced_sop_class_uid=sop_class_uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )


def _uid_element(element: int, uid: str) -> bytes:
    """A UI element of group 0008 as pydicom writes it: explicit VR, padded with a NUL to even."""
    value = uid.encode("ascii")
    value += b"\0" * (len(value) % 2)
    return struct.pack("<HH", 0x0008, element) + b"UI" + struct.pack("<H", len(value)) + value


def _referenced_sop(sop_instance_uid: str, sop_class_uid: str) -> bytes:
    """(0008,1199) Referenced SOP Sequence of one item, the first element of an IMAGE item."""
    item = _uid_element(0x1150, sop_class_uid) + _uid_element(0x1155, sop_instance_uid)
    item = _ITEM + struct.pack("<I", len(item)) + item
    return b"\x08\x00\x99\x11SQ\x00\x00" + struct.pack("<I", len(item)) + item


def _image_head_rest(sop_instance_uid: str, sop_class_uid: str) -> bytes | None:
    """What follows the Referenced SOP Sequence in highdicom's IMAGE item (relationship, value
    type, concept name: the same for every image), from the item built and encoded for one
    image; None when its encoding does not start with :func:`_referenced_sop` as computed."""
    built = _built_image_head(sop_instance_uid, sop_class_uid)
    reference = _referenced_sop(sop_instance_uid, sop_class_uid)
    return built[len(reference) :] if built.startswith(reference) else None


def _image_head(image: Dataset, rest: dict[str, bytes | None]) -> bytes:
    """The IMAGE item's head: built by highdicom and encoded by pydicom for the first image of
    each SOP class, then the same bytes with each image's own reference (~0.4 ms an image less)."""
    uid, sop_class = str(image.SOPInstanceUID), str(image.SOPClassUID)
    if sop_class not in rest:
        rest[sop_class] = _image_head_rest(uid, sop_class)
    tail = rest[sop_class]
    if tail is None:  # not as expected: every image the slow way
        return _built_image_head(uid, sop_class)
    return _referenced_sop(uid, sop_class) + tail


@lru_cache(maxsize=2)
def _container_head(name: str) -> bytes:
    concept = codes.DCM.ImageLibrary if name == "library" else codes.DCM.ImageLibraryGroup
    return _encode_head(
        hd.sr.ContainerContentItem(
            name=concept, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )


def encode_library(sources: Sequence[Dataset]) -> bytes | None:
    """The Image Library container item, encoded as highdicom's ``ImageLibrary`` of the sources
    it can describe (one left out, with a warning, where highdicom would raise); ``None`` when
    it can describe none of them."""
    items = _Items()
    heads: dict[str, bytes | None] = {}
    groups: dict[tuple[str, ...], list[bytes]] = {}
    for image in sources:
        try:
            descriptors = _descriptors(image, items)
            modality = _modality(str(image.SOPClassUID))
        except (AttributeError, ValueError, TypeError, IndexError) as exc:
            _log.warning(
                "image %s left out of the SR image library: %s", image.get("SOPInstanceUID"), exc
            )
            continue
        key = (modality.value, modality.scheme_designator, str(image.get("FrameOfReferenceUID")))
        groups.setdefault(key, []).append(_item(_image_head(image, heads), descriptors))
    if not groups:
        return None
    # one group per modality and frame of reference, as highdicom groups them; highdicom means to
    # put the frame of reference on the group too, but tests for it on the group's first image
    # item (which never has one), so its groups carry none, and neither do these
    encoded_groups = [_item(_container_head("group"), images) for images in groups.values()]
    return _item(_container_head("library"), encoded_groups)


@dataclass(frozen=True)
class LibraryPlaceholder:
    """An item that stands where the library goes until the report is encoded."""

    item: hd.sr.TextContentItem
    encoded: bytes


def placeholder(sop_instance_uid: str) -> LibraryPlaceholder:
    """A TEXT item unique to this report (its value names the report's SOP instance)."""
    marker = deterministic_uid(sop_instance_uid, "image-library-placeholder")
    item = hd.sr.TextContentItem(
        name=codes.DCM.ImageLibrary,
        value=marker,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    return LibraryPlaceholder(item, _item(_encode_head(item)))


def _root_content_sequence(data: bytes, child_at: int) -> tuple[int, int]:
    """(offset of its length field, its length) of the Content Sequence that holds the item at
    ``child_at``: the one Content Sequence header before it whose value spans it (sequences
    before the placeholder that end before it are its earlier siblings' children)."""
    spanning = []
    start = data.find(_SEQUENCE)
    while 0 <= start < child_at:
        length = struct.unpack_from("<I", data, start + 8)[0]
        if length != 0xFFFFFFFF and start + 12 + length > child_at:
            spanning.append((start + 8, length))
        start = data.find(_SEQUENCE, start + 1)
    if len(spanning) != 1:
        raise ValueError(f"{len(spanning)} Content Sequences span the image library placeholder")
    return spanning[0]


def splice(data: bytes, marker: LibraryPlaceholder, library: bytes) -> bytes:
    """``data`` (an encoded report) with the placeholder's bytes replaced by the library's, and
    the length of the report's Content Sequence (the placeholder's parent) changed to match."""
    if data.count(marker.encoded) != 1:
        raise ValueError("the image library placeholder is not in the encoded report once")
    at = data.index(marker.encoded)
    length_at, length = _root_content_sequence(data, at)
    grown = length + len(library) - len(marker.encoded)
    return b"".join(
        (
            data[:length_at],
            struct.pack("<I", grown),
            data[length_at + 4 : at],
            library,
            data[at + len(marker.encoded) :],
        )
    )
