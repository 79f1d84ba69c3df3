"""DIMSE command sets: requests encoded by pynetdicom are read, responses are read back by pydicom."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

from node.ingest import dimse

CT = "1.2.840.10008.5.1.4.1.1.2"


def pynetdicom_command(message: object) -> bytes:
    raw = encode(message.command_set, True, True)  # type: ignore[attr-defined]
    assert raw is not None
    return raw


def test_c_store_request_and_response() -> None:
    primitive = C_STORE()
    primitive.MessageID, primitive.AffectedSOPClassUID = 7, CT
    primitive.AffectedSOPInstanceUID, primitive.Priority = "1.2.3.4.5", 0
    primitive.DataSet = BytesIO(b"\x08\x00\x16\x00")  # any data set: the command says one follows
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    command = dimse.parse_command(pynetdicom_command(message))
    assert command == dimse.Command(dimse.C_STORE_RQ, 7, True, CT.encode() + b"\0", b"1.2.3.4.5\0")

    stored = dimse.encode_response(command, 0x0000, sop_class=CT, sop_instance="1.2.3.4.5")
    response = decode(BytesIO(stored), True, True)
    assert response.CommandField == 0x8001 and response.MessageIDBeingRespondedTo == 7
    assert response.Status == 0x0000 and response.CommandDataSetType == 0x0101
    assert response.AffectedSOPClassUID == CT and response.AffectedSOPInstanceUID == "1.2.3.4.5"
    assert response.CommandGroupLength == len(stored) - 12


def test_a_failure_response_names_no_uid_it_was_not_given() -> None:
    """The request's raw UIDs never reach the response: only what the caller checked and stored."""
    command = dimse.Command(dimse.C_STORE_RQ, 9, True, b"1.2.\xc3\xa9", b"1.2.3\xff")
    response = decode(BytesIO(dimse.encode_response(command, 0xC000)), True, True)
    assert response.Status == 0xC000 and response.MessageIDBeingRespondedTo == 9
    assert "AffectedSOPClassUID" not in response and "AffectedSOPInstanceUID" not in response


def test_c_echo_request_has_no_data_set() -> None:
    primitive = C_ECHO()
    primitive.MessageID, primitive.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    command = dimse.parse_command(pynetdicom_command(message))
    assert command.command_field == dimse.C_ECHO_RQ and not command.has_data_set


@pytest.mark.parametrize("raw", [
    b"\x00\x00\x00\x01\x02\x00\x00\x00",  # header only: length 2 but no value
    b"\x08\x00\x18\x00\x02\x00\x00\x00AB",  # element outside group 0000
    b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00",  # no Command Field
    b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00",  # no Message ID: no response can be addressed
])  # fmt: skip
def test_malformed_command_sets_are_errors(raw: bytes) -> None:
    with pytest.raises(dimse.CommandError):
        dimse.parse_command(raw)
