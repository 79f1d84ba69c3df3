"""Fixtures for pipeline tests: tiny real models behind the real model registry, phantom studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.contract import SourceSeries, StudyInput
from tests.pipelines.tiny_models import write_tiny_models


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def model_registry(tiny_models_dir: Path):  # noqa: ANN201 - models.registry.ModelRegistry
    from models.registry import ModelRegistry

    return ModelRegistry(tiny_models_dir)


def study_from_files(paths: list[Path]) -> StudyInput:
    import pydicom

    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return StudyInput(
        study_instance_uid=str(ds.StudyInstanceUID),
        series=(
            SourceSeries(
                series_instance_uid=str(ds.SeriesInstanceUID),
                modality=str(ds.Modality),
                sop_class_uid=str(ds.SOPClassUID),
                files=tuple(paths),
                series_description=str(ds.get("SeriesDescription", "")),
            ),
        ),
    )


@pytest.fixture(scope="session")
def cr_study(tmp_path_factory: pytest.TempPathFactory) -> StudyInput:
    """A 2D phantom radiograph with lesions, written as a CR image (models' own exporter)."""
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom

    phantom = make_2d_phantom(np.random.default_rng(7), size=160, lesion_count=2)
    paths = write_series(phantom, tmp_path_factory.mktemp("cr"), modality="CR")
    return study_from_files(paths)


@pytest.fixture(scope="session")
def ct_study(tmp_path_factory: pytest.TempPathFactory) -> StudyInput:
    """A small CT phantom volume written as slices (shuffled order must not matter)."""
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_3d_phantom

    phantom = make_3d_phantom(np.random.default_rng(3), shape=(12, 48, 48), lesion_count=1)
    paths = write_series(phantom, tmp_path_factory.mktemp("ct"))
    return study_from_files(list(reversed(paths)))
