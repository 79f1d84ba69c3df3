"""Inference benchmark: the node's pipeline vs the bare model, per model and per ensemble, on CPU.

Cases: a 512x512 radiograph (CR) and a 100-slice 512x512 CT volume, both phantoms written as real
DICOM files. "bare" is the model alone on an already prepared tensor (for 3D: MONAI's sliding
window on it); "node" is ``Pipeline.run`` on the DICOM files (decode, VOI, resample, inference,
inverse mapping, post-processing, measurements, findings). Overhead = node / bare - 1; the target
is < 10 %, measured on process CPU time (robust to other load on a shared machine), wall time is
shown too. Bare and node are timed in turns in one process: a model's own speed drifts by 10-15 %
from one process to the next, the size of the target. Peak memory is the RSS peak of the first
run above the level after the models loaded (sampled, each of bare and node in a fresh process).

    .venv/bin/python bench/inference.py             # full (several minutes on 2 cores)
    .venv/bin/python bench/inference.py --quick     # smaller volume, one repeat
    .venv/bin/python bench/inference.py --only "ensemble seg3d"   # the cases so labelled
    .venv/bin/python bench/inference.py --only "105-label UNet" --repeat 1   # many labels, 300 x 512² CT

The 105-label case (background + the 104 structures of MONAI's wholeBody_ct_segmentation, coded
from the shipped SNOMED CT map) runs a cheap 105-channel 3D UNet at 3 mm on a ``--many-slices``
(300) x 512² CT: it measures what many labels cost the node (inverse mapping, arg-max, clean-up,
measurements), whose float32 probabilities at source resolution alone would take 33 GB.
    .venv/bin/python bench/inference.py --only 105-label-bundle --repeat 1   # the same, as a bundle

The 105-label-bundle case runs the real wholeBody_ct_segmentation bundle configuration in the
bundle's own low-resolution mode (``highres: false``, 3 mm) through its own transforms, inferer
(96³ windows) and ``Invertd``, with the same cheap 105-channel UNet as the 105-label case in place
of its SegResNet (too slow on a shared 2-core CPU; what is measured is the node's handling of 105
channels, not the network); bare is its inferer on its own pre-processed image.
    .venv/bin/python bench/inference.py --models-dir models/cards --only explain  # Grad-CAM cost
    .venv/bin/python bench/inference.py --models-dir models/cards --breakdown  # fixed cost

``--breakdown`` adds a table of the node's wall time per stage (:mod:`pipelines.stages`: decode,
VOI, resampling to the model grid, inference, mapping back, label map, post-processing,
measurements) of each case's fastest run; "fixed" is everything but inference: the node's fixed
cost, whose target for the 100 x 512² CT is < 0.15 s.

The "explain" rows (demo models only) run demo-2d's three classifiers with the classification
option ``explain`` off and on (Grad-CAM): their node columns differ by the explanation's cost.

Models: moderately sized benchmark networks (random weights) written to a temporary folder, among
them one with the network and inference settings of MONAI's model-zoo spleen_ct_segmentation
bundle (a published model of clinical size), or the cards of ``--models-dir`` (e.g.
``models/cards``: the small demo models). A network's speed
does not depend on its weights, but the node's does a little: every connected component of the
mask becomes a measured finding, and random weights give noisy masks (up to the 100 components
post-processing keeps), so the table shows the findings count.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import Settings  # noqa: E402
from models.card import ModelCard, sha256_file, write_card  # noqa: E402
from models.registry import ModelRegistry  # noqa: E402
from pipelines.allocator import keep_freed_memory  # noqa: E402
from pipelines.contract import SourceSeries, StudyInput  # noqa: E402
from pipelines.pipeline import Pipeline, warm_up_kernels  # noqa: E402
from pipelines.preprocess.decode import decode_series  # noqa: E402
from pipelines.preprocess.prepare import prepare_2d, prepare_3d  # noqa: E402
from pipelines.spec import PipelineConfig, PreprocessingSpec, SegmentationTask  # noqa: E402
from pipelines.stages import collect_stages  # noqa: E402
from tests.memory import rss_peak  # noqa: E402
from tests.pipelines.bundles import CHEAP_105_UNET, low_resolution, write_bundle  # noqa: E402

LESION = {
    "value": 1,
    "name": "lesion",
    "category": {
        "value": "49755003",
        "scheme": "SCT",
        "meaning": "Morphologically Altered Structure",
    },
    "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
}
CLASSES = [{**LESION, "name": "normal"}, {**LESION, "value": 2, "name": "abnormal"}]
WINDOW_12BIT = {"mode": "window", "center": 2047.5, "width": 4095.0}
CT_WINDOW = {"mode": "window", "center": 40.0, "width": 400.0}
SPLEEN_WINDOW = {"mode": "window", "center": 53.5, "width": 221.0}  # the bundle's -57..164 HU
WORKER_MALLOC_KEEP_MB: int = Settings.model_fields["worker_malloc_keep_mb"].default
SPLEEN_WINDOWS = {"sw_batch_size": 4, "sw_overlap": 0.5}  # the bundle's SlidingWindowInferer
WHOLEBODY = ROOT / "tests/data/monai_bundles/wholeBody_ct_segmentation"
WHOLEBODY_METADATA = WHOLEBODY / "configs/metadata.json"


def wholebody_labels() -> list[dict[str, Any]]:
    """The 104 labels of wholeBody_ct_segmentation, coded from the shipped SNOMED CT map."""
    import json

    from models.label_codes import bundle_labels

    metadata = json.loads(WHOLEBODY_METADATA.read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = [channel_def[k] for k in sorted(channel_def, key=int)]
    return [lab.model_dump(mode="json") for lab in bundle_labels(names, [], "bench")]


# ---- models ---------------------------------------------------------------------------------
def write_wholebody_bundle(models_dir: Path, name: str, network_def: dict[str, Any]) -> None:
    """The real wholeBody_ct_segmentation configuration in its low-resolution mode (3 mm) with
    ``network_def`` (seeded random weights) for its SegResNet, behind a card that lists no
    labels."""
    card = {
        "version": "bench",
        "weights": WHOLEBODY.name,
        "device_uid": "1.2.826.0.1.3680043.10.1359.98.1",
        "disclaimer": "",
    }
    write_bundle(models_dir, name, WHOLEBODY.name, card, edit_config=low_resolution(network_def))


def _card(folder: Path, **fields: Any) -> None:
    weights = folder / fields.pop("weights")
    card = ModelCard.model_validate(
        {
            "version": "bench",
            "weights": weights.name,
            "sha256": sha256_file(weights),
            "device_uid": "1.2.826.0.1.3680043.10.1359.98.1",
            **fields,
        }
    )
    write_card(card, folder / "card.yaml")


def write_bench_models(models_dir: Path) -> dict[str, str]:
    """Realistically sized networks (random weights) with cards; returns role -> model name."""
    import timm

    from models.loaders.monai import build_monai_network

    monai_specs: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
        "bench-seg-unet": (
            "UNet",
            {
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [16, 32, 64, 128, 256],
                "strides": [2, 2, 2, 2],
                "num_res_units": 2,
            },
            {"dims": 2, "spatial_size": [256, 256], "intensity": WINDOW_12BIT},
        ),
        "bench-seg-segresnet": (
            "SegResNet",
            {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_filters": 16},
            {"dims": 2, "spatial_size": [256, 256], "intensity": WINDOW_12BIT},
        ),
        "bench-seg3d-unet": (
            "UNet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [16, 32, 64, 128],
                "strides": [2, 2, 2],
                "num_res_units": 1,
            },
            {
                "dims": 3,
                "spatial_size": [32, 128, 128],
                "axcodes": "SPL",
                "pixdim": [2.5, 1.5, 1.5],
                "intensity": CT_WINDOW,
            },
        ),
        # the network, grid, window and ROI of MONAI's model-zoo spleen_ct_segmentation bundle
        # (configs/inference.json): a published clinical-size 3D model
        "bench-seg3d-spleen": (
            "UNet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [16, 32, 64, 128, 256],
                "strides": [2, 2, 2, 2],
                "num_res_units": 2,
                "norm": "batch",
            },
            {
                "dims": 3,
                "spatial_size": [96, 96, 96],
                "axcodes": "SPL",
                "pixdim": [2.0, 1.5, 1.5],
                "intensity": SPLEEN_WINDOW,
            },
        ),
    }
    many = dict(CHEAP_105_UNET)  # the output of a 104-organ model: 105 channels, one softmax
    torch.manual_seed(0)
    folder = models_dir / "bench-seg3d-105"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(build_monai_network("UNet", many).state_dict(), folder / "model.pt")
    _card(
        folder,
        name="bench-seg3d-105",
        task="segmentation",
        framework="monai",
        architecture="UNet",
        arguments=many,
        weights="model.pt",
        input={
            "dims": 3,
            "spatial_size": [64, 64, 64],
            "axcodes": "SPL",
            "pixdim": [3.0, 3.0, 3.0],
            "intensity": CT_WINDOW,
        },
        labels=wholebody_labels(),
    )
    write_wholebody_bundle(models_dir, "bench-bundle-105", {"_target_": "UNet", **many})
    torch.manual_seed(0)  # random but reproducible weights
    for name, (arch, args, input_spec) in monai_specs.items():
        folder = models_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(build_monai_network(arch, args).state_dict(), folder / "model.pt")
        _card(
            folder,
            name=name,
            task="segmentation",
            framework="monai",
            architecture=arch,
            arguments=args,
            weights="model.pt",
            input=input_spec,
            labels=[LESION],
        )
    folder = models_dir / "bench-cls-resnet"
    folder.mkdir(parents=True, exist_ok=True)
    cls_args: dict[str, Any] = {"num_classes": 2, "in_chans": 1}
    network = timm.create_model("resnet18", pretrained=False, num_classes=2, in_chans=1)
    torch.save(network.state_dict(), folder / "model.pt")
    _card(
        folder,
        name="bench-cls-resnet",
        task="classification",
        framework="timm",
        architecture="resnet18",
        arguments=cls_args,
        weights="model.pt",
        input={
            "dims": 2,
            "spatial_size": [256, 256],
            "intensity": {**WINDOW_12BIT, "mean": [0.5], "std": [0.25]},
        },
        labels=CLASSES,
    )
    return {
        "seg": "bench-seg-unet",
        "seg2": "bench-seg-segresnet",
        "cls": "bench-cls-resnet",
        "seg3d": "bench-seg3d-unet",
        "spleen": "bench-seg3d-spleen",
        "many": "bench-seg3d-105",
        "many-bundle": "bench-bundle-105",
    }


def demo_models(models_dir: Path) -> dict[str, str] | None:
    from models.card import load_cards

    cards = load_cards(models_dir)
    roles = {
        "seg": "demo-seg-unet",
        "seg2": "demo-seg-segresnet",
        "cls": "demo-cls-resnet",
        "seg3d": "demo-seg3d-unet",
        # the rest of demo-2d's classification ensemble, for the explanation cost
        "cls2": "demo-cls-densenet",
        "cls3": "demo-cls-efficientnet",
    }
    return roles if set(roles.values()) <= set(cards) else None


# ---- data -----------------------------------------------------------------------------------
def write_studies(folder: Path, slices: int) -> tuple[StudyInput, StudyInput]:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom, make_3d_phantom

    rng = np.random.default_rng(0)
    cr = write_series(make_2d_phantom(rng, size=512, lesion_count=2), folder / "cr", modality="CR")
    ct = write_series(make_3d_phantom(rng, shape=(slices, 512, 512), lesion_count=2), folder / "ct")
    return _study(cr, "CR"), _study(ct, "CT")


def _study(paths: list[Path], modality: str) -> StudyInput:
    import pydicom

    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series = SourceSeries(str(ds.SeriesInstanceUID), modality, str(ds.SOPClassUID), tuple(paths))
    return StudyInput(str(ds.StudyInstanceUID), (series,))


# ---- measuring ------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: float  # wall time, fastest of the repeats (least disturbed by other load)
    median: float
    cpu_seconds: float  # process CPU time (all threads), fastest of the repeats
    peak_mb: float  # RSS peak above the level after the models were loaded
    findings: int = 0  # node only: findings in the result
    stages: dict[str, float] | None = None  # node with --breakdown: stage times of the fastest run
    paired: Timing | None = None  # node only: the bare model timed in turns with it (run_case)
    # node only: node CPU / bare CPU - 1 of each turn (a node run and the bare run beside it)
    turn_overheads: tuple[float, ...] = ()


@dataclass(frozen=True)
class Case:
    label: str
    study: str  # "cr" | "ct" | "ct-many" (--many-slices)
    dims: int
    tasks: dict[str, Any]
    bare: tuple[tuple[str, str], ...]  # (kind "2d" | "2d-volume" | "3d" | "bundle", model name)


def pipeline_config(dims: int, tasks: dict[str, Any], modality: str) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": f"bench-{dims}d",
            "version": "1",
            "selection": {"dims": dims, "modality": [modality]},
            "tasks": tasks,
        }
    )


def members(*names: str) -> dict[str, Any]:
    return {"members": [{"model": n, "device": "cpu"} for n in names], "batch_size": 16}


def seg_members(*names: str) -> dict[str, Any]:
    """Segmentation members with the demo pipelines' post-processing (speckle removal)."""
    return {**members(*names), "postprocess": {"min_component_pixels": 8}}


def bare_call(
    registry: ModelRegistry, study: StudyInput, kind: str, name: str, task: SegmentationTask | None
) -> Callable[[], Any]:
    """The model alone on the tensor the pipeline would build (prepared outside the timing).

    3D models get the sliding window of the pipeline's segmentation ``task``.
    """
    model = registry.get(name, "cpu")
    decoded = decode_series(study.series[0])
    if kind == "bundle":  # the bundle's inferer on its own pre-processed image
        from pipelines.preprocess.orientation import series_as_metatensor

        bundle = model.bundle  # type: ignore[attr-defined]
        image = bundle.preprocessing({bundle.image_key: series_as_metatensor(decoded)})[
            bundle.image_key
        ]

        def run_bundle() -> None:
            with torch.no_grad():
                bundle.inferer(image[None], bundle.network)

        return run_bundle
    if kind == "3d":
        from monai.inferers import sliding_window_inference

        assert task is not None, "a 3D model runs in a segmentation task"
        volume = prepare_3d(decoded, model.card.input, PreprocessingSpec()).volume
        roi = tuple(model.card.input.spatial_size)

        def run_3d() -> None:
            with torch.inference_mode():
                sliding_window_inference(
                    volume, roi, task.sw_batch_size, model.forward, overlap=task.sw_overlap
                )

        return run_3d
    per_frame = kind != "2d-volume"
    batch = prepare_2d(decoded, model.card.input, PreprocessingSpec(), per_frame=per_frame).batch

    def run_2d() -> None:
        for start in range(0, batch.shape[0], 16):
            model.forward(batch[start : start + 16])

    return run_2d


def run_case(
    case: Case,
    mode: str,
    study: StudyInput,
    models_dir: str,
    repeat: int,
    threads: int,
    breakdown: bool = False,
    malloc_keep_mb: int = WORKER_MALLOC_KEEP_MB,
) -> Timing:
    """In a fresh process: load models and sample the memory of ``mode``'s ("bare" | "node")
    first (warm-up) run; "node" then times itself ``repeat`` times.

    "node" also times the bare model, in turns with the node in this same process
    (``Timing.paired``): the model's own speed drifts by 10-15 % from one process to the next
    (seen as the node's inference stage running that much slower or faster than the bare model
    in a separate process), which is the size of the 10 % ensemble target; side by side in one
    process the drift cancels out. The bare call's tensors are prepared after the node's memory
    was sampled, so they do not count in it. ``breakdown``: also collect the node's stage times
    (:mod:`pipelines.stages`) of each run."""
    if threads:
        torch.set_num_threads(threads)
    # the allocator as a worker sets it (app.worker.build_worker), for bare and node alike
    keep_freed_memory(malloc_keep_mb)
    registry = ModelRegistry(Path(models_dir))

    def bare_fn() -> Callable[[], Any]:
        segmentation = pipeline_config(
            case.dims, case.tasks, study.series[0].modality
        ).tasks.segmentation
        calls = [bare_call(registry, study, kind, name, segmentation) for kind, name in case.bare]
        return lambda: [call() for call in calls]

    if mode != "node":  # the bare model's memory alone; its times come from "node"
        bare = bare_fn()
        with rss_peak() as rss:
            bare()
        return Timing(float("nan"), float("nan"), float("nan"), rss.rise_mb)
    modality = study.series[0].modality
    pipeline = Pipeline(pipeline_config(case.dims, case.tasks, modality), registry)
    pipeline.members()  # load the models before the baseline
    warm_up_kernels()  # and numba's kernels, loaded once per process as the models are (~130 MB)
    with rss_peak() as rss:
        warm = pipeline.run(study)  # warm-up (counted for memory, not for time)
    bare = bare_fn()
    bare()  # its warm-up
    node_runs: list[tuple[float, float, dict[str, float]]] = []
    bare_runs: list[tuple[float, float]] = []
    for turn in range(repeat):  # alternate which goes first: neither always runs on a warm cache
        for which in ("node", "bare") if turn % 2 == 0 else ("bare", "node"):
            if which == "bare":
                bare_runs.append(_timed(bare))
                continue
            with collect_stages() if breakdown else _nothing() as collected:
                wall, cpu = _timed(lambda: pipeline.run(study))
            node_runs.append((wall, cpu, {**(collected or {}), "total": wall}))
    times = [wall for wall, _, _ in node_runs]
    fastest = node_runs[times.index(min(times))][2] if breakdown else None
    turns = turn_overheads([cpu for _, cpu, _ in node_runs], [cpu for _, cpu in bare_runs])
    return Timing(
        min(times),
        statistics.median(times),
        min(cpu for _, cpu, _ in node_runs),
        rss.rise_mb,
        len(warm.findings),
        fastest,
        paired=_summary(bare_runs, float("nan")),
        turn_overheads=turns,
    )


def turn_overheads(node_cpu: list[float], bare_cpu: list[float]) -> tuple[float, ...]:
    """Each turn's node CPU / bare CPU - 1: the node run against the bare run beside it (turn
    ``i`` ran ``node_cpu[i]`` and ``bare_cpu[i]`` back to back); a bare run with no CPU time
    gives no ratio."""
    return tuple(node / bare - 1 for node, bare in zip(node_cpu, bare_cpu, strict=True) if bare)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def _summary(runs: list[tuple[float, float]], peak_mb: float) -> Timing:
    times = [wall for wall, _ in runs]
    return Timing(min(times), statistics.median(times), min(cpu for _, cpu in runs), peak_mb)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield None


BREAKDOWN_STAGES = (
    "decode",
    "intensity",
    "resample",
    "prepare",
    "inference",
    "map back",
    "label map",
    "post-process",
    "measure",
)


def print_breakdown(rows: list[tuple[str, str, Timing, Timing]]) -> None:
    """The node's wall seconds per stage of each case's fastest run; fixed = all but inference."""
    print(
        "\nNode stages, wall s of the fastest run (prepare: the rest of preparing inputs; "
        "other: outside every stage; fixed: total - inference)"
    )
    names = [*BREAKDOWN_STAGES, "other", "total", "fixed"]
    header = f"{'model / ensemble':34} {'input':16} " + " ".join(f"{n:>9}" for n in names)
    print(header)
    print("-" * len(header))
    for label, study_name, _, node in rows:
        stages = dict(node.stages or {})
        total = stages.pop("total", node.seconds)
        values = [stages.pop(name, 0.0) for name in BREAKDOWN_STAGES]
        values[-1] += sum(stages.values())  # a stage this table does not name (none today)
        values += [total - sum(values), total, total - values[BREAKDOWN_STAGES.index("inference")]]
        print(f"{label:34} {study_name:16} " + " ".join(f"{v:9.3f}" for v in values))


def in_child(*args: Any) -> Timing:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_case, args)


def cases(roles: dict[str, str]) -> list[Case]:
    seg, seg2, cls, seg3d = roles["seg"], roles["seg2"], roles["cls"], roles["seg3d"]
    bundle = []
    if "spleen" in roles:  # benchmark networks only: the demo models have no clinical-size one
        spleen = roles["spleen"]
        bundle = [
            Case(
                f"{spleen} (sliding window)",
                "ct",
                3,
                {"segmentation": {**seg_members(spleen), **SPLEEN_WINDOWS}},
                (("3d", spleen),),
            ),
            Case(
                "ensemble spleen + cls",
                "ct",
                3,
                {
                    "segmentation": {**seg_members(spleen), **SPLEEN_WINDOWS},
                    "classification": members(cls),
                },
                (("3d", spleen), ("2d-volume", cls)),
            ),
        ]
    if "many" in roles:
        bundle.append(
            Case(
                "105-label UNet 3D (3 mm)",
                "ct-many",
                3,
                {"segmentation": {**seg_members(roles["many"]), "sw_batch_size": 4}},
                (("3d", roles["many"]),),
            )
        )
    if "many-bundle" in roles:
        bundle.append(
            Case(
                "105-label-bundle wholeBody (3 mm)",
                "ct-many",
                3,
                {"segmentation": seg_members(roles["many-bundle"])},
                (("bundle", roles["many-bundle"]),),
            )
        )
    explained = []
    if "cls2" in roles and "cls3" in roles:  # the demo-2d classification ensemble (demo models)
        ensemble = (cls, roles["cls2"], roles["cls3"])
        explained = [
            Case(
                f"cls ensemble x3, explain {method}",
                "cr",
                2,
                {"classification": {**members(*ensemble), "explain": method}},
                tuple(("2d", name) for name in ensemble),
            )
            for method in ("none", "gradcam")
        ]
    return [
        Case(seg, "cr", 2, {"segmentation": seg_members(seg)}, (("2d", seg),)),
        Case(seg2, "cr", 2, {"segmentation": seg_members(seg2)}, (("2d", seg2),)),
        Case(cls, "cr", 2, {"classification": members(cls)}, (("2d", cls),)),
        Case(
            "ensemble seg x2 + cls",
            "cr",
            2,
            {"segmentation": seg_members(seg, seg2), "classification": members(cls)},
            (("2d", seg), ("2d", seg2), ("2d", cls)),
        ),
        Case(
            f"{seg3d} (sliding window)",
            "ct",
            3,
            {"segmentation": seg_members(seg3d)},
            (("3d", seg3d),),
        ),
        Case(
            f"{cls} (slice-wise)", "ct", 3, {"classification": members(cls)}, (("2d-volume", cls),)
        ),
        Case(
            "ensemble seg3d + cls",
            "ct",
            3,
            {"segmentation": seg_members(seg3d), "classification": members(cls)},
            (("3d", seg3d), ("2d-volume", cls)),
        ),
        *bundle,
        *explained,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="models to time (default: benchmark networks); models/cards: the demo models",
    )
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--many-slices", type=int, default=300, help="CT of the 105-label case")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="20 slices, one repeat")
    parser.add_argument(
        "--breakdown", action="store_true", help="also print the node's time per stage"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only the cases whose label contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--malloc-keep-mb",
        type=int,
        default=WORKER_MALLOC_KEEP_MB,
        help="freed memory each timed process keeps for reuse, as a worker's "
        "worker_malloc_keep_mb does (default: the setting's default); 0: glibc's defaults",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.repeat = 20, 1

    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-") as tmp:
        work = Path(tmp)
        if args.models_dir is None:
            models_dir = work / "models"
            roles = write_bench_models(models_dir)
        else:
            models_dir = args.models_dir
            found = demo_models(models_dir)
            if found is None:
                parser.error(f"{models_dir} lacks one of the demo models the cases need")
            roles = found
        selected = [
            case
            for case in cases(roles)
            if not args.only or any(text in case.label for text in args.only)
        ]
        cr, ct = write_studies(work, args.slices)
        studies = {"cr": (cr, "CR 512x512"), "ct": (ct, f"CT {args.slices}x512x512")}
        if any(case.study == "ct-many" for case in selected):
            _, many = write_studies(work / "many", args.many_slices)
            studies["ct-many"] = (many, f"CT {args.many_slices}x512x512")
        rows: list[tuple[str, str, Timing, Timing]] = []
        for case in selected:
            study, study_name = studies[case.study]
            # the bare model's memory alone, in its own process; its times are taken in turns
            # with the node's (run_case)
            bare = in_child(
                case, "bare", study, str(models_dir), 0, args.threads, False, args.malloc_keep_mb
            )
            node = in_child(
                case,
                "node",
                study,
                str(models_dir),
                args.repeat,
                args.threads,
                args.breakdown,
                args.malloc_keep_mb,
            )
            rows.append((case.label, study_name, bare, node))
            print(f"  done: {case.label} on {study_name}", file=sys.stderr, flush=True)

    threads = args.threads or torch.get_num_threads()
    print(
        f"\ntorch {torch.__version__}, CPU, {threads} threads; fastest of {args.repeat} runs "
        f"(wall median in brackets), bare and node in turns in one process. Overhead = node CPU "
        f"time / bare CPU time - 1 (CPU time is not inflated by other load on a shared machine) "
        f"of the fastest runs; 'turns' = the median of each turn's own ratio (a node run against "
        f"the bare run beside it: less moved by one disturbed run). Memory = RSS peak of the "
        f"first run above the loaded-model baseline, each in its own process. malloc keeps "
        f"{args.malloc_keep_mb} MB of freed memory for reuse in both, as a worker does "
        f"(worker_malloc_keep_mb; 0: glibc's defaults)."
    )
    header = (
        f"{'model / ensemble':34} {'input':16} {'bare wall s':>16} {'node wall s':>16} "
        f"{'bare cpu':>8} {'node cpu':>8} {'overhead':>8} {'turns':>8} {'bare MB':>7} "
        f"{'node MB':>7} {'findings':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, study_name, alone, node in rows:
        assert node.paired is not None
        plain = replace(node.paired, peak_mb=alone.peak_mb)  # times beside the node's
        cpu = plain.cpu_seconds
        overhead = node.cpu_seconds / cpu - 1 if cpu else float("nan")
        turns = statistics.median(node.turn_overheads) if node.turn_overheads else float("nan")
        print(
            f"{label:34} {study_name:16} {plain.seconds:7.3f} ({plain.median:6.3f}) "
            f"{node.seconds:7.3f} ({node.median:6.3f}) {plain.cpu_seconds:8.2f} "
            f"{node.cpu_seconds:8.2f} {overhead:8.1%} {turns:8.1%} {plain.peak_mb:7.0f} "
            f"{node.peak_mb:7.0f} {node.findings:8d}"
        )
    if args.breakdown:
        print_breakdown(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
