"""Bulk exports: the findings CSV and the PDFs zip of every job a worklist or study filter selects."""

from __future__ import annotations

import csv
import io
import zipfile

from node.db.orm import Job, Study
from node.db.repositories import audit
from tests.web.conftest import Console
from tests.web.processed import ProcessedStudy


def _with_failed_job_and_pdf(console: Console, study: ProcessedStudy) -> int:
    """A PDF beside the processed job's result, and a failed job on the same study."""
    pdf = console.settings.job_results_dir(study.job_id) / "pdf.dcm"
    pdf.write_bytes(b"DICM-encapsulated-pdf-bytes")
    with console.db.write() as session:
        study_row = session.query(Study).one()
        failed = Job(
            study_pk=study_row.id,
            pipeline_name="demo-ct",
            state="failed",
            error="model crashed: out of memory\ntraceback...",
        )
        session.add(failed)
        session.flush()
        return failed.id


def test_worklist_csv_has_every_selected_jobs_findings(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    _with_failed_job_and_pdf(console, study)
    answer = console.login("radiologist1").get("/worklist/export/csv")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["x-export-jobs"] == "1" and answer.headers["x-export-skipped"] == "1"
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert rows and {r["job_id"] for r in rows} == {str(study.job_id)}
    assert rows[0]["study_instance_uid"] == study.study_uid and rows[0]["label"]
    with console.db.read() as session:
        events = [(e.actor, e.detail) for e in audit.query(session, action="result.bulk_download")]
    assert events and events[0][0] == "radiologist1" and "csv: 1 job(s)" in events[0][1]


def test_pdfs_zip_streams_reports_and_names_skipped_jobs(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    failed_id = _with_failed_job_and_pdf(console, study)
    answer = console.login("admin1").get("/studies/export/pdfs?patient=&accession=ACC-MR-1")
    assert answer.status_code == 200, answer.text
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    assert archive.testzip() is None
    assert archive.read(f"job{study.job_id}/pdf.dcm") == b"DICM-encapsulated-pdf-bytes"
    skipped = archive.read("SKIPPED.txt").decode()
    assert f"job {failed_id}" in skipped and "out of memory" in skipped


def test_a_selection_without_results_answers_409_and_viewers_may_not_bulk_export(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    _with_failed_job_and_pdf(console, study)
    radiologist = console.login("radiologist1")
    failed = radiologist.get("/worklist/export/csv?state=failed")
    assert failed.status_code == 409 and "out of memory" in failed.text
    assert radiologist.get("/worklist/export/csv?pipeline=nope").status_code == 404
    assert radiologist.get("/worklist/export/xlsx").status_code == 404
    assert radiologist.get("/worklist/export/csv?severity=Extreme").status_code == 400
    assert radiologist.get("/studies/export/csv?patient=nobody-by-that-name").status_code == 404
    viewer = console.login("viewer1")
    assert viewer.get("/worklist/export/csv").status_code == 403
    assert viewer.get(f"/jobs/{study.job_id}/export/csv").status_code == 200  # one job: allowed


def _link(page: str, anchor_id: str) -> str:
    return page.split(f'id="{anchor_id}" href="')[1].split('"')[0].replace("&amp;", "&")


def test_jobs_page_export_links_download_the_filtered_jobs(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    failed_id = _with_failed_job_and_pdf(console, study)
    client = console.login("admin1")
    page = client.get("/jobs?state=succeeded&pipeline=demo-mr").text
    csv_link = _link(page, "export-csv")
    assert csv_link == "/jobs/export/csv?state=succeeded&pipeline=demo-mr"
    answer = client.get(csv_link)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-export-jobs"] == "1" and answer.headers["x-export-skipped"] == "0"
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert rows and {r["job_id"] for r in rows} == {str(study.job_id)}
    # unfiltered: the failed job is in the selection too (skipped, named in the ZIP)
    pdfs = client.get(_link(client.get("/jobs").text, "export-pdfs"))
    assert pdfs.status_code == 200 and pdfs.headers["x-export-skipped"] == "1"
    archive = zipfile.ZipFile(io.BytesIO(pdfs.content))
    assert archive.read(f"job{study.job_id}/pdf.dcm") == b"DICM-encapsulated-pdf-bytes"
    assert f"job {failed_id}" in archive.read("SKIPPED.txt").decode()
    # a filter selecting only the failed job has nothing to export, and says why
    failed = client.get(_link(client.get("/jobs?state=failed").text, "export-csv"))
    assert failed.status_code == 409 and "out of memory" in failed.text
    assert client.get("/jobs/export/csv?state=bogus").status_code == 400
    assert console.login("viewer1").get("/jobs/export/csv").status_code == 403
    with console.db.read() as session:
        sources = [e.entity_id for e in audit.query(session, action="result.bulk_download")]
    assert sources.count("jobs") == 2
