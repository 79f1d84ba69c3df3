"""A trained nnU-Net v2 model folder, run through nnU-Net's own predictor.

The card's ``weights`` is the folder ``nnUNetv2_train`` leaves (``dataset.json``, ``plans.json``,
``fold_*/checkpoint_final.pth``, named like ``nnUNetTrainer__nnUNetPlans__3d_fullres``). The node
does not rebuild the network or its pre-processing: :class:`nnUNetPredictor` reads the plans and
checkpoints, so cropping, normalisation, resampling to the plans' spacing, sliding-window
inference with the trainer's mirroring axes and the way back to the source grid are nnU-Net's.
The card's labels must be ``dataset.json``'s, by name and value, so a card cannot silently give a
channel another meaning.

Cascades (``3d_cascade_fullres`` needs the low-resolution stage's output) and region-based models
(overlapping sigmoid regions, not labels) are refused at load time rather than run wrongly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any

from models.card import ModelCard, ModelLoadError
from models.devices import DevicePlacement
from models.loaders import LoadedModel

# readers whose arrays are (z, y, x) in file order with (z, y, x) spacing and no reorientation:
# what the node's decoded series is (slices sorted along the normal, rows, columns)
_SUPPORTED_READERS = ("SimpleITKIO", "NibabelIO")

log = logging.getLogger(__name__)


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(
            f"nnU-Net model folder {folder} has no {name}: point the card's weights at the trained "
            "model folder (e.g. nnUNetTrainer__nnUNetPlans__3d_fullres)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"nnU-Net model folder {folder}: {name} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"nnU-Net model folder {folder}: {name} is not a JSON object")
    return data


def _folds(card: ModelCard, folder: Path, checkpoint: str) -> tuple[int | str, ...]:
    """The card's ``folds`` (default: every ``fold_*`` holding the checkpoint), each present."""
    wanted = card.arguments.get("folds")
    if wanted is None:
        found = sorted(
            p.name.removeprefix("fold_")
            for p in folder.glob("fold_*")
            if (p / checkpoint).is_file()
        )
    else:
        found = [str(f) for f in (wanted if isinstance(wanted, list) else [wanted])]
    if not found:
        raise ModelLoadError(f"nnU-Net model folder {folder}: no fold_*/{checkpoint}")
    folds: list[int | str] = []
    for fold in found:
        if not (folder / f"fold_{fold}" / checkpoint).is_file():
            raise ModelLoadError(
                f"nnU-Net model folder {folder}: fold_{fold}/{checkpoint} not found"
            )
        folds.append(fold if fold == "all" else int(fold))
    return tuple(folds)


def _check_labels(card: ModelCard, folder: Path, dataset: dict[str, Any]) -> None:
    """The card's labels must be dataset.json's foreground labels, same names and values."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or any(not isinstance(v, int) for v in labels.values()):
        raise ModelLoadError(
            f"nnU-Net model folder {folder}: dataset.json 'labels' must map names to integer "
            "label values (region-based models are not supported)"
        )
    expected = sorted(
        (value, name.lower()) for name, value in labels.items() if value > 0 and name != "ignore"
    )
    named = sorted((label.value, label.name.lower()) for label in card.labels)
    if named != expected:
        raise ModelLoadError(
            f"model {card.name!r}: the card's labels {named} are not dataset.json's {expected} "
            "(value, name) without background"
        )


def load_nnunet(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    """An :class:`nnUNetPredictor` for the card's folder on the placement's device."""
    folder = card.weights_path
    if not folder.is_dir():
        raise ModelLoadError(
            f"model {card.name!r}: framework nnunet needs weights to be the trained model folder "
            f"(dataset.json, plans.json, fold_*/checkpoint_final.pth), got the file {folder}"
        )
    if card.task != "segmentation":
        raise ModelLoadError(
            f"model {card.name!r}: nnU-Net models are segmentation models, the card says "
            f"task: {card.task}"
        )
    if card.input.dims != 3:
        raise ModelLoadError(
            f"model {card.name!r}: an nnU-Net model takes the whole volume; set input.dims: 3 "
            "(its 2d configurations predict slice by slice inside nnU-Net)"
        )
    dataset = _read_json(folder, "dataset.json")
    plans = _read_json(folder, "plans.json")
    _check_labels(card, folder, dataset)
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in _SUPPORTED_READERS:
        raise ModelLoadError(
            f"model {card.name!r}: plans.json's image_reader_writer {reader!r} is not supported "
            f"(the node hands nnU-Net arrays as {' or '.join(_SUPPORTED_READERS)} read them)"
        )
    checkpoint = str(card.arguments.get("checkpoint", "checkpoint_final.pth"))
    folds = _folds(card, folder, checkpoint)

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = placement.torch_device
    threads = torch.get_num_threads()
    said = io.StringIO()  # nnU-Net prints (e.g. that a CPU has no on-device mode): to the log
    try:
        with contextlib.redirect_stdout(said):
            predictor = nnUNetPredictor(
                tile_step_size=float(card.arguments.get("tile_step_size", 0.5)),
                use_gaussian=True,
                use_mirroring=bool(card.arguments.get("use_mirroring", True)),
                perform_everything_on_device=device.type == "cuda",  # nnU-Net: CUDA only
                device=device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            predictor.initialize_from_trained_model_folder(
                str(folder), use_folds=folds, checkpoint_name=checkpoint
            )
    except (pickle.UnpicklingError, EOFError) as exc:  # load_model maps the rest to load errors
        raise ModelLoadError(
            f"model {card.name!r}: a {checkpoint} in {folder} is not a readable checkpoint: {exc}"
        ) from exc
    finally:
        torch.set_num_threads(threads)
        for line in said.getvalue().splitlines():
            log.debug("nnU-Net (%s): %s", card.name, line)
    if predictor.configuration_manager.previous_stage_name is not None:
        raise ModelLoadError(
            f"model {card.name!r}: {folder.name} is a cascade stage; it needs the low-resolution "
            "stage's segmentation, which the node does not run (use 3d_fullres or 2d)"
        )
    if predictor.label_manager.has_regions:
        raise ModelLoadError(f"model {card.name!r}: region-based nnU-Net models are not supported")
    return LoadedModel(card, placement, sha, nnunet=predictor)
