"""``pacsnode models list|check``: the installed model cards, their weights and devices.

(``pacsnode train`` and ``evaluate`` live in :mod:`app.commands.training`: they import the
phantom generators and SciPy, which listing and checking cards do not need.)
"""

from __future__ import annotations

import argparse

from core.config import Settings
from models.card import ModelLoadError, scan_cards
from models.devices import configure_torch_threads, resolve_device
from models.loaders import load_model, weights_digest


def _default_device(settings: Settings) -> str:
    """The device ``models list/check`` tries: the first GPU when there is one."""
    return "auto"


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print every card with its weights' SHA-256 status and the device it would run on."""
    cards, errors = scan_cards(settings.models_dir)
    placement = resolve_device(_default_device(settings))
    print(f"models directory: {settings.models_dir}")
    print(
        f"{'NAME':26} {'TASK':15} {'FRAMEWORK':12} {'VERSION':12} {'DEVICE':7} {'SHA-256':14} STATUS"
    )
    for name, card in sorted(cards.items()):
        path = card.weights_path
        if not path.exists():
            status = f"MISSING weights {path}"
        else:
            status = "ok" if weights_digest(path) == card.sha256 else "SHA-256 MISMATCH"
        print(
            f"{name:26} {card.task:15} {card.framework:12} {card.version:12} {placement.used:7} "
            f"{card.sha256[:12]:14} {status}"
        )
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
