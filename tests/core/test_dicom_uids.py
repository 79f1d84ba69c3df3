"""UIDs as every entry point checks them (PS3.5 §9.1, with the padding peers really send)."""

from __future__ import annotations

import pytest

from core.dicom_uids import (
    IMPLEMENTATION_CLASS_UID,
    UID_MAX_LENGTH,
    InvalidUIDError,
    checked_uid,
    deterministic_uid,
    is_valid_uid,
)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2"),
        ("1.2.3\0", "1.2.3"),
        ("1.2.3 ", "1.2.3"),
        (b"1.2.3\0", "1.2.3"),
        ("1.2.03", "1.2.03"),  # leading zero: outside the standard, accepted like DCMTK and Orthanc
        ("1." + "2" * (UID_MAX_LENGTH - 2), "1." + "2" * (UID_MAX_LENGTH - 2)),
    ],
)
def test_valid_uids_come_back_clean(raw: object, clean: str) -> None:
    assert checked_uid(raw, "StudyInstanceUID") == clean


@pytest.mark.parametrize(
    "raw",
    [
        "../../../../tmp/x",
        "/etc/passwd",
        "1.2.3/4",
        "1.2\0.3",
        "1.2.3a",
        "1.2.é",
        b"1.2.\xe9",
        "1..2",
        ".1.2",
        "1.2.",
        "",
        "\0",
        "1." + "2" * (UID_MAX_LENGTH - 1),
        "1.2 .3",
        123,
    ],
)
def test_hostile_or_broken_uids_are_refused_with_the_attribute_named(raw: object) -> None:
    with pytest.raises(InvalidUIDError, match="StudyInstanceUID"):
        checked_uid(raw, "StudyInstanceUID")
    assert not is_valid_uid(raw)


def test_implementation_class_uid_is_under_the_projects_own_root() -> None:
    assert checked_uid(IMPLEMENTATION_CLASS_UID, "ImplementationClassUID").startswith("2.25.")
    assert not IMPLEMENTATION_CLASS_UID.startswith("1.2.826.0.1.3680043.8.498")  # pydicom's root


def test_deterministic_uids_are_stable_valid_and_distinct() -> None:
    """The node's one derived-UID scheme: 2.25 + 128 bits, the same inputs give the same UID."""
    uid = deterministic_uid("1.2.3", "demo", "1.0", "lesion-1")
    assert uid == deterministic_uid("1.2.3", "demo", "1.0", "lesion-1")
    assert uid.startswith("2.25.") and checked_uid(uid, "UID") == uid
    assert deterministic_uid("a", "bc") != deterministic_uid("ab", "c")  # parts are separated
    assert deterministic_uid("1.2.3", "demo", "1.1", "lesion-1") != uid
