"""The viewer tests' console filter hides only OHIF's own start-up noise, never an error that
could be about the data the node stored."""

from __future__ import annotations

from typing import Any

from tests.viewer.ohif_browser import console_errors

# as CI's Chromium logged it for OHIF 3.12.10 (its onnxruntime-web chunk, loaded asynchronously)
ORT_START = (
    "console-api - ReferenceError: __filename is not defined\n"
    "    at http://127.0.0.1:52015/7431.bundle.b31ebb4a2625e89d864e.js:41:22143"
)


class _Driver:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def get_log(self, kind: str) -> list[dict[str, Any]]:
        assert kind == "browser"
        return self.entries


def test_ohifs_own_onnxruntime_and_tour_errors_are_not_counted() -> None:
    driver = _Driver(
        [
            {"level": "SEVERE", "message": ORT_START},
            {"level": "SEVERE", "message": "Shepherd step not found: advanceOn"},
            {"level": "WARNING", "message": "a warning"},
        ]
    )
    assert console_errors(driver) == []


def test_errors_about_the_data_are_still_counted() -> None:
    data_errors = [
        "http://127.0.0.1:1/dicom-web/studies/1.2/series/3.4/metadata - Failed to load resource: "
        "the server responded with a status of 500",
        "console-api - Error: SEG references a series that is not in the study",
        "console-api - ReferenceError: segmentation is not defined",
    ]
    driver = _Driver([{"level": "SEVERE", "message": m} for m in data_errors])
    assert console_errors(driver) == data_errors
