"""End-to-end latency: last instance of a study received -> last result stored in Orthanc.

Starts a real Orthanc and ``pacsnode serve`` on free loopback ports, pushes phantom studies with
DCMTK ``storescu`` (TCP_NODELAY=1), routes the results back to Orthanc by C-STORE and reads the
timestamps the node recorded (instances received, study completed, job ran, deliveries stored).
The quiet period is a setting, not work, so it is reported separately from "after completion".

    .venv/bin/python bench/e2e.py --runs 3 --quiet-period 2
    .venv/bin/python bench/e2e.py --only cr --runs 5
    .venv/bin/python bench/e2e.py --dispatch-only     # just claim+send+record of 4 results
    .venv/bin/python bench/e2e.py --dispatch-only --nagle   # the same, Nagle left on (A/B)

Targets (issue 21), after completion, CPU: CR < 1 s, CT 100 × 512² (``--ct-size 512``) < 8 s.
Each run also prints where its job's time went, from the job's log: the pipeline, saving the
result for review, and the DICOM results (``produce_results``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.db.engine import Database  # noqa: E402
from node.db.orm import Artifact, Delivery, Instance, Job, Series, Study  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.orthanc.harness import OrthancProcess  # noqa: E402
from tests.processes import NodeProcess, node_env, wait_for_port  # noqa: E402

TARGETS_S = {"cr": 1.0, "ct": 8.0}  # issue 21; the CT one is for 100 × 512²
# the worker's job log lines with the seconds of each stage (node.jobs.worker.Worker._compute)
_STAGE_LINES = {
    "pipeline": re.compile(r"^pipeline \S+ v\S*: ([0-9.]+) s$", re.M),
    "save": re.compile(r"^result saved for review in ([0-9.]+) s$", re.M),
    "results": re.compile(r"^results: .* in ([0-9.]+) s$", re.M),
}


@dataclass(frozen=True)
class Timing:
    kind: str
    received_to_stored_s: float  # last instance received -> last result stored in Orthanc
    completion_to_stored_s: float  # study completed -> last result stored
    quiet_wait_s: float  # last instance received -> study completed (the quiet period + sweep)
    job_s: float  # pipeline + results, as the worker measured
    dispatch_s: float  # job finished -> last delivery stored
    results: int
    stages: str = ""  # the job's own split: pipeline, save for review, results


def job_stages(logs: list[str]) -> str:
    """``pipeline 3.10 s, save 0.30 s, results 0.90 s``: the stages the job logs, summed over
    the study's jobs; the rest of the job is reading its input and sources, and bookkeeping."""
    parts = []
    for name, pattern in _STAGE_LINES.items():
        seconds = [float(m) for log in logs for m in pattern.findall(log)]
        if seconds:
            parts.append(f"{name} {sum(seconds):.2f} s")
    return ", ".join(parts)


def write_study(kind: str, out: Path, seed: int, ct_slices: int, ct_size: int) -> list[Path]:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom, make_3d_phantom

    rng = np.random.default_rng(seed)
    if kind == "cr":
        return write_series(
            make_2d_phantom(rng, lesion_count=2), out, modality="CR", patient_id=f"B{seed}"
        )
    phantom = make_3d_phantom(rng, shape=(ct_slices, ct_size, ct_size), lesion_count=2)
    return write_series(phantom, out, patient_id=f"B{seed}")


def storescu(port: int, files: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aec", "PACSNODE", "-aet", "MODALITY", "127.0.0.1", str(port), *map(str, files)],
        check=True, capture_output=True, timeout=600, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def wait_delivered(db: Database, study_uid: str, timeout_s: float) -> Timing | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.read() as s:
            study = s.scalars(
                select(Study).where(Study.study_instance_uid == study_uid)
            ).one_or_none()
            jobs = s.scalars(select(Job).where(Job.study_pk == study.id)).all() if study else []
            if study and jobs and all(j.state in ("succeeded", "failed") for j in jobs):
                states = s.execute(
                    select(Delivery.state, Delivery.delivered_at).join(Artifact).join(Job)
                    .where(Job.study_pk == study.id)
                ).all()  # fmt: skip
                if states and all(st == "delivered" for st, _ in states):
                    last_rx = s.scalar(
                        select(func.max(Instance.received_at))
                        .join(Series)
                        .where(Series.study_pk == study.id)
                    )
                    stored = max(at for _, at in states)
                    completed = study.completed_at or last_rx
                    finished = max(j.finished_at for j in jobs if j.finished_at)
                    return Timing(
                        kind="",
                        received_to_stored_s=(stored - last_rx).total_seconds(),
                        completion_to_stored_s=(stored - completed).total_seconds(),
                        quiet_wait_s=(completed - last_rx).total_seconds(),
                        job_s=sum(j.duration_s or 0.0 for j in jobs),
                        dispatch_s=(stored - finished).total_seconds(),
                        results=len(states),
                        stages=job_stages([j.log or "" for j in jobs]),
                    )
                if any(st == "failed" for st, _ in states) or any(
                    j.state == "failed" for j in jobs
                ):
                    raise RuntimeError(f"study {study_uid}: {[j.error for j in jobs]} {states}")
        time.sleep(0.1)
    return None


def dispatch_only(runs: int, nagle: bool = False) -> None:
    """The dispatch stage alone: 4 hand-made results (SEG, overlay, PDF, SR) to Orthanc.

    ``nagle`` leaves Nagle's algorithm on in the C-STORE SCU (the node turns it off), the A/B
    for that decision (docs/performance.md).
    """
    from core.config import load_settings
    from node.dispatch.delivery_plan import plan_deliveries
    from node.dispatch.dispatcher import Dispatcher
    from tests.node.dispatch.conftest import add_job_with_artifacts
    from tests.node.dispatch.factory import make_results

    work = Path(tempfile.mkdtemp(prefix="pacsnode-bench-dispatch-"))
    orthanc = OrthancProcess(work / "orthanc")
    orthanc.start()
    if nagle:
        from node.dispatch import cstore

        cstore._disable_nagle = lambda assoc: None  # the A side of the A/B: the socket as opened
    try:
        for kind, dest in (
            ("dicom", {"name": "o", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}),
            ("orthanc", {"name": "o", "kind": "orthanc", "url": orthanc.url}),
        ):  # fmt: skip
            seconds = []
            for run in range(runs + 1):
                folder = work / f"{kind}{run}"
                settings = load_settings(
                    None, environment="test", data_dir=folder, destinations=[dest]
                )
                db = Database(f"sqlite:///{folder / 'db.sqlite'}")
                db.migrate()
                job_id = add_job_with_artifacts(db, settings, make_results(folder / "results"))
                with db.write() as session:
                    plan_deliveries(session, session.get_one(Job, job_id), ["o"], held=False)
                started = time.monotonic()
                assert Dispatcher(settings, db).run_once() == 4
                seconds.append(time.monotonic() - started)
                db.dispose()
            print(f"{kind}: 4 objects claim+send+record, median {statistics.median(seconds[1:]) * 1000:.0f} ms "
                  f"over {runs} runs (first, cold: {seconds[0] * 1000:.0f} ms)")  # fmt: skip
    finally:
        orthanc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["cr", "ct"])
    parser.add_argument("--quiet-period", type=float, default=2.0)
    parser.add_argument("--ct-slices", type=int, default=100)
    parser.add_argument("--ct-size", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print the raw timings as JSON too")
    parser.add_argument(
        "--dispatch-only", action="store_true", help="time the dispatch stage alone"
    )
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="with --dispatch-only: leave Nagle's algorithm on in the C-STORE SCU",
    )
    args = parser.parse_args(argv)
    if args.dispatch_only:
        dispatch_only(max(args.runs, 5), nagle=args.nagle)
        return 0

    work = Path(tempfile.mkdtemp(prefix="pacsnode-bench-"))
    orthanc = OrthancProcess(work / "orthanc")
    orthanc.start()
    dicom_port, web_port = free_port(), free_port()
    data_dir = work / "node"
    url = f"sqlite:///{data_dir / 'pacsnode.db'}"
    env = node_env(data_dir, url, dicom_port, web_port, {
        "PACSNODE_COMPLETION__QUIET_PERIOD_S": str(args.quiet_period),
        "PACSNODE_COMPLETION__SWEEP_INTERVAL_S": "0.2",
        "PACSNODE_JOBS__POLL_INTERVAL_S": "0.1",
        "PACSNODE_DISPATCH__POLL_INTERVAL_S": "0.1",
        "PACSNODE_SECRET_KEY": "bench-secret-key",
        "PACSNODE_DESTINATIONS": json.dumps([{"name": "orthanc", "kind": "dicom", "ae_title": orthanc.aet,
                                              "host": "127.0.0.1", "port": orthanc.dicom_port}]),
        "PACSNODE_ROUTING": json.dumps([{"name": "radiographs", "when": {"modality": ["CR", "DX"]}, "pipelines": ["demo-2d"],
                 "destinations": ["orthanc"]},
                {"name": "volumes", "when": {"modality": ["CT", "MR"]}, "pipelines": ["demo-3d"],
                 "destinations": ["orthanc"]}]),
    })  # fmt: skip
    node = NodeProcess(["serve"], env, work / "logs", "serve").start()
    timings: list[Timing] = []
    try:
        wait_for_port(dicom_port, timeout=180, proc=node)
        db = Database(url)
        kinds = [args.only] if args.only else ["cr", "ct"]
        for kind in kinds:
            for run in range(args.runs + 1):  # run 0 warms the models up and is not counted
                files = write_study(
                    kind, work / f"{kind}{run}", 100 + run, args.ct_slices, args.ct_size
                )
                study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                storescu(dicom_port, files)
                timing = wait_delivered(db, study_uid, args.timeout)
                if timing is None:
                    raise TimeoutError(
                        f"{kind} run {run}: results not delivered in {args.timeout}s"
                    )
                label = "warm-up" if run == 0 else f"run {run}"
                print(f"{kind} {label}: received->stored {timing.received_to_stored_s:.2f}s "
                      f"(quiet {timing.quiet_wait_s:.2f}s, after completion {timing.completion_to_stored_s:.2f}s: "
                      f"job {timing.job_s:.2f}s [{timing.stages}], dispatch {timing.dispatch_s:.2f}s, "
                      f"{timing.results} objects)", flush=True)  # fmt: skip
                if run:
                    timings.append(
                        Timing(
                            kind,
                            *[getattr(timing, f) for f in list(Timing.__dataclass_fields__)[1:]],
                        )
                    )
        db.dispose()
    finally:
        node.terminate()
        orthanc.stop()

    print(f"\nmedians over {args.runs} runs (quiet period setting {args.quiet_period}s, "
          f"CT {args.ct_slices} slices of {args.ct_size}x{args.ct_size}):")  # fmt: skip
    for kind in sorted({t.kind for t in timings}):
        rows = [t for t in timings if t.kind == kind]
        after = statistics.median(t.completion_to_stored_s for t in rows)
        verdict = "meets" if after < TARGETS_S[kind] else "MISSES"
        if kind == "ct" and args.ct_size != 512:
            verdict += " (the CT target is for 512², this run is not)"
        print(f"  {kind}: after completion {after:.2f}s ({verdict} target {TARGETS_S[kind]:.0f}s); "
              f"quiet wait {statistics.median(t.quiet_wait_s for t in rows):.2f}s; "
              f"received->stored {statistics.median(t.received_to_stored_s for t in rows):.2f}s; "
              f"job {statistics.median(t.job_s for t in rows):.2f}s; "
              f"dispatch {statistics.median(t.dispatch_s for t in rows):.2f}s")  # fmt: skip
    if args.json:
        print(json.dumps([t.__dict__ for t in timings], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
