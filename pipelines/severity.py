"""Severity of a finding from configurable size/shape rules (``severity:`` in a pipeline YAML).

High when the finding is large or irregular (low circularity), Moderate when it is medium-sized or
moderately irregular, Low otherwise (small and round). Size is the volume for 3D findings when the
pipeline gives volume thresholds, else the (largest cross-sectional) area. A measurement that is
missing (no pixel spacing) cannot raise the severity; the pixel share of the image stands in for
the area then, so a huge finding on an uncalibrated image is not called Low.
"""

from __future__ import annotations

from core.domain import Severity
from pipelines.contract import Measurements
from pipelines.spec import SeverityRules

UNCALIBRATED_MODERATE_PCT = 1.0
UNCALIBRATED_HIGH_PCT = 5.0


def _size_level(m: Measurements, rules: SeverityRules) -> int:
    if m.volume_mm3 is not None and rules.moderate_volume_mm3 is not None:
        assert rules.high_volume_mm3 is not None
        if m.volume_mm3 >= rules.high_volume_mm3:
            return 2
        return 1 if m.volume_mm3 >= rules.moderate_volume_mm3 else 0
    if m.area_mm2 is not None:
        if m.area_mm2 >= rules.high_area_mm2:
            return 2
        return 1 if m.area_mm2 >= rules.moderate_area_mm2 else 0
    pct = m.area_pct or 0.0
    return 2 if pct >= UNCALIBRATED_HIGH_PCT else 1 if pct >= UNCALIBRATED_MODERATE_PCT else 0


def _shape_level(m: Measurements, rules: SeverityRules) -> int:
    if m.circularity is None:
        return 0
    if m.circularity < rules.high_below_circularity:
        return 2
    return 1 if m.circularity < rules.moderate_below_circularity else 0


def classify_severity(measurements: Measurements, rules: SeverityRules) -> Severity:
    level = max(_size_level(measurements, rules), _shape_level(measurements, rules))
    return (Severity.LOW, Severity.MODERATE, Severity.HIGH)[level]
