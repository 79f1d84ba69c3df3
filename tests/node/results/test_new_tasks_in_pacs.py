"""Issue 20's outputs, from the real demo pipelines, pass the results gate and a real PACS.

The enhancement demo (``demo-enhance-2d``, its SR and PDF turned on) on a CR phantom and, with the
same denoiser, on a CT phantom volume; the explanation demo (``demo-2d``, Grad-CAM as a Parametric
Map) on the same CR study. Every object the node made:

- has 0 dciodvfy errors and the IHE AIR algorithm identification (pipeline and each model);
- is accepted by a real Orthanc over C-STORE (the node's own sender, as a job's destination) and
  read back through Orthanc's DICOMweb with the expected SOP Class;
- the derived series has one instance per source instance, the source's geometry,
  ``DERIVED\\SECONDARY`` and, read back through WADO-RS, the denoised values in the source's
  units (HU for the CT).
"""

from __future__ import annotations

import email
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pydicom
import pytest

from core.config import DestinationSettings
from core.domain import ArtifactKind, DestinationKind
from node.dispatch.targets import sender_for
from node.results.equipment import PROCESSING_ALGORITHM
from tests.node.results.demo_runs import DemoRun, phantom_study, run_demo
from tests.orthanc.harness import DICOMWEB_PLUGIN, ORTHANC_BIN, OrthancProcess, running_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SOP_CLASS = {
    ArtifactKind.SEG: "1.2.840.10008.5.1.4.1.1.66.4",
    ArtifactKind.OVERLAY: "1.2.840.10008.5.1.4.1.1.7",
    ArtifactKind.PDF: "1.2.840.10008.5.1.4.1.1.104.1",
    ArtifactKind.SR: "1.2.840.10008.5.1.4.1.1.88.34",
    ArtifactKind.PMAP: "1.2.840.10008.5.1.4.1.1.30",
}
SOURCE_SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "CT": "1.2.840.10008.5.1.4.1.1.2"}
GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoRun]:
    """``cr-enhance``, ``cr-explain`` (one CR study) and ``ct-enhance``."""
    base = tmp_path_factory.mktemp("demo-runs")
    cr = phantom_study(base / "cr", "CR")
    ct = phantom_study(base / "ct", "CT")
    with_reports = {"pdf": True, "sr": True}
    return {
        "cr-enhance": run_demo("demo-enhance-2d", cr, base / "a", outputs=with_reports),
        "cr-explain": run_demo("demo-2d", cr, base / "b"),
        "ct-enhance": run_demo(
            "demo-enhance-2d", ct, base / "c", modality="CT", outputs=with_reports
        ),
    }


def test_the_demo_runs_make_the_new_objects(runs: dict[str, DemoRun]) -> None:
    for name in ("cr-enhance", "ct-enhance"):
        run = runs[name]
        assert len(run.of_kind(ArtifactKind.ENHANCED)) == len(run.sources), name
        assert run.of_kind(ArtifactKind.SR) and run.of_kind(ArtifactKind.PDF), name
    assert len(runs["cr-explain"].of_kind(ArtifactKind.PMAP)) == 1


def test_each_object_passes_dciodvfy_and_names_its_algorithms(runs: dict[str, DemoRun]) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    for name, run in runs.items():
        models = {r.model_name for r in run.result.model_runs}
        assert models, name
        for obj in run.objects:
            check = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
            lines = (check.stdout + check.stderr).splitlines()
            assert [x for x in lines if x.startswith("Error")] == [], (name, obj.kind)
            ds = pydicom.dcmread(obj.path, stop_before_pixels=True)
            algorithms = {
                item.ManufacturerModelName
                for item in ds.get("ContributingEquipmentSequence", [])
                if tuple(
                    item.PurposeOfReferenceCodeSequence[0][k].value
                    for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
                )
                == PROCESSING_ALGORITHM
            }
            # IHE AIR: the pipeline and every model that ran, on each object
            assert algorithms == {run.result.pipeline_name, *models}, (name, obj.kind)


@dataclass(frozen=True)
class Stored:
    orthanc: OrthancProcess
    refused: dict[str, list[str]]  # per run, the node's sender's errors (none expected)


@pytest.fixture(scope="module")
def stored(runs: dict[str, DemoRun], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """An Orthanc with DICOMweb holding the sources (REST) and every result, sent with the
    node's own C-STORE sender as a job's DICOM destination would be."""
    if ORTHANC_BIN is None or not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc with its DICOMweb plugin not installed")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for path in {p for run in runs.values() for p in run.source_paths}:
            answer = httpx.post(f"{server.url}/instances", content=path.read_bytes(), timeout=30)
            answer.raise_for_status()
        dest = DestinationSettings(
            name="orthanc",
            kind=DestinationKind.DICOM,
            ae_title=server.aet,
            host="127.0.0.1",
            port=server.dicom_port,
        )
        refused = {}
        for name, run in runs.items():
            outcomes = sender_for(dest).send([o.path for o in run.objects])
            refused[name] = [o.error for o in outcomes if not o.ok]
        yield Stored(server, refused)


def _metadata(orthanc: OrthancProcess, study: str, series: str) -> list[dict]:
    answer = httpx.get(
        f"{orthanc.url}/dicom-web/studies/{study}/series/{series}/metadata", timeout=30
    )
    answer.raise_for_status()
    return list(answer.json())


def _value(item: dict, tag: str) -> list:
    return list(item.get(tag, {}).get("Value", []))


def _wado_instance(orthanc: OrthancProcess, study: str, series: str, sop: str) -> pydicom.Dataset:
    """The instance as WADO-RS returns it (multipart/related application/dicom)."""
    answer = httpx.get(
        f"{orthanc.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    answer.raise_for_status()
    head = f"Content-Type: {answer.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + answer.content)
    parts = [p.get_payload(decode=True) for p in message.walk() if not p.is_multipart()]
    assert len(parts) == 1, len(parts)
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(parts[0]))


def test_orthanc_accepts_each_object_and_serves_it_back(
    runs: dict[str, DemoRun], stored: Stored
) -> None:
    for name, run in runs.items():
        assert stored.refused[name] == [], name
        study = run.result.study_instance_uid
        for obj in run.objects:
            listed = _metadata(stored.orthanc, study, obj.series_instance_uid)
            mine = [m for m in listed if _value(m, "00080018") == [obj.sop_instance_uid]]
            assert len(mine) == 1, (name, obj.kind)
            expected = SOP_CLASS.get(obj.kind) or SOURCE_SOP_CLASS[run.sources[0].Modality]
            assert _value(mine[0], "00080016") == [expected], (name, obj.kind)


def test_derived_series_reads_back_as_the_denoised_source(
    runs: dict[str, DemoRun], stored: Stored
) -> None:
    orthanc = stored.orthanc
    for name in ("cr-enhance", "ct-enhance"):
        run = runs[name]
        enhancement = run.result.enhancement
        assert enhancement is not None and enhancement.image is not None
        study = run.result.study_instance_uid
        derived = run.of_kind(ArtifactKind.ENHANCED)
        assert len({o.series_instance_uid for o in derived}) == 1
        series = derived[0].series_instance_uid
        listed = _metadata(orthanc, study, series)
        assert len(listed) == len(run.sources), name  # one instance per source instance
        source_series = str(run.sources[0].SeriesInstanceUID)
        source_of = {_value(m, "00080018")[0]: m for m in _metadata(orthanc, study, source_series)}
        for index, source in enumerate(run.sources):
            ds = _wado_instance(orthanc, study, series, derived[index].sop_instance_uid)
            cited = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
            assert cited == source.SOPInstanceUID, name
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"], name
            theirs = source_of[cited]
            for keyword in GEOMETRY:
                tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
                if keyword in source:
                    np.testing.assert_allclose(
                        np.atleast_1d(ds[keyword].value).astype(float),
                        np.asarray(_value(theirs, tag), dtype=float),
                        err_msg=f"{name} {keyword}",
                    )
            values = pydicom.pixels.apply_rescale(ds.pixel_array, ds)
            original = pydicom.pixels.apply_rescale(source.pixel_array, source)
            # the stored values are the denoised image, in the source's units (rounding aside)
            slope = float(ds.get("RescaleSlope", 1))
            assert np.abs(values - enhancement.image[index]).max() <= slope, name
            assert np.abs(values - original).max() > 0, f"{name}: not denoised"
            if source.Modality == "CT":
                assert ds.get("RescaleType", "HU") == "HU"
                assert abs(float(values.mean()) - float(original.mean())) < 10.0  # still HU
