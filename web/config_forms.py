"""The console's configuration forms read into validated settings objects, or a message for a 400.

A destination or a routing rule typed into a form is checked by the same pydantic models that
check the YAML file (``core.config``), so the console can store nothing a restart would refuse;
what only the console knows (which names exist, the secret fields left blank to keep them) is
checked here. Every problem becomes a :class:`FormError` whose message names the field.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from core.config import DestinationSettings, RoutingRule
from core.domain import DestinationKind

# used in URLs, as a ConfigOverride key and as deliveries.destination_name (64 characters)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SECRET_FIELDS = ("password", "token")
TEXT_FIELDS = (
    "ae_title",
    "host",
    "preferred_transfer_syntax",
    "url",
    "username",
    "password",
    "token",
    "path",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
)
RULE_LIST_FIELDS = (
    "modality",
    "sop_class_uid",
    "body_part_examined",
    "calling_ae",
    "called_ae",
)
RULE_REGEX_FIELDS = ("study_description_regex", "series_description_regex")


class FormError(ValueError):
    """A form the console refuses; the message is shown to the admin as it is."""


def _message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def check_name(name: str, what: str) -> str:
    name = name.strip()
    if not NAME.match(name):
        raise FormError(
            f"{what} name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def _flag(form: Mapping[str, str], key: str) -> bool:
    return form.get(key, "").strip().lower() in ("on", "true", "1", "yes")


def destination_from_form(
    form: Mapping[str, str], name: str, previous: DestinationSettings | None
) -> DestinationSettings:
    """A destination from the edit form (a new one's name checked with :func:`check_name` by the
    caller; an existing one keeps the name the file gave it). A secret (password, token) left
    blank keeps ``previous``'s, since the page never shows secrets."""
    kind_text = form.get("kind", "").strip()
    try:
        kind = DestinationKind(kind_text)
    except ValueError:
        kinds = ", ".join(k.value for k in DestinationKind)
        raise FormError(f"kind {kind_text!r}: choose one of {kinds}") from None
    data: dict[str, Any] = {"name": name, "kind": kind.value, "enabled": _flag(form, "enabled")}
    for key in TEXT_FIELDS:
        value = form.get(key, "").strip()
        if key in SECRET_FIELDS and not value and previous is not None:
            value = str(getattr(previous, key))
        if value:
            data[key] = value
    port = form.get("port", "").strip()
    if port:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise FormError(f"port {port!r}: a number from 1 to 65535")
        data["port"] = int(port)
    data["tls"] = _flag(form, "tls")
    if kind is DestinationKind.FOLDER and data.get("path") and not data["path"].startswith("/"):
        raise FormError(f"path {data['path']!r}: an absolute folder path")
    try:
        return DestinationSettings.model_validate(data)
    except ValidationError as exc:
        raise FormError(_message(exc)) from None


def stored_destination(dest: DestinationSettings) -> dict[str, Any]:
    """A destination as the JSON its ConfigOverride row keeps (the name is the row's key)."""
    return dest.model_dump(mode="json", exclude={"name"}, exclude_defaults=True) | {
        "kind": dest.kind.value,
        "enabled": dest.enabled,
    }


def _words(value: str) -> list[str]:
    return [w for w in re.split(r"[,\s]+", value.strip()) if w]


def rule_from_form(
    form: Mapping[str, str],
    *,
    pipelines: Collection[str] | None,
    destinations: Collection[str],
) -> RoutingRule:
    """A routing rule from the editor. Lists are comma- or space-separated; a pipeline or a
    destination that does not exist is refused (``pipelines`` None: the definitions cannot be
    read, so pipeline names are not checked)."""
    name = form.get("name", "").strip()
    if not name or len(name) > 64 or not name.isprintable() or "/" in name:
        raise FormError("rule name: 1-64 printable characters without '/'")
    when: dict[str, Any] = {k: _words(form.get(k, "")) for k in RULE_LIST_FIELDS}
    for key in RULE_REGEX_FIELDS:
        value = form.get(key, "").strip()
        if value:
            try:
                re.compile(value)
            except re.error as exc:
                raise FormError(f"{key}: {value!r} is not a regular expression ({exc})") from None
            when[key] = value
    rule_pipelines = _words(form.get("pipelines", ""))
    rule_destinations = _words(form.get("destinations", ""))
    if pipelines is not None:
        unknown = [p for p in rule_pipelines if p not in pipelines]
        if unknown:
            raise FormError(f"pipelines: no pipeline named {', '.join(unknown)}")
    unknown = [d for d in rule_destinations if d not in destinations]
    if unknown:
        raise FormError(f"destinations: no destination named {', '.join(unknown)}")
    data = {
        "name": name,
        "when": when,
        "pipelines": rule_pipelines,
        "destinations": rule_destinations,
        "send_back_to_sender": _flag(form, "send_back_to_sender"),
        "stop": _flag(form, "stop"),
    }
    try:
        return RoutingRule.model_validate(data)
    except ValidationError as exc:
        raise FormError(_message(exc)) from None


def stored_rules(rules: list[RoutingRule]) -> dict[str, Any]:
    """The rule list as its ConfigOverride row keeps it."""
    return {"rules": [r.model_dump(mode="json") for r in rules]}
