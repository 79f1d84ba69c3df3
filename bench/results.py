"""Results writing: ``produce_results`` on a 100 × 512² CT with 10 findings, against highdicom alone.

The study is a CT phantom (``models.training.phantoms``) written as real DICOM files and read
back as the worker reads them; its 10 lesions are lobulated blobs of 5–15 mm, turned into findings
by the pipelines' own finding builder, with the study-level decision demo-3d makes. The node's
path is ``produce_results`` with demo-3d's outputs (SEG per finding, SR, PDF, overlay) and its
validation gate (every object re-read from its bytes); the time of each stage is printed
(building, finalising and encoding, validating, writing). The peer is what a user writing the same
SEG and TID 1500 SR by hand with highdicom would do: ``hd.seg.Segmentation`` from the source
datasets and the finding map, one volumetric group per finding citing its segment, a
``Comprehensive3DSR`` with the sources as image library and evidence, each saved to bytes — no
read-back, no PDF, no overlay. Both are measured in the same run, interleaved; medians of N.

    .venv/bin/python bench/results.py                    # 100 × 512², 10 findings, 5 runs
    .venv/bin/python bench/results.py --slices 20 --size 256 --runs 3   # quick
    .venv/bin/python bench/results.py --profile          # cProfile of one produce_results

Target: ``produce_results`` < 1.0 s for 100 × 512² with 10 findings (issue 21).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import highdicom as hd  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

import node.results.produce as produce  # noqa: E402
from core.domain import CodedConcept  # noqa: E402
from models.training.dicom_export import write_series  # noqa: E402
from models.training.phantoms import make_3d_phantom  # noqa: E402
from node.results.produce import OutputOptions, produce_results  # noqa: E402
from pipelines.contract import ClassificationOutput, ModelRun, PipelineResult  # noqa: E402
from tests.node.results.labelled import lesion_result  # noqa: E402

TARGET_S = 1.0


def _lesion_masks(shape: tuple[int, int, int], spacing: Sequence[float], count: int, seed: int):
    """``count`` separate lobulated blobs (a sphere and two smaller offset lobes, 5–15 mm), one
    per slab of slices so that none touch, spread around the image centre."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    mask = np.zeros(shape, np.uint8)
    slab = d / count
    for index in range(count):
        radius_mm = float(rng.uniform(5.0, 15.0))
        reach = [radius_mm * 1.6 / s for s in spacing]  # lobes reach 1.6 r from the centre
        z = (index + 0.5) * slab
        angle = 2 * np.pi * index / count
        y = h / 2 + 0.22 * h * np.sin(angle)
        x = w / 2 + 0.25 * w * np.cos(angle)
        lo = [max(0, int(v - r) - 1) for v, r in zip((z, y, x), reach, strict=True)]
        hi = [min(n, int(v + r) + 2) for v, r, n in zip((z, y, x), reach, shape, strict=True)]
        zz, yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        lobes = [((z, y, x), radius_mm)]
        for _ in range(2):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = direction * 0.6 * radius_mm / np.asarray(spacing)
            lobes.append(((z + offset[0], y + offset[1], x + offset[2]), 0.6 * radius_mm))
        blob = np.zeros(zz.shape, bool)
        for (cz, cy, cx), r in lobes:
            blob |= (
                ((zz - cz) * spacing[0]) ** 2
                + ((yy - cy) * spacing[1]) ** 2
                + ((xx - cx) * spacing[2]) ** 2
            ) <= r**2
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][blob] = 1
    return mask


def make_study(
    folder: Path, slices: int, size: int, findings: int, seed: int = 21
) -> tuple[list[Dataset], PipelineResult]:
    """Sources (in the decoded order, as the worker reads them) and demo-3d's kind of result."""
    phantom = make_3d_phantom(
        np.random.default_rng(seed), shape=(slices, size, size), lesion_count=0
    )
    mask = _lesion_masks(phantom.mask.shape, phantom.spacing_mm, findings, seed)
    volume = phantom.volume - 45.0 * mask  # hypodense lesions
    paths = write_series(
        type(phantom)(volume, mask, 1, [], phantom.spacing_mm), folder, patient_id="BENCH-21"
    )
    sources, result = lesion_result(
        paths,
        mask,
        "CT",
        model_runs=(
            ModelRun("segmentation", "demo-seg3d-unet", "1.0.0", "monai", 0.5, "auto", "cpu",
                     "ab" * 32, "2.25.1111", 2.0),
            ModelRun("segmentation", "demo-seg3d-segresnet", "1.0.0", "monai", 0.5, "auto", "cpu",
                     "cd" * 32, "2.25.2222", 2.0),
        ),
        classification=ClassificationOutput(
            ("normal", "abnormal"), (0.03, 0.97), 0.5, "abnormal", {},
            (CodedConcept("17621005", "SCT", "Normal"),
             CodedConcept("263654008", "SCT", "Abnormal")),
            "segmentation",
        ),
        created_at="2026-12-06T01:00:00+00:00",
    )  # fmt: skip
    if len(result.findings) != findings:
        raise RuntimeError(f"{len(result.findings)} findings made, {findings} wanted")
    return sources, result


DEMO_3D = OutputOptions(seg_type="BINARY", omit_empty_frames=True, overlay=True, pdf=True, sr=True)

# produce.py's stages, by the names it calls them under: the time spent in each is summed per run
STAGES = {
    "clean_sources": "prepare sources",
    "with_locations": "prepare sources",
    "build_segmentation": "SEG build",
    "validate_seg": "SEG validate",
    "build_sr": "SR build",
    "validate_sr": "SR validate",
    "build_pdf": "PDF build",
    "validate_pdf": "PDF validate",
    "build_overlay": "overlay build",
    "validate_overlay": "overlay validate",
    "finalise": "finalise",
    "encode": "encode",
    "_write_atomically": "write files",
}


@contextmanager
def stage_timer() -> Iterator[dict[str, float]]:
    """Wrap produce.py's stage functions for the duration; yields seconds per stage (summed over
    threads when stages run in parallel, so their sum may exceed the wall time)."""
    spent: dict[str, float] = defaultdict(float)
    lock = threading.Lock()
    originals = {name: getattr(produce, name) for name in STAGES if hasattr(produce, name)}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    spent[STAGES[name]] += time.perf_counter() - started

        return wrapper

    for name, function in originals.items():
        setattr(produce, name, timed(name, function))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(produce, name, function)


def node_run(sources: list[Dataset], result: PipelineResult, out: Path) -> tuple[float, dict]:
    """Wall seconds of one ``produce_results`` and seconds per stage; the process CPU seconds
    are in the stages as ``cpu``: on a machine shared with other work they move far less than
    the wall time (``produce_results`` runs on one thread)."""
    with stage_timer() as spent:
        started, cpu = time.perf_counter(), time.process_time()
        produced = produce_results(result, sources, DEMO_3D, out)
        total = time.perf_counter() - started
        spent["cpu"] = time.process_time() - cpu
    kinds = sorted(p.kind.value for p in produced)
    if kinds != ["overlay", "pdf", "seg", "sr"]:
        raise RuntimeError(f"produced {kinds}")
    return total, dict(spent)


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def highdicom_peer(sources: list[Dataset], result: PipelineResult) -> tuple[float, dict]:
    """The same SEG and SR as a user would write them with highdicom, saved to bytes."""
    spent: dict[str, float] = {}
    started = time.perf_counter()
    assert result.segmentation is not None and result.segmentation.finding_map is not None
    algorithm = hd.AlgorithmIdentificationSequence(
        name=result.pipeline_name,
        family=codes.DCM.ArtificialIntelligence,
        version=result.pipeline_version,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=finding.tracking_id,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=finding.tracking_uid,
            tracking_id=finding.tracking_id,
        )
        for number, finding in enumerate(result.findings, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=result.segmentation.finding_map,  # finding n's pixels hold n
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="peer",
        manufacturer_model_name="peer",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=True,
    )
    seg_bytes = _encode(seg)
    spent["SEG build"] = time.perf_counter() - started
    started_sr = time.perf_counter()
    groups = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=finding.tracking_uid, identifier=finding.tracking_id
            ),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(result.series_instance_uid),
            ),
            finding_type=codes.SCT.Lesion,
            measurements=[
                hd.sr.Measurement(
                    name=codes.SCT.Volume,
                    value=float(finding.measurements.volume_mm3 or 0.0),
                    unit=codes.UCUM.CubicMillimeter,
                )
            ],
        )
        for number, finding in enumerate(result.findings, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=hd.UID(), name="peer"
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        referenced_images=sources,
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=101,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="peer",
    )
    sr_bytes = _encode(document)
    spent["SR build"] = time.perf_counter() - started_sr
    assert seg_bytes and sr_bytes
    return time.perf_counter() - started, spent


def profile(sources: list[Dataset], result: PipelineResult, out: Path, top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    produce_results(result, sources, DEMO_3D, out)
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    stats.print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--findings", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one produce_results")
    parser.add_argument("--top", type=int, default=40, help="with --profile: rows to print")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pacsnode-bench-results-"))
    started = time.perf_counter()
    sources, result = make_study(work / "study", args.slices, args.size, args.findings)
    print(
        f"study: CT {args.slices} x {args.size}², {len(result.findings)} findings "
        f"({time.perf_counter() - started:.1f} s to make)",
        flush=True,
    )
    if args.profile:
        node_run(sources, result, work / "warm")
        profile(sources, result, work / "profile", args.top)
        return 0
    node_run(sources, result, work / "warm")  # imports, fonts, caches: not counted
    highdicom_peer(sources, result)
    totals: dict[str, list[float]] = defaultdict(list)
    stages: dict[str, list[float]] = defaultdict(list)
    for run in range(args.runs):
        total, spent = node_run(sources, result, work / f"run{run}")
        totals["node"].append(total)
        for name, seconds in spent.items():
            stages[name].append(seconds)
        peer_total, peer_spent = highdicom_peer(sources, result)
        totals["peer"].append(peer_total)
        for name, seconds in peer_spent.items():
            stages[f"peer {name}"].append(seconds)
        print(
            f"run {run + 1}: produce_results {total:.3f} s (CPU {spent['cpu']:.3f} s), "
            f"highdicom {peer_total:.3f} s",
            flush=True,
        )
    node_s, peer_s = statistics.median(totals["node"]), statistics.median(totals["peer"])
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"\nmedians of {args.runs} runs, CT {args.slices} x {args.size}², "
        f"{len(result.findings)} findings (load average {load}):"
    )
    print("| stage | seconds |\n|---|---|")
    for name in sorted(stages, key=lambda n: (n.startswith("peer"), n)):
        if name != "cpu":
            print(f"| {name} | {statistics.median(stages[name]):.3f} |")
    verdict = "meets" if node_s < TARGET_S else "MISSES"
    print(f"| **produce_results total** | **{node_s:.3f}** ({verdict} target {TARGET_S:.1f} s) |")
    print(f"| produce_results, process CPU | {statistics.median(stages['cpu']):.3f} |")
    print(f"| **highdicom SEG + SR by hand** | **{peer_s:.3f}** |")
    print(f"ratio produce_results / highdicom by hand: {node_s / peer_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
