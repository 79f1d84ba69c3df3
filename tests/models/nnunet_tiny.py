"""Train a tiny nnU-Net v2 model on CT phantoms with nnU-Net's own planner, preprocessor and trainer.

nnU-Net reads ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` when it is imported, so the
training runs in a child process (``python -m tests.models.nnunet_tiny ROOT``) with those set to
folders under ``ROOT``; the test process itself never sees them, as a node in production would
not. The result is an ordinary trained-model folder (``dataset.json``, ``plans.json``,
``fold_all/checkpoint_final.pth``) exactly as ``nnUNetv2_train`` leaves it, only trained for a few
iterations of a network with few features so it fits a CPU test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.processes import PROJECT_ROOT

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_Phantom"
CONFIGURATION = "3d_fullres"
MODEL_FOLDER = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
LABELS = {"background": 0, "body": 1, "lesion": 2}
CASES = 4
SHAPE = (32, 64, 64)  # (z, y, x) at 5 mm, the phantoms' field of view


def nnunet_env(root: Path) -> dict[str, str]:
    """Environment of the training process: nnU-Net's folders, no worker processes, no compile."""
    return {
        **os.environ,
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_n_proc_DA": "1",  # the planner sizes torch threads by it; training sets 0 below
        "nnUNet_compile": "false",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def train_tiny_model(root: Path, timeout_s: float = 600) -> Path:
    """Train in a child process under ``root``; returns the trained-model folder."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.models.nnunet_tiny", str(root)],
        env=nnunet_env(root),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if run.returncode != 0:
        raise RuntimeError(f"nnU-Net training failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    folder = root / "results" / DATASET_NAME / MODEL_FOLDER
    assert (folder / "fold_all" / "checkpoint_final.pth").is_file(), run.stdout[-4000:]
    return folder


def phantom_case(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(volume in HU, label map body=1 lesion=2, spacing z,y,x) of one CT phantom."""
    from models.training.phantoms import FIELD_OF_VIEW_3D_MM, make_3d_phantom

    phantom = make_3d_phantom(np.random.default_rng(seed), shape=SHAPE, lesion_count=2)
    labels = (phantom.volume > -500).astype(np.uint8)
    labels[phantom.mask > 0] = 2
    spacing = tuple(f / n for f, n in zip(FIELD_OF_VIEW_3D_MM, SHAPE, strict=True))
    return phantom.volume, labels, spacing  # type: ignore[return-value]


def _write_raw(raw: Path) -> None:
    import json

    import SimpleITK as sitk

    images, targets = raw / "imagesTr", raw / "labelsTr"
    images.mkdir(parents=True)
    targets.mkdir(parents=True)
    for case in range(CASES):
        volume, labels, spacing = phantom_case(100 + case)
        for array, path in (
            (volume, images / f"phantom_{case:03d}_0000.nii.gz"),
            (labels, targets / f"phantom_{case:03d}.nii.gz"),
        ):
            image = sitk.GetImageFromArray(array)  # array (z, y, x) -> image (x, y, z)
            image.SetSpacing(tuple(reversed(spacing)))
            sitk.WriteImage(image, str(path))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": CASES,
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


def _train() -> None:
    """Fingerprint, plan (small network), preprocess and train: nnU-Net's own API, step by step."""
    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.run.run_training import get_trainer_from_args

    assert nnUNet_raw is not None and nnUNet_preprocessed is not None
    _write_raw(Path(nnUNet_raw) / DATASET_NAME)
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
    planner = ExperimentPlanner(DATASET_ID)
    planner.UNet_base_num_features = 4  # a CPU-sized network; the planning itself is nnU-Net's
    planner.UNet_max_features_3d = 16
    planner.plan_experiment()
    preprocess_dataset(
        DATASET_ID, configurations=(CONFIGURATION,), num_processes=(1,), show_progress_bar=False
    )
    # augment in this process: no worker processes to spawn (nnU-Net spells its variables so)
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112
    torch.manual_seed(0)
    trainer = get_trainer_from_args(DATASET_NAME, CONFIGURATION, "all", device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = 4
    trainer.num_val_iterations_per_epoch = 1
    trainer.initial_lr = 0.02
    trainer.run_training()


if __name__ == "__main__":
    root = Path(sys.argv[1])
    if os.environ.get("nnUNet_results") != str(root / "results"):  # noqa: SIM112
        raise SystemExit("run through train_tiny_model(): nnU-Net's folders must be set first")
    _train()
