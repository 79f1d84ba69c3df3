"""The README is a runbook: its two commands, its settings table and its CLI lines must stay true.

The settings table is checked against :class:`core.config.Settings` itself (every field, nested
sections and list items included, with its environment variable and default), and every
``pacsnode ...`` / ``python -m app ...`` line in a shell code block must parse with the real
argument parser, so a renamed setting or sub-command fails here instead of misleading an admin.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.cli import build_parser
from core.config import PROJECT_ROOT, ConfigError, Settings, load_settings

README = PROJECT_ROOT / "README.md"
SHELL_LANGS = {"sh", "bash", "console", "shell"}
NO_ENV = {"—", "-", ""}  # list items have no variable of their own (set the whole list)
FENCE_RE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
COMMAND_RE = re.compile(r"(?:^|[\s/])(?:pacsnode|python3? -m app)[ \t]+(.*)$")


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE_RE.finditer(text)]


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


# -- (1) the two commands ---------------------------------------------------------------------


def test_readme_starts_with_the_two_commands() -> None:
    text = readme_text()
    assert text.splitlines()[0] == "# pacsnode", "README must start with the '# pacsnode' title"
    first = FENCE_RE.search(text)
    assert first is not None, "README has no code block"
    before = text[: first.start()].strip()
    assert before == "# pacsnode", f"the first code block must follow the title, found {before!r}"
    lines = [line.split("#")[0].strip() for line in first.group(2).splitlines() if line.strip()]
    assert lines[:2] == ["make run", "make test"], f"first code block starts with {lines[:2]}"


# -- (2) the settings table -------------------------------------------------------------------


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if _is_model(item):
            return typing.cast(type[BaseModel], item)
    return None


def _default_text(value: Any) -> str:
    """A default as the README writes it (YAML spelling; paths relative to the checkout)."""
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, Path):
        try:
            return "./" + value.relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            return value.as_posix()
    if isinstance(value, list | tuple):
        return json.dumps([_default_text(v) for v in value]) if value else "[]"
    return str(value)


def _field_default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def expected_settings() -> dict[str, tuple[str | None, str]]:
    """Every documented key -> (environment variable or None for list items, default text)."""
    prefix = Settings.model_config.get("env_prefix", "")
    delimiter = Settings.model_config.get("env_nested_delimiter") or "__"
    out: dict[str, tuple[str | None, str]] = {}

    def walk(model: type[BaseModel], key_prefix: str, env_parts: list[str] | None) -> None:
        for name, field in model.model_fields.items():
            key = key_prefix + name
            env = (
                (prefix + delimiter.join([*env_parts, name])).upper()
                if env_parts is not None
                else None
            )
            annotation, optional = _unwrap_optional(field.annotation)
            item = _list_item_model(annotation)
            default = _field_default(field)
            if _is_model(annotation):
                if optional or default is PydanticUndefined:  # a section that is off unless set
                    out[key] = (env, _default_text(None if optional else default))
                walk(annotation, key + ".", [*env_parts, name] if env_parts is not None else None)
            elif item is not None:
                out[key] = (env, _default_text(default))
                walk(item, key + "[].", None)
            else:
                out[key] = (env, _default_text(default))

    walk(Settings, "", [])
    return out


def _section_keys() -> set[str]:
    """Keys of nested sections that the table may list but need not (``web``, ``jobs``...)."""
    keys = set()
    for key in expected_settings():
        parts = key.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return keys


def _cell(raw: str) -> str:
    value = raw.strip()
    if len(value) >= 2 and value.startswith("`") and value.endswith("`"):
        value = value[1:-1].strip()
    return "" if value in ('""', "''") else value


def documented_settings() -> dict[str, tuple[str, str]]:
    """Rows of the Configuration section's tables whose first cell is a backticked key."""
    rows: dict[str, tuple[str, str]] = {}
    for line in section(readme_text(), "Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 3 or not cells[0].startswith("`"):
            continue
        rows[_cell(cells[0])] = (_cell(cells[1]), _cell(cells[2]))
    return rows


def _same_default(documented: str, expected: str) -> bool:
    if documented == expected:
        return True
    if expected in ("true", "false", "null", "required"):
        return documented.lower() == expected
    try:
        return float(documented) == float(expected)
    except ValueError:
        return False


def test_configuration_table_lists_every_setting() -> None:
    expected = expected_settings()
    documented = documented_settings()
    missing = sorted(set(expected) - set(documented))
    assert not missing, f"settings missing from the README table: {missing}"
    unknown = sorted(set(documented) - set(expected) - _section_keys())
    assert not unknown, f"README table lists settings that do not exist: {unknown}"


def test_configuration_table_env_vars_and_defaults_match() -> None:
    expected = expected_settings()
    documented = documented_settings()
    wrong: list[str] = []
    for key, (env, default) in sorted(expected.items()):
        if key not in documented:
            continue  # reported by the test above
        doc_env, doc_default = documented[key]
        if env is None and doc_env not in NO_ENV:
            wrong.append(f"{key}: a list item has no variable of its own, README says {doc_env!r}")
        elif env is not None and doc_env != env:
            wrong.append(f"{key}: environment variable is {env}, README says {doc_env!r}")
        if not _same_default(doc_default, default):
            wrong.append(f"{key}: default is {default!r}, README says {doc_default!r}")
    assert not wrong, "README settings table is wrong:\n" + "\n".join(wrong)


def settings_examples(text: str) -> list[str]:
    """YAML blocks whose top-level keys are all settings (not model cards or pipelines)."""
    examples = []
    for lang, body in code_blocks(text):
        if lang not in ("yaml", "yml"):
            continue
        data = yaml.safe_load(body)
        if isinstance(data, dict) and data and set(data) <= set(Settings.model_fields):
            examples.append(body)
    return examples


def test_settings_examples_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("PACSNODE_")]:
        monkeypatch.delenv(name)
    examples = settings_examples(readme_text())
    assert examples, "README has no settings YAML example"
    for index, body in enumerate(examples):
        path = tmp_path / f"example{index}.yaml"
        path.write_text(body, encoding="utf-8")
        try:
            load_settings(path)
        except ConfigError as exc:
            pytest.fail(f"README settings example {index + 1} is invalid: {exc}\n{body}")


def test_expected_settings_cover_nested_sections() -> None:
    """Guards the walk itself: nested sections, optional sections and list items are reached."""
    expected = expected_settings()
    assert expected["completion.quiet_period_s"] == ("PACSNODE_COMPLETION__QUIET_PERIOD_S", "10.0")
    assert expected["tls"] == ("PACSNODE_TLS", "null")
    assert expected["tls.cert_file"] == ("PACSNODE_TLS__CERT_FILE", "required")
    assert expected["destinations"] == ("PACSNODE_DESTINATIONS", "[]")
    assert expected["destinations[].kind"] == (None, "required")
    assert expected["routing[].when.modality"] == (None, "[]")


# -- (3) CLI lines ----------------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """Argument strings after ``pacsnode`` / ``python -m app`` in the README's shell blocks."""
    found: list[str] = []
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            match = COMMAND_RE.search(line)
            if match:
                found.append(match.group(1))
    return found


def _argv(rest: str) -> list[str]:
    """Shell words up to the first operator (``|``, ``&&``, ``;``, ``>``, ``)``) or comment."""
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    argv: list[str] = []
    for token in lexer:
        if token and all(c in "();<>|&" for c in token):
            break
        argv.append(token)
    return argv


def test_readme_mentions_cli_commands() -> None:
    assert len(command_lines(readme_text())) >= 5, "README shows hardly any pacsnode commands"


@pytest.mark.parametrize("rest", command_lines(readme_text()) if README.exists() else [])
def test_readme_cli_lines_parse(rest: str) -> None:
    argv = _argv(rest)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, (
            f"`pacsnode {' '.join(argv)}` is not a valid command: {stderr.getvalue()}"
        )
        return
    assert args.command, f"`pacsnode {' '.join(argv)}` names no sub-command"
