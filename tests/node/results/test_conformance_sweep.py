"""dciodvfy sweep: the node's result production on every real input a shipped pipeline would
process (pydicom-data and the shared GE MR series, see ``sweep_inputs.py``), with and without
findings, and on the shared labelled MR volumes with their real lesions as findings
(``labelled_volumes.py``); every object produced (SEG, SR, PDF, overlay) must have 0 dciodvfy
errors.

A few real inputs cannot give a SEG (and so no results: the SEG carries them); each is listed
with the reason the job records, and any other failure fails the sweep.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

from node.results.produce import OutputOptions, produce_results
from node.results.validate import ResultValidationError
from tests.node.results.factories import make_result
from tests.node.results.labelled_volumes import LABELLED_DIR, VOLUMES, labelled_result
from tests.node.results.sweep_inputs import SweepInput, sweep_inputs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# input -> the refusal its job records (highdicom cannot place a SEG on these sources)
KNOWN_REFUSALS = {
    **dict.fromkeys(
        ("693_J2KI.dcm", "693_J2KR.dcm", "693_UNCI.dcm", "693_UNCR.dcm"),
        "no Frame Of Reference UID",  # CT images without the type-1 FrameOfReferenceUID
    ),
    **dict.fromkeys(
        (
            "emri_small.dcm",
            "emri_small_RLE.dcm",
            "emri_small_big_endian.dcm",
            "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm",
        ),
        "Only a single frame is supported",  # enhanced MR without plane positions
    ),  # fmt: skip
    "explicit_VR-UN.dcm": "Pixel Measures",  # CT without SliceThickness
}
INPUTS = sweep_inputs()


def _errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("findings", [True, False], ids=["findings", "nofindings"])
@pytest.mark.parametrize("source", INPUTS, ids=[i.name for i in INPUTS])
def test_every_object_from_a_real_input_has_no_dciodvfy_errors(
    source: SweepInput, findings: bool, tmp_path: Path, record_property: Any
) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    datasets = source.datasets()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            produced = produce_results(
                make_result(datasets, with_findings=findings), datasets, OutputOptions(), tmp_path
            )
        except ResultValidationError as exc:
            expected = KNOWN_REFUSALS.get(source.name)
            assert expected is not None and re.search(re.escape(expected), str(exc)), str(exc)
            return
        finally:
            logging.disable(logging.NOTSET)
    assert source.name not in KNOWN_REFUSALS or not findings, "a listed refusal now succeeds"
    assert produced.warnings == (), produced.warnings
    assert {o.kind.value for o in produced} == {"seg", "sr", "pdf", "overlay"} if findings else True
    problems = {o.kind.value: _errors(o.path) for o in produced}
    record_property("objects_checked", len(produced))  # --junitxml: the sweep's totals
    record_property("dciodvfy_errors", sum(len(e) for e in problems.values()))
    assert not any(problems.values()), problems


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_results_of_the_real_labelled_mr_volumes_have_no_dciodvfy_errors(
    name: str, tmp_path: Path, record_property: Any
) -> None:
    """The shared labelled volumes (real anatomy, real lesion shapes) as MR series, their labels
    as the findings: one segment, outline and measurement group per lesion."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    if not LABELLED_DIR.is_dir():
        pytest.skip(f"shared sample data absent: {LABELLED_DIR}")
    sources, result = labelled_result(name, tmp_path / "source")
    assert result.findings, "every labelled volume has at least one lesion"
    produced = produce_results(result, sources, OutputOptions(), tmp_path / "out")
    assert {o.kind.value for o in produced} == {"seg", "sr", "pdf", "overlay"}
    assert produced.warnings == ()
    problems = {o.kind.value: _errors(o.path) for o in produced}
    record_property("objects_checked", len(produced))  # --junitxml: the sweep's totals
    record_property("dciodvfy_errors", sum(len(e) for e in problems.values()))
    assert not any(problems.values()), problems
