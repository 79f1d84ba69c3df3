"""The dashboard on both database backends: counts, destinations, five charts, users, models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import Settings
from node.db.engine import Database
from tests.web.conftest import make_console, with_archive
from tests.web.processed import MR_SERIES, build_processed_study


def test_dashboard_shows_counts_charts_users_and_models(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    if not MR_SERIES.is_dir():
        pytest.skip(f"sample data missing: {MR_SERIES}")
    full = with_archive(settings, tmp_path / "archive")
    build_processed_study(full, db)
    console = make_console(full, db)
    client = console.login("viewer1")
    page = client.get("/").text
    figure = {
        name: re.search(rf'id="{name}">([^<]+)<', page).group(1)  # type: ignore[union-attr]
        for name in (
            "studies-today",
            "instances-today",
            "jobs-failed",
            "reviews-pending",
            "median-processing",
        )
    }
    assert figure == {
        "studies-today": "1",
        "instances-today": "20",
        "jobs-failed": "0",
        "reviews-pending": "1",
        "median-processing": "1.2",
    }
    assert page.count('<svg class="chart') == 5
    assert (
        'data-label="lesion" data-value="1"' in page
        and 'data-label="Moderate" data-value="1"' in page
    )
    assert re.search(r"<td>archive</td><td>0</td><td>1</td>", page)  # one held delivery
    assert "viewer1" in page and "demo-seg-unet" in page  # per-user figures, model cards
    stats = client.get("/api/stats").json()
    assert stats["studies_total"] == 1 and stats["jobs"]["succeeded"] == 1
