"""The node's time zone setting: an IANA name validated at start-up, else the machine's zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from core.config import ConfigError, load_settings
from core.timezones import dicom_offset, local_zone, node_zone


def test_unknown_zone_stops_start_up_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSNODE_TIMEZONE", "Europe/Atlantis")
    with pytest.raises(ConfigError, match=r"PACSNODE_TIMEZONE.*Europe/Atlantis"):
        load_settings()


def test_unknown_zone_in_the_yaml_names_the_yaml_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PACSNODE_TIMEZONE", raising=False)
    config = tmp_path / "pacsnode.yaml"
    config.write_text("timezone: CET+1\n")
    with pytest.raises(ConfigError, match=r"timezone.*CET\+1"):
        load_settings(config)


def test_named_zone_and_the_local_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSNODE_TIMEZONE", "Asia/Kolkata")
    assert load_settings().zone == ZoneInfo("Asia/Kolkata")
    monkeypatch.delenv("PACSNODE_TIMEZONE")
    monkeypatch.setenv("TZ", "America/Sao_Paulo")
    assert load_settings().zone == ZoneInfo("America/Sao_Paulo") == local_zone()
    assert node_zone("") == ZoneInfo("America/Sao_Paulo")


def test_dicom_offset_follows_daylight_saving_and_half_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert dicom_offset(datetime(2024, 1, 15, 12, tzinfo=berlin)) == "+0100"
    assert dicom_offset(datetime(2024, 7, 15, 12, tzinfo=berlin)) == "+0200"
    assert dicom_offset(datetime(2024, 7, 15, 12, tzinfo=ZoneInfo("America/St_Johns"))) == "-0230"
    assert dicom_offset(datetime(2024, 7, 15, tzinfo=timezone(timedelta(hours=5, minutes=45)))) == (
        "+0545"
    )
    assert dicom_offset(datetime(2024, 7, 15, tzinfo=UTC)) == "+0000"
