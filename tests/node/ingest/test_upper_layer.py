"""The acceptor's PDU codec, checked against pynetdicom's independent encoder and decoder."""

from __future__ import annotations

import struct

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context

from node.ingest import upper_layer as ul
from node.ingest.scp import negotiate_contexts

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT, IMPLICIT, J2K = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"


def pynetdicom_request(contexts: list[tuple[str, list[str]]], max_length: int = 16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = ul.DICOM_APPLICATION_CONTEXT
    primitive.calling_ae_title = "MODALITY1"
    primitive.called_ae_title = "PACSNODE"
    built = []
    for index, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * index + 1
        built.append(context)
    primitive.presentation_context_definition_list = built
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "SENDER_1"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CT, True, False
    primitive.user_information = [maximum, implementation, version, role]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_associate_rq_from_pynetdicom_is_read() -> None:
    raw = pynetdicom_request([(CT, [J2K, EXPLICIT]), (MR, [IMPLICIT])], max_length=32768)
    assert raw[0] == ul.A_ASSOCIATE_RQ
    request = ul.parse_associate_rq(raw[6:])
    assert (request.called_ae, request.calling_ae) == ("PACSNODE", "MODALITY1")
    assert request.protocol_version == 1
    assert request.application_context == ul.DICOM_APPLICATION_CONTEXT
    assert request.contexts == [
        ul.ProposedContext(1, CT, (J2K, EXPLICIT)),
        ul.ProposedContext(3, MR, (IMPLICIT,)),
    ]
    assert request.max_length == 32768
    assert (request.implementation_class_uid, request.implementation_version) == (
        "1.2.3.4",
        "SENDER_1",
    )


def test_negotiation_keeps_the_senders_preferred_syntax_and_rejects_unknowns() -> None:
    proposed = [
        ul.ProposedContext(1, CT, (J2K, EXPLICIT)),  # sender prefers JPEG 2000: it is kept
        ul.ProposedContext(3, "1.2.3.999", (EXPLICIT,)),  # not a storage SOP class
        ul.ProposedContext(5, MR, ("1.2.3.4.5",)),  # no transfer syntax we know
        ul.ProposedContext(7, "1.2.840.10008.1.1", (IMPLICIT,)),  # Verification
    ]
    assert negotiate_contexts(proposed) == [
        ul.AcceptedContext(1, ul.PC_ACCEPTANCE, J2K),
        ul.AcceptedContext(3, ul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, EXPLICIT),
        ul.AcceptedContext(5, ul.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, "1.2.3.4.5"),
        ul.AcceptedContext(7, ul.PC_ACCEPTANCE, IMPLICIT),
    ]


def test_associate_ac_is_read_by_pynetdicom() -> None:
    request = ul.parse_associate_rq(
        pynetdicom_request([(CT, [J2K]), ("1.2.3.999", [EXPLICIT])])[6:]
    )
    raw = ul.encode_associate_ac(request, negotiate_contexts(request.contexts), max_length=0,
                                 implementation_class_uid="1.2.826.0.1.3680043.8.498.1.4242",
                                 implementation_version="PACSNODE_01")  # fmt: skip
    pdu = A_ASSOCIATE_AC()
    pdu.decode(raw)
    primitive = pdu.to_primitive()
    assert primitive.called_ae_title == "PACSNODE" and primitive.calling_ae_title == "MODALITY1"
    results = {
        cx.context_id: (cx.result, cx.transfer_syntax)
        for cx in primitive.presentation_context_definition_results_list
    }
    assert results[1] == (0, [J2K])
    assert results[3][0] == ul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
    info = {type(item).__name__: item for item in primitive.user_information}
    assert info["MaximumLengthNotification"].maximum_length_received == 0
    assert (
        info["ImplementationClassUIDNotification"].implementation_class_uid
        == "1.2.826.0.1.3680043.8.498.1.4242"
    )
    assert (
        info["ImplementationVersionNameNotification"].implementation_version_name == "PACSNODE_01"
    )


def test_associate_rj_is_read_by_pynetdicom() -> None:
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(
        ul.encode_associate_rj(
            ul.RJ_TRANSIENT, ul.RJ_SOURCE_PRESENTATION, ul.RJ_PRESENTATION_LOCAL_LIMIT
        )
    )
    assert (pdu.result, pdu.source, pdu.reason_diagnostic) == (2, 3, 2)


@pytest.mark.parametrize("max_pdu", [0, 16, 4096])
def test_p_data_fragments_to_the_peers_maximum_and_round_trips(max_pdu: int) -> None:
    payload = bytes(range(256)) * 40
    raw = ul.encode_p_data(3, payload, command=False, max_pdu=max_pdu)
    offset, pieces = 0, []
    while offset < len(raw):
        pdu_type, _, length = struct.unpack_from(">BBI", raw, offset)
        assert pdu_type == ul.P_DATA_TF and (max_pdu == 0 or length <= max_pdu)
        decoded = P_DATA_TF()
        decoded.decode(raw[offset : offset + 6 + length])  # pynetdicom agrees on the framing
        pieces += list(ul.iter_pdvs(raw[offset + 6 : offset + 6 + length]))
        offset += 6 + length
    assert b"".join(bytes(p.data) for p in pieces) == payload
    assert [p.is_last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert all(p.context_id == 3 and not p.is_command for p in pieces)


@pytest.mark.parametrize("body", [
    b"\x00\x01\x00\x00" + b"PACSNODE".ljust(16) + b"X".ljust(16) + bytes(20),  # shorter than 68
    b"\x00\x01\x00\x00" + b"PACSNODE".ljust(16) + b"X".ljust(16) + bytes(32) + b"\x20\x00\x00\x40\x01",
])  # fmt: skip
def test_malformed_associate_rq_is_an_error(body: bytes) -> None:
    with pytest.raises(ul.PDUError):
        ul.parse_associate_rq(body)


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x01\x01", b"\x00\x00\x10\x00\x01\x03abc"])
def test_malformed_p_data_is_an_error(body: bytes) -> None:
    with pytest.raises(ul.PDUError):
        list(ul.iter_pdvs(body))
