"""``pacsnode models list|check``: the installed model cards, their weights and devices.

(``pacsnode train`` and ``evaluate`` live in :mod:`app.commands.training`: they import the
phantom generators and SciPy, which listing and checking cards do not need.)
"""

from __future__ import annotations

import argparse

from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from models.card import ModelLoadError, scan_cards
from models.devices import configure_torch_threads, resolve_device
from models.loaders import load_model, weights_digest
from node.db.engine import open_database
from node.db.repositories import model_status


def _default_device(settings: Settings) -> str:
    """The device ``models list/check`` tries: the first GPU when there is one."""
    return "auto"


def _reported_statuses(settings: Settings) -> dict[str, tuple[str, str, str]] | None:
    """(load status, device, last error) by model as the workers reported them; None when the
    database cannot be read."""
    try:
        db = open_database(settings)
    except (SQLAlchemyError, OSError):
        return None
    try:
        with db.read() as session:
            rows = model_status.by_name(session)
            return {name: (r.state, r.device, r.error) for name, r in rows.items()}
    except SQLAlchemyError:
        return None
    finally:
        db.dispose()


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print every card with its weights' SHA-256 status, the device it would run on, and its
    load status as the workers last reported it (with the last error of a failed model)."""
    cards, errors = scan_cards(settings.models_dir, warn=False)  # listed below, not warned
    placement = resolve_device(_default_device(settings))
    reported = _reported_statuses(settings)
    print(f"models directory: {settings.models_dir}")
    print(
        f"{'NAME':26} {'TASK':15} {'FRAMEWORK':12} {'VERSION':12} {'DEVICE':7} {'SHA-256':14} "
        f"{'WEIGHTS':16} LOAD"
    )
    for name, card in sorted(cards.items()):
        path = card.weights_path
        error = ""
        if not path.exists():
            weights, error = "MISSING", f"weights {path} not found"
        elif weights_digest(path) == card.sha256:
            weights = "ok"
        else:
            weights, error = "SHA-256 MISMATCH", f"card says {card.sha256}, weights differ"
        state, device, last_error = (reported or {}).get(name, ("not loaded yet", "", ""))
        if reported is None:
            state = "unknown (database not readable)"
        if error:  # what this command just found is newer than any report
            state, last_error = "failed", error
        load = f"{state} on {device}" if state == "loaded" and device else state
        print(
            f"{name:26} {card.task:15} {card.framework:12} {card.version:12} {placement.used:7} "
            f"{card.sha256[:12]:14} {weights:16} {load}"
        )
        if state == "failed" and last_error:
            print(f"{'':26} last error: {last_error}")
    for path, message in sorted(errors.items()):
        print(f"{path.name:26} INVALID CARD: {message}")
    if not cards and not errors:
        print("no model cards found")
    return 0


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    """Load every model on its device; print where it really runs. ``--strict``: exit 1 on failure."""
    configure_torch_threads(settings.torch_threads)
    cards, errors = scan_cards(settings.models_dir)
    failures = len(errors)
    device = _default_device(settings)
    for name, card in sorted(cards.items()):
        try:
            model = load_model(card, device)
        except Exception as exc:  # noqa: BLE001 - one broken model never stops the check of the rest
            failures += 1
            kind = "" if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: "
            print(f"FAIL {name}: {kind}{exc}")
            continue
        note = (
            f" (requested {model.placement.requested}: {model.placement.warning})"
            if model.placement.warning
            else ""
        )
        print(
            f"OK   {name}: {card.framework} {card.architecture} on {model.placement.used}{note}, "
            f"sha256 {model.sha256}"
        )
    for path, message in sorted(errors.items()):
        print(f"FAIL {path}: {message}")
    print(f"{len(cards) - (failures - len(errors))} of {len(cards) + len(errors)} model(s) load")
    return 1 if failures and getattr(args, "strict", False) else 0
