"""The shipped demo pipelines run for real on phantom studies, and the node's objects for them.

For tests that check what a PACS and a viewer make of the enhancement task's derived series and
the explanation's Parametric Map (issue 20): the objects are the ones a job would send, built by
``produce_results`` from a real ``Pipeline`` run (demo weights), not from hand-built results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from models.registry import ModelRegistry
from node.jobs.worker import output_options
from node.results.produce import ProducedObject, produce_results
from pipelines.contract import PipelineResult, SourceSeries, StudyInput
from pipelines.pipeline import Pipeline
from pipelines.spec import parse_pipeline_config

ROOT = Path(__file__).resolve().parents[3]
DEFINITIONS = ROOT / "pipelines" / "definitions"
CARDS = ROOT / "models" / "cards"


@dataclass(frozen=True)
class DemoRun:
    """One phantom study, one demo pipeline's result on it and the objects the node made."""

    source_paths: list[Path]
    sources: list[Dataset]  # in the result's frame order
    result: PipelineResult
    objects: list[ProducedObject]

    def of_kind(self, kind: ArtifactKind) -> list[ProducedObject]:
        return [o for o in self.objects if o.kind is kind]


def phantom_study(folder: Path, modality: str, study_uid: str | None = None) -> list[Path]:
    """A CR radiograph (160 px, two lesions) or a CT volume (12 slices of 48 px, one lesion),
    written by the models' own exporter (the images the demo weights were trained on)."""
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom, make_3d_phantom

    if modality == "CR":
        phantom: Any = make_2d_phantom(np.random.default_rng(7), size=160, lesion_count=2)
        return write_series(phantom, folder, modality="CR", study_uid=study_uid)
    phantom = make_3d_phantom(np.random.default_rng(3), shape=(12, 48, 48), lesion_count=1)
    return write_series(phantom, folder, study_uid=study_uid)


def _study(paths: list[Path]) -> StudyInput:
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series = SourceSeries(
        series_instance_uid=str(first.SeriesInstanceUID),
        modality=str(first.Modality),
        sop_class_uid=str(first.SOPClassUID),
        files=tuple(paths),
        series_description=str(first.get("SeriesDescription", "")),
    )
    return StudyInput(study_instance_uid=str(first.StudyInstanceUID), series=(series,))


def run_demo(
    name: str,
    paths: list[Path],
    out_dir: Path,
    *,
    modality: str | None = None,
    outputs: dict[str, Any] | None = None,
) -> DemoRun:
    """Run the shipped definition ``name`` on ``paths`` and produce its objects into ``out_dir``.

    ``modality`` selects that modality instead of the definition's rules (the 2D denoiser on a
    CT volume, slice by slice); ``outputs`` turns the definition's optional objects on or off,
    as an operator would in its YAML.
    """
    raw = yaml.safe_load((DEFINITIONS / f"{name}.yaml").read_text())
    if modality is not None:
        raw["selection"] = {"modality": [modality]}
    raw["outputs"] = {**raw.get("outputs", {}), **(outputs or {})}
    config = parse_pipeline_config(raw, name)
    result = Pipeline(config, ModelRegistry(CARDS)).run(_study(paths))
    sources = [pydicom.dcmread(p) for p in paths]
    order = {f.sop_instance_uid: i for i, f in enumerate(result.source_frames)}
    sources.sort(key=lambda d: order[str(d.SOPInstanceUID)])
    produced = produce_results(result, sources, output_options(config, 1), out_dir)
    return DemoRun(list(paths), sources, result, list(produced))
