"""Building a pipeline's input from the database and the spool: files per series, in stacking order.

Sorting reads headers only (no pixels): along the slice normal by ImagePositionPatient when every
instance has a position and orientation, else by InstanceNumber then arrival, the order DICOM
viewers use as a fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from core.config import Settings
from node.db.orm import Instance
from node.db.repositories import studies
from pipelines.contract import SourceSeries, StudyInput


def _position_key(paths: Sequence[Path]) -> list[Path] | None:
    keyed: list[tuple[float, Path]] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["ImagePositionPatient", "ImageOrientationPatient"],
            )
        except (InvalidDicomError, OSError):
            return None
        ipp = getattr(ds, "ImagePositionPatient", None)
        iop = getattr(ds, "ImageOrientationPatient", None)
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            return None
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        keyed.append((float(np.dot(normal, np.asarray(ipp, float))), path))
    keyed.sort(key=lambda kv: kv[0])
    return [p for _, p in keyed]


def sort_for_stacking(paths: Sequence[Path]) -> list[Path]:
    """``paths`` are already in InstanceNumber/arrival order; prefer geometric order when known."""
    if len(paths) < 2:
        return list(paths)
    return _position_key(paths) or list(paths)


def build_study_input(session: Session, settings: Settings, study_uid: str) -> StudyInput:
    series_map = studies.series_instances(session, study_uid)
    out: list[SourceSeries] = []
    for series, instances in series_map.items():
        if not instances:
            continue
        paths = [settings.data_dir / inst.path for inst in instances]
        out.append(
            SourceSeries(
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                sop_class_uid=instances[0].sop_class_uid,
                files=tuple(sort_for_stacking(paths)),
                series_description=series.series_description,
            )
        )
    return StudyInput(study_instance_uid=study_uid, series=tuple(out))


def instance_paths_by_uid(instances: Sequence[Instance], data_dir: Path) -> dict[str, Path]:
    return {inst.sop_instance_uid: data_dir / inst.path for inst in instances}
