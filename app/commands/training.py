"""``pacsnode train`` and ``pacsnode evaluate``: the demo models trained and scored on phantoms."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import Settings
from models.card import ModelLoadError
from models.devices import configure_torch_threads
from models.training.run import train_demo_models
from pipelines.evaluation import evaluate_all, format_report


def train_command(settings: Settings, args: argparse.Namespace) -> int:
    """Train the demo models on phantoms into ``--out`` (default: the models directory)."""
    configure_torch_threads(settings.torch_threads)
    out = Path(args.out) if getattr(args, "out", None) else settings.models_dir
    cards = train_demo_models(out, seed=args.seed, only=args.only, quick=args.quick)
    for card in cards:
        print(
            f"trained {card.name}: {card.weights_path} sha256 {card.sha256} "
            f"({card.training.get('seconds')} s)"
        )
    return 0


def evaluate_command(settings: Settings, args: argparse.Namespace) -> int:
    """Score every demo model and ensemble on held-out phantoms (and real labelled MR volumes)."""
    configure_torch_threads(settings.torch_threads)
    try:
        report = evaluate_all(
            settings.models_dir,
            seed=args.seed,
            write_cards=args.write_cards,
            only=getattr(args, "only", None),
        )
    except ModelLoadError as exc:
        print(f"pacsnode evaluate: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0
