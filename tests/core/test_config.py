"""Settings: environment over YAML over defaults; a bad value stops start-up naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from core.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PACSNODE_") and not key.startswith("PACSNODE_TEST_"):
            monkeypatch.delenv(key)


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSNODE_DATA_DIR", str(tmp_path))
    s = load_settings()
    assert (s.ae_title, s.dicom_port, s.web_port) == ("PACSNODE", 11112, 8000)
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'pacsnode.db'}"
    assert s.completion.quiet_period_s == 10


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "ae_title: FROMYAML\ndicom_port: 4242\ncompletion:\n  quiet_period_s: 3\n"
        "destinations:\n  - {name: pacs, kind: dicom, ae_title: PACS, host: 127.0.0.1, port: 104}\n"
    )
    monkeypatch.setenv("PACSNODE_DICOM_PORT", "5555")
    monkeypatch.setenv("PACSNODE_COMPLETION__QUIET_PERIOD_S", "7")
    s = load_settings(cfg)
    assert s.ae_title == "FROMYAML" and s.dicom_port == 5555
    assert s.completion.quiet_period_s == 7
    assert s.destination("pacs").port == 104


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSNODE_DICOM_PORT", "eleven")
    with pytest.raises(ConfigError, match="PACSNODE_DICOM_PORT"):
        load_settings()


def test_bad_yaml_value_names_the_dotted_key(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("completion:\n  quiet_period_s: -1\n")
    with pytest.raises(ConfigError, match=r"completion\.quiet_period_s"):
        load_settings(cfg)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("ae_tilte: TYPO\n")
    with pytest.raises(ConfigError, match="ae_tilte"):
        load_settings(cfg)


def test_incomplete_destination_and_unknown_route_target(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("destinations:\n  - {name: pacs, kind: dicom, host: 127.0.0.1}\n")
    with pytest.raises(ConfigError, match="needs ae_title, port"):
        load_settings(cfg)
    cfg.write_text("routing:\n  - {name: r, destinations: [nowhere]}\n")
    with pytest.raises(ConfigError, match="unknown destination"):
        load_settings(cfg)


def test_production_refuses_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSNODE_ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="secret_key"):
        load_settings()
    monkeypatch.setenv("PACSNODE_SECRET_KEY", "s3cret-from-the-vault")
    assert load_settings().environment == "production"


def test_ae_title_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSNODE_AE_TITLE", "A_TITLE_THAT_IS_FAR_TOO_LONG")
    with pytest.raises(ConfigError, match="PACSNODE_AE_TITLE"):
        load_settings()


def test_cli_exits_2_with_the_key_in_the_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PACSNODE_WEB_PORT", "99999")
    assert main(["db", "upgrade"]) == 2
    assert "PACSNODE_WEB_PORT" in capsys.readouterr().err


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ae_title", "SEVENTEEN_CHARS_X", "AE title"),
        ("ae_title", "A\\\\B", "AE title"),
        ("host", "not a host", "not an IP address or host name"),
        ("url", "ftp://x", "http"),
    ],
)
def test_destination_fields_are_validated_by_kind_rules(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    """The rules the console's destination form uses check the YAML file too."""
    dest = {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "pacs_1", "port": 104}
    config = tmp_path / "c.yaml"
    config.write_text(
        f"destinations:\n  - {{{', '.join(f'{k}: {v!r}' for k, v in {**dest, field: value}.items())}}}\n"
    )
    with pytest.raises(ConfigError, match=f"destinations.0.{field}.*{message}"):
        load_settings(config)
