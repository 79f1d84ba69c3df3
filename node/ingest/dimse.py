"""DIMSE command sets (PS3.7 §9.3, §E): decode a request's group 0000 and encode the responses the
receiver sends (C-ECHO-RSP, C-STORE-RSP, and a failure response to any other request).

Command sets are always Implicit VR Little Endian; only the few elements the receiver needs are
read, and the responses are built by hand (µs, where pydicom would take a millisecond). UIDs are
kept as the raw bytes the peer sent: the caller checks them (``core.dicom_uids.checked_uid``) and
decides which ones a response may name, so a malformed UID can never break the encoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
NO_DATA_SET = 0x0101
UNRECOGNISED_OPERATION = 0x0211

TAG_AFFECTED_SOP_CLASS = 0x00000002
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_MESSAGE_ID_RESPONDED = 0x00000120
TAG_DATA_SET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_AFFECTED_SOP_INSTANCE = 0x00001000


class CommandError(ValueError):
    """A command set that cannot be decoded or lacks a required element."""


@dataclass(frozen=True)
class Command:
    """The request fields the receiver acts on. The UIDs are raw values (padding included);
    ``None`` when the element is absent."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class: bytes | None = None
    affected_sop_instance: bytes | None = None


def parse_command(raw: bytes | bytearray | memoryview) -> Command:
    """Decode the elements of an Implicit VR Little Endian command set. Command Field and Message
    ID are required (without them no response can be addressed); the UIDs are checked later."""
    view = memoryview(raw)
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(view):
        if offset + 8 > len(view):
            raise CommandError("command set: element header runs past the end")
        group, element, length = struct.unpack_from("<HHI", view, offset)
        if group != 0x0000:
            raise CommandError(
                f"command set: element ({group:04X},{element:04X}) outside group 0000"
            )
        end = offset + 8 + length
        if end > len(view):
            raise CommandError(
                f"command set: element (0000,{element:04X}) of {length} bytes runs past the end"
            )
        values[element] = bytes(view[offset + 8 : end])
        offset = end

    def us(tag: int) -> int:
        value = values.get(tag)
        if value is None or len(value) < 2:
            raise CommandError(f"command set: (0000,{tag:04X}) missing")
        return int(struct.unpack_from("<H", value)[0])

    return Command(
        command_field=us(TAG_COMMAND_FIELD),
        message_id=us(TAG_MESSAGE_ID),
        has_data_set=us(TAG_DATA_SET_TYPE) != NO_DATA_SET if TAG_DATA_SET_TYPE in values else False,
        affected_sop_class=values.get(TAG_AFFECTED_SOP_CLASS),
        affected_sop_instance=values.get(TAG_AFFECTED_SOP_INSTANCE),
    )


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_response(
    request: Command, status: int, *, sop_class: str = "", sop_instance: str = ""
) -> bytes:
    """The response command set to ``request`` (its command field with bit 15 set), no data set.

    The response names only the UIDs passed in: checked UIDs the caller stands behind (for a
    C-STORE, those of the instance it stored), never the request's raw values."""
    elements = []
    if sop_class:
        elements.append(_element(TAG_AFFECTED_SOP_CLASS, _uid_value(sop_class)))
    elements += [
        _element(TAG_COMMAND_FIELD, struct.pack("<H", request.command_field | 0x8000)),
        _element(TAG_MESSAGE_ID_RESPONDED, struct.pack("<H", request.message_id)),
        _element(TAG_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
        _element(TAG_STATUS, struct.pack("<H", status)),
    ]
    if sop_instance:
        elements.append(_element(TAG_AFFECTED_SOP_INSTANCE, _uid_value(sop_instance)))
    body = b"".join(elements)
    return _element(0x00000000, struct.pack("<I", len(body))) + body
