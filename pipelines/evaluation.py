"""``pacsnode evaluate``: every demo model and ensemble on held-out phantoms and real MR volumes.

Ensembles combine members exactly like the pipelines do (``pipelines.ensemble.weighted_mean`` over
probabilities, demo weights from :mod:`models.training.demo_specs`). The 3D pair is scored on
held-out CT phantoms at its own grid (whole volumes, the roi the cards declare). The real MR volumes (brain,
breast, prostate from ``../shared/data/labelled-volumes``) are segmented slice-wise by the 2D pair:
the demo networks never saw MR, so those numbers show the limits of phantom training, nothing more.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.card import ModelCard, write_card
from models.evaluation.metrics import classification_scores, detection_scores, segmentation_scores
from models.loaders import LoadedModel
from models.registry import ModelRegistry
from models.training.datasets import make_dataset_2d, make_dataset_3d
from models.training.demo_specs import (
    CLASSIFICATION_THRESHOLD,
    CLASSIFICATION_WEIGHTS,
    INPUT_SIZE_2D,
    SEGMENTATION_WEIGHTS,
    STUDY_CLASSIFICATION_THRESHOLD,
    VOLUME_SHAPE_3D,
)
from models.training.preprocess import apply_intensity
from pipelines.ensemble import weighted_mean
from pipelines.evaluation_anomaly import comparison, evaluate_anomaly, format_anomaly
from pipelines.evaluation_enhancement import (
    enhancement_comparison,
    evaluate_enhancement,
    format_enhancement,
)
from pipelines.postprocess import postprocess_components
from pipelines.spec import PostprocessSpec
from pipelines.tasks.classification import segmentation_study_score

log = logging.getLogger(__name__)

HELDOUT_2D = 200
HELDOUT_3D = 6
HELDOUT_3D_GRID = 48  # volumes for the 3D pair (cheap at its 32x64x64 grid)
HELDOUT_STUDIES_3D = 64  # whole CT phantoms the study-level decision is scored on
LABELLED_PAIRS = [
    ("brain1_image.nrrd", "brain1_label.nrrd"),
    ("brain2_image.nrrd", "brain2_label.nrrd"),
    ("breast1_image.nrrd", "breast1_label.nrrd"),
    ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd"),
]
LABELLED_VOLUMES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "labelled-volumes"
)


def _batched_forward(model: LoadedModel, images: np.ndarray, batch: int = 64) -> np.ndarray:
    outs = [
        model.forward(torch.from_numpy(images[i : i + batch])).numpy()
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outs)


def _normalise_all(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    return np.stack([apply_intensity(img, model.card.input.intensity) for img in images])


def evaluate_segmentation(models: dict[str, LoadedModel], seed: int) -> dict[str, dict[str, Any]]:
    data = make_dataset_2d(seed, HELDOUT_2D, INPUT_SIZE_2D)
    probs = {
        name: _batched_forward(m, _normalise_all(m, data.images)) for name, m in models.items()
    }
    return _segmentation_scores(models, probs, list(data.masks))


def evaluate_segmentation_3d(
    models: dict[str, LoadedModel], seed: int
) -> dict[str, dict[str, Any]]:
    """The 3D pair on held-out CT phantoms at the cards' grid (whole volume = one roi)."""
    data = make_dataset_3d(
        seed + 11, HELDOUT_3D_GRID, VOLUME_SHAPE_3D
    )  # windowed like the cards say
    probs = {name: _batched_forward(m, data.volumes, batch=4) for name, m in models.items()}
    return _segmentation_scores(models, probs, list(data.masks))


def _segmentation_scores(
    models: dict[str, LoadedModel], probs: dict[str, np.ndarray], truths: list[np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Per member (argmax of its probabilities) and for their weighted-mean ensemble."""
    results: dict[str, dict[str, Any]] = {
        name: segmentation_scores(list(p.argmax(1)), truths) for name, p in probs.items()
    }
    names = list(models)
    fused = weighted_mean(
        [probs[n] for n in names], [SEGMENTATION_WEIGHTS.get(n, 1.0) for n in names]
    )
    results["ensemble"] = segmentation_scores(list(fused.argmax(1)), truths)
    return results


def _slicewise_probabilities(model: LoadedModel, volume: np.ndarray) -> np.ndarray:
    """Lesion probability per voxel from the 2D model run slice by slice at its input size."""
    size = model.card.input.spatial_size
    slices = np.stack([apply_intensity(s, model.card.input.intensity) for s in volume])[:, None]
    x = F.interpolate(
        torch.from_numpy(slices), size=tuple(size), mode="bilinear", align_corners=False
    )
    probs = _batched_forward(model, x.numpy())[:, 1:2]
    back = F.interpolate(
        torch.from_numpy(probs), size=volume.shape[1:], mode="bilinear", align_corners=False
    )
    return back[:, 0].numpy()


def evaluate_volumes_slicewise(
    models: dict[str, LoadedModel], seed: int
) -> dict[str, dict[str, Any]]:
    """The 2D pair applied slice-wise to CT phantoms and (when present) the labelled MR volumes."""
    cases: list[tuple[str, np.ndarray, np.ndarray]] = []
    ct = make_dataset_3d(seed + 7, HELDOUT_3D, shape=(24, 96, 96))
    cases += [
        (f"ct-phantom-{i}", v[0], m)
        for i, (v, m) in enumerate(zip(ct.volumes, ct.masks, strict=True))
    ]
    if LABELLED_VOLUMES.is_dir():
        import nrrd

        for image_name, label_name in LABELLED_PAIRS:
            image_file, label_file = LABELLED_VOLUMES / image_name, LABELLED_VOLUMES / label_name
            if not (image_file.exists() and label_file.exists()):
                continue
            image, _ = nrrd.read(str(image_file))
            label, _ = nrrd.read(str(label_file))
            if image.shape != label.shape:
                continue
            # NRRD is (x, y, z); slice along the last axis
            cases.append(
                (
                    f"mr-{image_file.stem.removesuffix('_image')}",
                    np.transpose(image, (2, 1, 0)).astype(np.float32),
                    np.transpose(label, (2, 1, 0)) > 0,
                )
            )
    results: dict[str, dict[str, Any]] = {}
    names = list(models)
    for groups in ("ct-phantom", "mr-"):
        subset = [c for c in cases if c[0].startswith(groups)]
        if not subset:
            continue
        per_model: dict[str, list[np.ndarray]] = {n: [] for n in [*names, "ensemble"]}
        for _, volume, _ in subset:
            probs = {n: _slicewise_probabilities(models[n], volume) for n in names}
            for n in names:
                per_model[n].append(probs[n] > 0.5)
            fused = weighted_mean(
                [probs[n] for n in names], [SEGMENTATION_WEIGHTS.get(n, 1.0) for n in names]
            )
            per_model["ensemble"].append(fused > 0.5)
        key = "ct_phantoms_slicewise" if groups == "ct-phantom" else "labelled_mr_slicewise"
        truths = [c[2] for c in subset]
        for n, preds in per_model.items():
            scores: dict[str, Any] = {**segmentation_scores(preds, truths)}
            scores["volumes"] = ", ".join(c[0] for c in subset)
            results.setdefault(n, {})[key] = scores
    return results


def evaluate_classification(models: dict[str, LoadedModel], seed: int) -> dict[str, dict[str, Any]]:
    data = make_dataset_2d(seed + 1, HELDOUT_2D, INPUT_SIZE_2D)
    probs = {
        name: _batched_forward(m, _normalise_all(m, data.images)) for name, m in models.items()
    }
    results: dict[str, dict[str, Any]] = {
        name: classification_scores(p[:, 1], data.labels, CLASSIFICATION_THRESHOLD)
        for name, p in probs.items()
    }
    names = list(models)
    fused = weighted_mean(
        [probs[n] for n in names], [CLASSIFICATION_WEIGHTS.get(n, 1.0) for n in names]
    )
    results["ensemble"] = classification_scores(fused[:, 1], data.labels, CLASSIFICATION_THRESHOLD)
    results["ensemble"]["weights"] = {n: CLASSIFICATION_WEIGHTS.get(n, 1.0) for n in names}
    return results


def evaluate_study_classification_3d(
    models: dict[str, LoadedModel], seed: int, postprocess: PostprocessSpec | None = None
) -> dict[str, Any]:
    """The study-level decision demo-3d derives from its 3D segmentation pair (``source:
    segmentation``), scored on whole held-out CT phantoms, lesion-free or not, at the models' grid.

    The 2D radiograph classifiers applied slice by slice could not do this: every CT phantom got
    p(abnormal) 0.54-0.60, study-level AUROC 0.42-0.53 for max, mean, p90 and top-3 aggregation.
    """
    spec = postprocess or PostprocessSpec(min_component_mm3=20.0, min_component_pixels=8)
    data = make_dataset_3d(seed + 13, HELDOUT_STUDIES_3D, VOLUME_SHAPE_3D)
    names = list(models)
    probs = {name: _batched_forward(m, data.volumes, batch=4)[:, 1:] for name, m in models.items()}
    spacing = next(iter(models.values())).card.input.pixdim or (1.0, 1.0, 1.0)
    scores = []
    for index in range(len(data.volumes)):
        fused = weighted_mean(
            [probs[n][index] for n in names], [SEGMENTATION_WEIGHTS.get(n, 1.0) for n in names]
        )
        label_map, _ = postprocess_components(
            fused,
            ["lesion"],
            spec,
            volumetric=True,
            pixel_area_mm2=spacing[1] * spacing[2],
            voxel_volume_mm3=float(np.prod(spacing)),
        )
        scores.append(segmentation_study_score(fused, label_map, [spec.threshold]))
    result: dict[str, Any] = classification_scores(
        np.array(scores), data.labels, STUDY_CLASSIFICATION_THRESHOLD
    )
    result["members"] = names
    return result


def evaluate_detection(models: dict[str, LoadedModel], seed: int) -> dict[str, dict[str, Any]]:
    data = make_dataset_2d(seed + 2, HELDOUT_2D, INPUT_SIZE_2D)
    truths = [[b[:4] for b in boxes] for boxes in data.boxes]
    results: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        images = np.stack(
            [apply_intensity(img, model.card.input.intensity) for img in data.images[:, 0]]
        )
        raw = model.detect(images, conf=0.001)
        dets = [[((b[0], b[1], b[2], b[3]), b[5]) for b in per_image] for per_image in raw]
        results[name] = detection_scores(dets, truths)
    if len(models) == 1:  # one detector: the ensemble is that member
        results["ensemble"] = dict(next(iter(results.values())), members=list(models))
    return results


def evaluation_group(card: ModelCard) -> str:
    """The held-out set a demo model is scored on: its task, with 3D segmentation apart."""
    return "segmentation_3d" if card.task == "segmentation" and card.input.dims == 3 else card.task


def evaluate_all(
    models_dir: Path, seed: int = 999, write_cards: bool = False, only: str | None = None
) -> dict[str, Any]:
    """Evaluate every demo model present in ``models_dir`` (``only``: one evaluation group, see
    :func:`evaluation_group`); optionally write metrics into cards."""
    registry = ModelRegistry(models_dir)
    by_task: dict[str, dict[str, LoadedModel]] = {
        "segmentation": {},
        "segmentation_3d": {},
        "classification": {},
        "detection": {},
        "anomaly": {},
        "enhancement": {},
    }
    for name, card in sorted(registry.cards.items()):
        if name.startswith("demo-") and only in (None, evaluation_group(card)):
            by_task[evaluation_group(card)][name] = registry.get(name, "auto")
    report: dict[str, Any] = {"seed": seed, "models_dir": str(models_dir)}
    if by_task["segmentation"]:
        report["segmentation"] = evaluate_segmentation(by_task["segmentation"], seed)
        report["segmentation_volumes"] = evaluate_volumes_slicewise(by_task["segmentation"], seed)
    if by_task["segmentation_3d"]:
        report["segmentation_3d"] = evaluate_segmentation_3d(by_task["segmentation_3d"], seed)
        report["study_classification_3d"] = evaluate_study_classification_3d(
            by_task["segmentation_3d"], seed
        )
    if by_task["classification"]:
        report["classification"] = evaluate_classification(by_task["classification"], seed)
    if by_task["detection"]:
        report["detection"] = evaluate_detection(by_task["detection"], seed)
    if by_task["anomaly"]:
        report["anomaly"] = evaluate_anomaly(by_task["anomaly"], seed)
    if by_task["enhancement"]:
        report["enhancement"] = evaluate_enhancement(by_task["enhancement"], seed)
    if write_cards:
        _write_metrics(registry, by_task, report)
    return report


def _write_metrics(
    registry: ModelRegistry, by_task: dict[str, dict[str, LoadedModel]], report: dict[str, Any]
) -> None:
    today = dt.date.today().isoformat()
    for task, models in by_task.items():
        if task not in report:
            continue
        for name in models:
            card = registry.card(name)
            kind = "3d" if task == "segmentation_3d" else "2d"
            if task == "enhancement":  # each card: its own figures and the comparison
                metrics_e: dict[str, Any] = {
                    "evaluated": today,
                    "seed": report["seed"],
                    "heldout_noisy_phantoms_2d": report[task][name],
                    "comparison_heldout_noisy_phantoms_2d": enhancement_comparison(report[task]),
                }
                assert card.card_path is not None
                write_card(card.model_copy(update={"metrics": metrics_e}), card.card_path)
                continue
            if task == "anomaly":  # no ensemble: each card records its own and the comparison
                metrics_a: dict[str, Any] = {
                    "evaluated": today,
                    "seed": report["seed"],
                    "heldout_phantoms_2d": report[task][name],
                    "comparison_heldout_phantoms_2d": comparison(report[task]),
                }
                assert card.card_path is not None
                write_card(card.model_copy(update={"metrics": metrics_a}), card.card_path)
                continue
            metrics: dict[str, Any] = {
                "evaluated": today,
                "seed": report["seed"],
                f"heldout_phantoms_{kind}": report[task][name],
                f"ensemble_heldout_phantoms_{kind}": report[task]["ensemble"],
            }
            if task == "segmentation_3d":
                metrics["ensemble_study_classification_3d"] = report["study_classification_3d"]
            if task == "segmentation":
                metrics.update(report["segmentation_volumes"].get(name, {}))
                metrics["ensemble_volumes"] = report["segmentation_volumes"].get("ensemble", {})
            assert card.card_path is not None
            write_card(card.model_copy(update={"metrics": metrics}), card.card_path)


def primary_metric(task: str) -> str:
    return {
        "segmentation": "dice",
        "segmentation_3d": "dice",
        "classification": "auroc",
        "detection": "map50",
    }[task]


def format_report(report: dict[str, Any]) -> str:
    lines = [f"evaluation on held-out phantoms (seed {report['seed']})"]
    for task in ("segmentation", "segmentation_3d", "classification", "detection"):
        if task not in report:
            continue
        lines.append(f"\n{task}:")
        for name, scores in report[task].items():
            shown = ", ".join(f"{k}={v}" for k, v in scores.items() if isinstance(v, (int, float)))
            lines.append(f"  {name:24} {shown}")
        best = max(v[primary_metric(task)] for k, v in report[task].items() if k != "ensemble")
        ens = report[task]["ensemble"][primary_metric(task)]
        verdict = "ensemble >= best member" if ens >= best else "ENSEMBLE BELOW BEST MEMBER"
        lines.append(f"  {primary_metric(task)}: ensemble {ens} vs best member {best}: {verdict}")
    if "anomaly" in report:
        lines.extend(format_anomaly(report["anomaly"]))
    if "enhancement" in report:
        lines.extend(format_enhancement(report["enhancement"]))
    if "study_classification_3d" in report:
        study = report["study_classification_3d"]
        shown = ", ".join(f"{k}={v}" for k, v in study.items() if isinstance(v, (int, float)))
        lines.append(f"\nstudy-level normal/abnormal from the 3D segmentation pair:\n  {shown}")
    if "segmentation_volumes" in report:
        lines.append("\nsegmentation of volumes, 2D pair applied slice-wise:")
        for name, groups in report["segmentation_volumes"].items():
            for group, scores in groups.items():
                lines.append(
                    f"  {name:24} {group:24} dice={scores['dice']} iou={scores['iou']} "
                    f"dice_mean_case={scores['dice_mean_case']} ({scores['volumes']})"
                )
    return "\n".join(lines)
