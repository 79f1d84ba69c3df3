"""timm classifiers: ``timm.create_model(arch, pretrained=False, num_classes=K, **arguments)`` + weights."""

from __future__ import annotations

from typing import Any

import torch

from models.card import ModelCard
from models.devices import DevicePlacement
from models.loaders import LoadedModel, read_state_dict


def build_timm_network(card: ModelCard) -> torch.nn.Module:
    """The card's timm architecture, never pretrained (nothing may be downloaded at run time)."""
    import timm

    kwargs: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in card.arguments.items()
    }
    kwargs.setdefault("num_classes", len(card.labels))
    kwargs.setdefault("in_chans", card.input.channels)
    network: torch.nn.Module = timm.create_model(card.architecture, pretrained=False, **kwargs)
    return network


def load_timm(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    network = build_timm_network(card)
    network.load_state_dict(read_state_dict(card.weights_path, ema=card.ema), strict=True)
    network.to(placement.used)
    return LoadedModel(card, placement, sha, network=network)
