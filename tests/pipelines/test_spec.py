from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError
from core.domain import SeriesFacts
from pipelines.spec import apply_overrides, load_pipeline_configs

DEFINITIONS = Path(__file__).resolve().parents[2] / "pipelines" / "definitions"


def _write(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _minimal(**extra: object) -> dict:
    data = {
        "name": "p1",
        "version": "1",
        "selection": {"modality": ["CT"]},
        "tasks": {"classification": {"members": [{"model": "m1"}, {"model": "m2", "weight": 3}]}},
    }
    data.update(extra)
    return data


def test_default_definitions_route_radiographs_to_2d_and_volumes_to_3d() -> None:
    configs = load_pipeline_configs(DEFINITIONS)
    assert {"demo-2d", "demo-3d"} <= set(configs)
    cr = SeriesFacts("1", modality="CR", instance_count=1)
    ct = SeriesFacts("2", modality="CT", instance_count=120)
    us_single = SeriesFacts("3", modality="US", instance_count=1)
    us_cine = SeriesFacts("4", modality="US", instance_count=1, number_of_frames=40)
    d2, d3 = configs["demo-2d"], configs["demo-3d"]
    assert d2.selection.matches(cr) and not d3.selection.matches(cr)
    assert d3.selection.matches(ct) and not d2.selection.matches(ct)
    assert d2.selection.matches(us_single) and not d2.selection.matches(us_cine)
    assert d2.tasks.classification is not None
    assert d2.tasks.classification.threshold == pytest.approx(0.449)
    weights = d2.tasks.classification.normalised_weights()
    assert sum(weights) == pytest.approx(1.0)
    assert d2.outputs.sr and d2.outputs.pdf and d3.outputs.sr


def test_selection_conditions(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "p",
        _minimal(
            selection={
                "modality": ["MR"],
                "image_type": ["ORIGINAL"],
                "orientation": ["AXIAL"],
                "series_description_regex": "adc|diffusion",
                "min_slices": 10,
            }
        ),
    )
    sel = load_pipeline_configs(tmp_path)["p1"].selection
    good = SeriesFacts(
        "1",
        modality="MR",
        image_type=("ORIGINAL", "PRIMARY"),
        orientation="AXIAL",
        series_description="Apparent Diffusion Coefficient",
        instance_count=20,
    )
    assert sel.matches(good)
    assert not sel.matches(SeriesFacts(**{**good.__dict__, "instance_count": 5}))
    assert not sel.matches(SeriesFacts(**{**good.__dict__, "orientation": "SAGITTAL"}))
    assert not sel.matches(SeriesFacts(**{**good.__dict__, "image_type": ("DERIVED",)}))
    assert not sel.matches(SeriesFacts(**{**good.__dict__, "series_description": "T1"}))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_minimal(version=""), "version"),
        (
            _minimal(selection={"modality": ["CT"], "series_description_regex": "("}),
            "series_description_regex",
        ),
        (_minimal(tasks={}), "at least one"),
        (
            _minimal(tasks={"classification": {"members": [{"model": "m", "device": "gpu7"}]}}),
            "tasks.classification.members.0.device",
        ),
        (_minimal(tasks={"classification": {"members": [{"model": "m", "weight": 0}]}}), "weight"),
        (
            _minimal(tasks={"classification": {"members": [{"model": "m"}], "thresold": 0.4}}),
            "thresold",
        ),
        (_minimal(tasks={"classification": {"threshold": 0.5}}), "at least one member"),
        (
            _minimal(
                tasks={
                    "classification": {"source": "segmentation", "members": [{"model": "m"}]},
                    "segmentation": {"members": [{"model": "s"}]},
                }
            ),
            "list no members",
        ),
        (
            _minimal(tasks={"classification": {"source": "segmentation"}}),
            "needs a segmentation task",
        ),
    ],
)
def test_bad_definition_names_file_and_key(tmp_path: Path, data: dict, needle: str) -> None:
    path = _write(tmp_path, "broken", data)
    with pytest.raises(ConfigError) as err:
        load_pipeline_configs(tmp_path)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_duplicate_pipeline_names_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a", _minimal())
    _write(tmp_path, "b", _minimal())
    with pytest.raises(ConfigError, match="already defined"):
        load_pipeline_configs(tmp_path)


def test_overrides_change_devices_weights_thresholds_and_enabled(tmp_path: Path) -> None:
    _write(tmp_path, "p", _minimal())
    cfg = load_pipeline_configs(tmp_path)["p1"]
    new = apply_overrides(
        cfg,
        {
            "enabled": False,
            "tasks": {
                "classification": {
                    "threshold": 0.7,
                    "members": {"m2": {"device": "cuda:1", "weight": 1}},
                }
            },
        },
    )
    assert not new.enabled
    task = new.tasks.classification
    assert task is not None and task.threshold == 0.7
    assert [m.device for m in task.members] == ["auto", "cuda:1"]
    assert task.normalised_weights() == pytest.approx((0.5, 0.5))
    assert cfg.enabled  # the original is untouched
    dotted = apply_overrides(cfg, {"tasks.classification.threshold": 0.3})
    assert dotted.tasks.classification is not None
    assert dotted.tasks.classification.threshold == 0.3


@pytest.mark.parametrize(
    "override",
    [
        {"tasks": {"classification": {"members": {"nope": {"weight": 1}}}}},
        {"tasks": {"classification": {"treshold": 0.2}}},
        {"tasks": {"classification": {"threshold": 2.0}}},
    ],
)
def test_bad_overrides_are_refused(tmp_path: Path, override: dict) -> None:
    _write(tmp_path, "p", _minimal())
    cfg = load_pipeline_configs(tmp_path)["p1"]
    with pytest.raises(ConfigError):
        apply_overrides(cfg, override)


def test_spec_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, pipelines.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
