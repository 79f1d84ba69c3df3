"""nnU-Net v2 model folders run through nnU-Net's own predictor.

The slow tests train a real (tiny) nnU-Net model here with nnU-Net's planner, preprocessor and
trainer (tests/models/nnunet_tiny.py), then check the node against nnU-Net itself on a DICOM CT
series read the way nnU-Net's authors read images (SimpleITK), and run it end to end: C-STORE of
the series into ``pacsnode serve``, a SEG out of the node that highdicom reads back. The fast
tests check what the node refuses before nnU-Net is even imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from models.card import ModelCard, ModelLoadError, write_card
from models.loaders import load_model, weights_digest
from pipelines.contract import StudyInput
from tests.models.nnunet_tiny import LABELS, train_tiny_model
from tests.pipelines.conftest import study_from_files

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
CT_SHAPE = (24, 64, 56)  # anisotropic everywhere: 6.7 x 5 x 5.7 mm, so no axis can be mixed up

BODY = {
    "value": 1,
    "name": "body",
    "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
    "type": {"value": "38266002", "scheme": "SCT", "meaning": "Entire body as a whole"},
}
LESION = {
    "value": 2,
    "name": "lesion",
    "category": {
        "value": "49755003",
        "scheme": "SCT",
        "meaning": "Morphologically Altered Structure",
    },
    "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
}


def nnunet_card(folder: Path, weights: Path, labels: list[dict[str, Any]] | None = None) -> Path:
    """A card for an nnU-Net folder inside ``folder``; returns the card's path."""
    card = ModelCard.model_validate(
        {
            "name": "tiny-nnunet",
            "version": "0.0.1",
            "task": "segmentation",
            "framework": "nnunet",
            "architecture": "nnUNetTrainer__nnUNetPlans__3d_fullres",
            "arguments": {"folds": ["all"], "use_mirroring": False},
            "weights": weights.name,
            "sha256": weights_digest(weights),
            "input": {"dims": 3, "spatial_size": [32, 64, 64]},
            "labels": labels or [BODY, LESION],
            "device_uid": "1.2.826.0.1.3680043.10.1359.99.501",
            "disclaimer": "test model",
        }
    )
    path = folder / "card.yaml"
    write_card(card, path)
    return path


def read_card(path: Path) -> ModelCard:
    from models.card import read_card as read

    return read(path)


# -- refused before nnU-Net runs ---------------------------------------------------------------
def fake_folder(tmp_path: Path, labels: dict[str, int], reader: str = "SimpleITKIO") -> Path:
    folder = tmp_path / "tiny-nnunet" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_all").mkdir(parents=True)
    (folder / "fold_all" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    (folder / "dataset.json").write_text(
        json.dumps({"labels": labels, "channel_names": {"0": "CT"}})
    )
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": reader}))
    return folder


def test_card_labels_must_be_dataset_json_labels(tmp_path: Path) -> None:
    folder = fake_folder(tmp_path, {"background": 0, "lesion": 1, "body": 2})
    card = read_card(nnunet_card(folder.parent, folder))
    with pytest.raises(
        ModelLoadError, match=r"not dataset.json's \[\(1, 'lesion'\), \(2, 'body'\)"
    ):
        load_model(card, "cpu")


def test_reorienting_reader_and_missing_fold_are_refused(tmp_path: Path) -> None:
    folder = fake_folder(tmp_path, LABELS, reader="NibabelIOWithReorient")
    card = read_card(nnunet_card(folder.parent, folder))
    with pytest.raises(ModelLoadError, match="NibabelIOWithReorient"):
        load_model(card, "cpu")
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    card = read_card(nnunet_card(folder.parent, folder))
    card = card.model_copy(update={"arguments": {"folds": [0]}})
    with pytest.raises(ModelLoadError, match=r"fold_0/checkpoint_final.pth not found"):
        load_model(card, "cpu")


def test_unreadable_checkpoint_is_a_load_error(tmp_path: Path) -> None:
    folder = fake_folder(tmp_path, LABELS)
    card = read_card(nnunet_card(folder.parent, folder))
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load_model(card, "cpu")


def test_weights_must_be_the_model_folder(tmp_path: Path) -> None:
    folder = fake_folder(tmp_path, LABELS)
    checkpoint = folder / "fold_all" / "checkpoint_final.pth"
    card = read_card(nnunet_card(checkpoint.parent, checkpoint))
    with pytest.raises(ModelLoadError, match="trained model folder"):
        load_model(card, "cpu")
    card = read_card(nnunet_card(folder.parent, folder)).model_copy(update={"task": "detection"})
    with pytest.raises(ModelLoadError, match="segmentation models"):
        load_model(card, "cpu")


# -- a real trained model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained model folder, copied into a models_dir next to its card."""
    root = tmp_path_factory.mktemp("nnunet")
    folder = train_tiny_model(root / "train")
    models_dir = root / "models"
    target = models_dir / "tiny-nnunet" / folder.name
    shutil.copytree(folder, target)
    nnunet_card(target.parent, target)
    return models_dir


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_3d_phantom

    phantom = make_3d_phantom(np.random.default_rng(11), shape=CT_SHAPE, lesion_count=2)
    return write_series(phantom, tmp_path_factory.mktemp("ct"), patient_id="NNUNET001")


def nnunet_reference(model_folder: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's own predictor on the series as SimpleITK reads it (segmentation, probabilities)."""
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(files[0].parent)))
    image = reader.Execute()
    volume = sitk.GetArrayFromImage(image).astype(np.float32)[None]  # (1, z, y, x)
    spacing = list(reversed(image.GetSpacing()))  # SimpleITKIO's (z, y, x)
    predictor = nnUNetPredictor(
        use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu")
    )
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=("all",))
    seg, probs = predictor.predict_single_npy_array(volume, {"spacing": spacing}, None, None, True)
    return np.asarray(seg), np.asarray(probs)


@pytest.mark.slow
@pytest.mark.timeout(900)  # trains the tiny model first (about 3 minutes on 2 busy cores)
def test_node_equals_nnunets_own_predictor(trained: Path, ct_files: list[Path]) -> None:
    from models.registry import ModelRegistry
    from pipelines.pipeline import Pipeline
    from pipelines.spec import PipelineConfig

    cfg = PipelineConfig.model_validate(
        {
            "name": "nnunet-ct",
            "version": "1",
            "selection": {"dims": 3, "modality": ["CT"]},
            "tasks": {"segmentation": {"members": [{"model": "tiny-nnunet", "device": "cpu"}]}},
        }
    )
    study: StudyInput = study_from_files(list(reversed(ct_files)))  # arrival order must not matter
    result = Pipeline(cfg, ModelRegistry(trained)).run(study)
    assert result.segmentation is not None
    node_probs = result.segmentation.probabilities  # (labels, frames, rows, cols)

    model_folder = next((trained / "tiny-nnunet").glob("nnUNetTrainer__*"))
    seg, probs = nnunet_reference(model_folder, ct_files)
    assert probs.shape == (3, *CT_SHAPE) and node_probs.shape == (2, *CT_SHAPE)
    assert float(np.abs(node_probs - probs[1:]).max()) <= 1e-4
    # nnU-Net's label map is argmax over (background, labels); a tie (its 1/3 each where a window
    # did not reach) goes to background, the first channel: the node's rebuilt background is
    # 1 - sum(labels), a float rounding away from the tie, so it needs the tie's tolerance
    background = 1.0 - node_probs.sum(axis=0)
    best = node_probs.max(axis=0)
    node_labels = np.where(best > background + 1e-6, np.argmax(node_probs, axis=0) + 1, 0)
    agreement = float(np.mean(node_labels == seg))
    print(f"nnU-Net parity: max |p_node - p_nnunet| = {np.abs(node_probs - probs[1:]).max():.2e}, "
          f"label agreement {agreement:.6f}")  # fmt: skip
    assert agreement >= 0.999, agreement
    assert np.count_nonzero(seg == 1) > 0.3 * seg.size, "the tiny model learned nothing of the body"


def storescu(port: int, files: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aec", "PACSNODE", "-aet", "MODALITY", "127.0.0.1", str(port),
         *map(str, files)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_tiny_nnunet_runs_from_c_store_to_seg(
    trained: Path, ct_files: list[Path], tmp_path: Path
) -> None:
    import highdicom as hd
    from pydicom import dcmread

    from tests.conftest import free_port
    from tests.processes import NodeProcess, node_env, wait_for_port

    if shutil.which("storescu") is None:
        pytest.skip("DCMTK storescu not installed")
    pipelines_dir = tmp_path / "pipelines"
    pipelines_dir.mkdir()
    pipeline = {
        "name": "nnunet-ct",
        "version": "1",
        "selection": {"dims": 3, "rules": [{"modality": ["CT"]}]},
        "tasks": {"segmentation": {"members": [{"model": "tiny-nnunet", "device": "auto"}]}},
        "outputs": {"seg_type": "BINARY", "overlay": False, "pdf": False, "sr": False},
    }
    (pipelines_dir / "nnunet-ct.yaml").write_text(yaml.safe_dump(pipeline))
    out_dir = tmp_path / "delivered"
    dicom_port = free_port()
    env = node_env(tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'db.sqlite'}", dicom_port,
                   free_port(), {
        "PACSNODE_MODELS_DIR": str(trained),
        "PACSNODE_PIPELINES_DIR": str(pipelines_dir),
        "PACSNODE_COMPLETION__QUIET_PERIOD_S": "1",
        "PACSNODE_COMPLETION__SWEEP_INTERVAL_S": "0.3",
        "PACSNODE_JOBS__POLL_INTERVAL_S": "0.2",
        "PACSNODE_DISPATCH__POLL_INTERVAL_S": "0.2",
        "PACSNODE_DESTINATIONS": json.dumps([{"name": "out", "kind": "folder", "path": str(out_dir)}]),
    })  # fmt: skip
    node = NodeProcess(["serve"], env, tmp_path / "logs", "serve").start()
    try:
        wait_for_port(dicom_port, timeout=120, proc=node)
        storescu(dicom_port, ct_files)
        deadline = time.monotonic() + 240
        segs: list[Path] = []
        while time.monotonic() < deadline and not segs:
            segs = [p for p in out_dir.rglob("*.dcm")
                    if str(dcmread(p, stop_before_pixels=True).SOPClassUID) == SEG_CLASS]  # fmt: skip
            time.sleep(0.5)
        assert segs, node.output()[-6000:]
    finally:
        node.terminate()
    seg = hd.seg.segread(segs[0])
    source = dcmread(ct_files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    # one segment per finding (seg_segments: per_finding), labelled by its tracking ID
    assert any(name.startswith("body-") for name in names), names
    referenced = {series_uid for _, series_uid, _ in seg.get_source_image_uids()}
    assert referenced == {source.SeriesInstanceUID}
    assert np.count_nonzero(seg.pixel_array) > 0


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.timeout(900)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nnunet_on_cuda_matches_cpu(trained: Path, ct_files: list[Path]) -> None:
    """The predictor goes where the device map puts it, with nnU-Net's on-device path."""
    from pipelines.preprocess.decode import decode_series
    from pipelines.tasks.nnunet import nnunet_probabilities

    card = read_card(trained / "tiny-nnunet" / "card.yaml")
    on_gpu, on_cpu = load_model(card, "cuda"), load_model(card, "cpu")
    assert on_gpu.placement.used.startswith("cuda") and on_gpu.nnunet is not None
    assert on_gpu.nnunet.device.type == "cuda" and on_gpu.nnunet.perform_everything_on_device
    series = decode_series(study_from_files(ct_files).series[0])
    assert on_cpu.nnunet is not None
    gpu = nnunet_probabilities(on_gpu.nnunet, series)
    cpu = nnunet_probabilities(on_cpu.nnunet, series)
    assert float(np.abs(gpu - cpu).max()) <= 1e-3
