"""docs/conformance.md agrees with the code: SOP classes, transfer syntaxes and AE defaults.

The conformance statement marks its machine-checked tables with ``<!-- conformance-table: NAME -->``
on the line before the table; each data row holds one UID (or setting) in backticks. The SCP
tables are compared with the presentation contexts of the real receiver (``SUPPORTED_CONTEXTS``), the SCU tables
with what the dispatcher proposes for the objects the result writers really produce, both ways.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from core.config import DestinationSettings, Settings
from core.domain import DestinationKind
from node.dispatch import cstore
from node.ingest.contexts import RETIRED_STORAGE_CLASSES, scp_sop_class_table
from node.ingest.scp import SUPPORTED_CONTEXTS
from node.results.produce import OutputOptions, produce_results
from node.results.rejection import build_rejection_note, encode_rejection_note
from tests.node.results.factories import make_result, synthetic_ct_series

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
UID_CELL = re.compile(r"^`([0-9]+(?:\.[0-9]+)+)`$")
CODE_CELL = re.compile(r"^`([^`]*)`$")
VERIFICATION = "1.2.840.10008.1.1"


# -- reading the document ----------------------------------------------------------------------
def table_rows(name: str) -> list[list[str]]:
    """The body rows (cells stripped) of the table marked ``<!-- conformance-table: name -->``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    marker = f"<!-- conformance-table: {name} -->"
    found = [i for i, line in enumerate(lines) if line.strip() == marker]
    assert len(found) == 1, f"{DOC.name}: expected one '{marker}' line, found {len(found)}"
    rows: list[list[str]] = []
    for line in lines[found[0] + 1 :]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert len(rows) >= 3, f"{DOC.name}: table {name!r} needs a header, a separator and rows"
    header, separator, *body = rows
    assert all(set(cell) <= set("-: ") for cell in separator), f"table {name!r}: bad separator"
    assert all(len(row) == len(header) for row in body), f"table {name!r}: ragged rows"
    return body


def documented_uids(name: str) -> dict[str, str]:
    """UID -> name (first cell) for a UID table; every row must hold exactly one UID."""
    uids: dict[str, str] = {}
    for row in table_rows(name):
        cells = [m.group(1) for m in map(UID_CELL.match, row) if m]
        assert len(cells) == 1, f"table {name!r}: row {row} must hold exactly one `UID` cell"
        uid = cells[0]
        assert uid not in uids, f"table {name!r}: {uid} is listed twice"
        uids[uid] = row[0]
    return uids


def documented_settings() -> dict[str, str]:
    values: dict[str, str] = {}
    for row in table_rows("ae-defaults"):
        key, value = (CODE_CELL.match(cell) for cell in row[:2])
        assert key and value, f"ae-defaults: row {row} must start with `setting` | `default`"
        values[key.group(1)] = value.group(1)
    return values


# -- comparing -----------------------------------------------------------------------------------
def _label(uid: str, names: dict[str, str]) -> str:
    name = names.get(uid) or (UID_dictionary[uid][0] if uid in UID_dictionary else "unknown")
    return f"{uid} ({name})"


def assert_same_uids(documented: dict[str, str], actual: Iterable[str], what: str) -> None:
    actual_set = {str(uid) for uid in actual}
    undocumented = sorted(actual_set - documented.keys())
    unsupported = sorted(documented.keys() - actual_set)
    problems = []
    if undocumented:
        listed = ", ".join(_label(u, documented) for u in undocumented)
        problems.append(f"{what}: supported by the code but missing from {DOC.name}: {listed}")
    if unsupported:
        listed = ", ".join(_label(u, documented) for u in unsupported)
        problems.append(f"{what}: documented in {DOC.name} but not supported by the code: {listed}")
    assert not problems, "\n".join(problems)


def assert_standard_names(documented: dict[str, str], what: str) -> None:
    """Where pydicom knows a UID, the documented name is the standard's."""
    wrong = [
        f"{uid}: documented {name!r}, standard {UID_dictionary[uid][0]!r}"
        for uid, name in documented.items()
        if uid in UID_dictionary and UID_dictionary[uid][0] != name
    ]
    assert not wrong, f"{what}: wrong names: " + "; ".join(wrong)


# -- SCP -----------------------------------------------------------------------------------------
def test_scp_sop_classes_are_the_accepted_abstract_syntaxes() -> None:
    documented = documented_uids("scp-sop-classes")
    assert_same_uids(documented, SUPPORTED_CONTEXTS, "SCP SOP classes")
    assert_standard_names(documented, "SCP SOP classes")


def test_scp_sop_class_table_is_the_one_the_code_prints() -> None:
    """Table 4.2-2 is generated (``python -m node.ingest.contexts``): paste its output."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("<!-- conformance-table: scp-sop-classes -->") + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].lstrip().startswith("|"))
    assert "\n".join(lines[start:end]) + "\n" == scp_sop_class_table(), (
        "docs/conformance.md table 4.2-2 is stale: replace it with `python -m node.ingest.contexts`"
    )


def test_retired_storage_classes_devices_still_send_are_accepted() -> None:
    service = {row[1]: row[2] for row in table_rows("scp-sop-classes")}
    for uid in ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3",
                "1.2.840.10008.5.1.4.1.1.5", "1.2.840.10008.5.1.4.1.1.12.3"):  # fmt: skip
        assert uid in RETIRED_STORAGE_CLASSES and uid in SUPPORTED_CONTEXTS
        assert UID_dictionary[uid][3] == "Retired"
        assert service[f"`{uid}`"] == "Storage (retired)"


def test_scp_transfer_syntaxes_are_accepted_for_every_sop_class() -> None:
    documented = documented_uids("scp-transfer-syntaxes")
    every = {ts for syntaxes in SUPPORTED_CONTEXTS.values() for ts in syntaxes}
    assert_same_uids(documented, every, "SCP transfer syntaxes")
    assert_standard_names(documented, "SCP transfer syntaxes")
    # the statement says every SOP class is accepted with every listed transfer syntax
    for abstract, syntaxes in SUPPORTED_CONTEXTS.items():
        assert_same_uids(documented, syntaxes, f"SCP transfer syntaxes of {abstract}")


def test_verification_is_documented_for_both_roles() -> None:
    assert VERIFICATION in documented_uids("scp-sop-classes")
    assert VERIFICATION in documented_uids("scu-sop-classes")
    assert str(cstore.Verification) == VERIFICATION


# -- SCU -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def result_headers(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """Headers of the objects the result writers produce, read the way CStoreSender reads them."""
    sources = synthetic_ct_series()
    out = tmp_path_factory.mktemp("results")
    produced = produce_results(
        make_result(sources, with_findings=True, explain=True), sources, OutputOptions(), out
    )
    headers = [pydicom.dcmread(p.path, stop_before_pixels=True) for p in produced]
    note = build_rejection_note(headers, "rejected in a test")  # sent when results are rejected
    data = encode_rejection_note(note, [str(h.SOPInstanceUID) for h in headers])
    return [*headers, pydicom.dcmread(io.BytesIO(data))]


def _sender(preferred: str | None = None) -> cstore.CStoreSender:
    dest = DestinationSettings(
        name="pacs",
        kind=DestinationKind.DICOM,
        ae_title="PACS",
        host="127.0.0.1",
        port=104,
        preferred_transfer_syntax=preferred,
    )
    return cstore.CStoreSender(dest)


def test_scu_sop_classes_are_the_produced_objects_and_verification(
    result_headers: list[Dataset],
) -> None:
    produced = {str(h.SOPClassUID) for h in result_headers}
    proposed = {str(cx.abstract_syntax) for cx in _sender()._contexts(result_headers)}
    assert proposed == produced
    documented = documented_uids("scu-sop-classes")
    assert_same_uids(documented, produced | {VERIFICATION}, "SCU SOP classes")
    assert_standard_names(documented, "SCU SOP classes")


def test_scu_transfer_syntaxes_are_what_the_dispatcher_proposes(
    result_headers: list[Dataset],
) -> None:
    documented = documented_uids("scu-transfer-syntaxes")
    assert_same_uids(documented, cstore.UNCOMPRESSED, "SCU transfer syntaxes (cstore.UNCOMPRESSED)")
    proposed = {str(ts) for cx in _sender()._contexts(result_headers) for ts in cx.transfer_syntax}
    assert_same_uids(documented, proposed, "SCU transfer syntaxes proposed for the results")
    written = {str(h.file_meta.TransferSyntaxUID) for h in result_headers}
    assert written <= documented.keys(), f"results written in undocumented syntaxes {written}"
    assert_standard_names(documented, "SCU transfer syntaxes")


def test_a_preferred_transfer_syntax_is_proposed_as_well(result_headers: list[Dataset]) -> None:
    documented = set(documented_uids("scu-transfer-syntaxes"))
    contexts = _sender(JPEG2000Lossless)._contexts(result_headers)
    for sop_class in {str(h.SOPClassUID) for h in result_headers}:
        syntaxes = {
            str(cx.transfer_syntax[0]) for cx in contexts if cx.abstract_syntax == sop_class
        }
        assert syntaxes == documented | {JPEG2000Lossless}, sop_class


# -- defaults ------------------------------------------------------------------------------------
def setting_default(dotted: str) -> Any:
    """The default of ``ae_title`` or ``dispatch.timeout_s`` as declared on Settings."""
    first, *rest = dotted.split(".")
    assert first in Settings.model_fields, f"ae-defaults: unknown setting {dotted!r}"
    value = Settings.model_fields[first].get_default(call_default_factory=True)
    for part in rest:
        assert hasattr(value, part), f"ae-defaults: unknown setting {dotted!r}"
        value = getattr(value, part)
    return value


def _same_value(text: str, value: Any) -> bool:
    if value is None:  # YAML's null, as in the README: the row says what it means
        return text == "null"
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return text == str(value)


def test_documented_defaults_match_settings() -> None:
    wrong = [
        f"{key}: documented `{text}`, Settings default {setting_default(key)!r}"
        for key, text in documented_settings().items()
        if not _same_value(text, setting_default(key))
    ]
    assert not wrong, "ae-defaults table disagrees with core/config.py: " + "; ".join(wrong)


def test_default_ae_title_and_port_match_settings() -> None:
    title = Settings.model_fields["ae_title"].default
    port = Settings.model_fields["dicom_port"].default
    documented = documented_settings()
    assert documented.get("ae_title") == title, f"ae_title: doc {documented.get('ae_title')!r}"
    assert documented.get("dicom_port") == str(port), (
        f"dicom_port: doc {documented.get('dicom_port')!r}"
    )
    text = DOC.read_text(encoding="utf-8")
    assert f"| Default AE title / port | `{title}` / `{port}`" in text, "cover table"
    assert f"| PACSNODE (SCP and SCU) | `{title}` | `{port}` |" in text, "table 4.4.1.1"
