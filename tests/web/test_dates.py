"""The console shows stored (UTC) times in the node's time zone (``timezone``)."""

from __future__ import annotations

from datetime import UTC, datetime

from core.config import Settings, load_settings
from node.db.engine import Database
from tests.node.jobs.rows import add_study
from tests.web.conftest import make_console


def test_studies_page_shows_received_time_in_the_node_zone(
    settings: Settings, sqlite_db: Database
) -> None:
    tokyo = load_settings(None, **{**settings.model_dump(), "timezone": "Asia/Tokyo"})
    add_study(sqlite_db, "1.2.3.4", received_at=datetime(2024, 12, 31, 20, 30, tzinfo=UTC))
    page = make_console(tokyo, sqlite_db).login("viewer1").get("/studies").text
    assert "2025-01-01 05:30:00" in page  # UTC+9, the next day (and year)
    assert "2024-12-31 20:30:00" not in page
