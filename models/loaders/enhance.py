"""Denoisers (non-local means, residual CNN) behind ``LoadedModel.denoise``.

Non-local means runs on the CPU (scikit-image); its weights file is its JSON parameters, pinned by
the card's SHA-256 like any weights. The CNN's state_dict is read with ``weights_only=True``.
"""

from __future__ import annotations

import functools

import torch

from models.card import ModelCard
from models.devices import DevicePlacement
from models.enhance import NlmDenoiser, ResidualDenoiser, network_denoise
from models.loaders import LoadedModel


def load_denoiser(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    if card.framework == "classical":
        nlm = NlmDenoiser.load(card.weights_path)
        if placement.used != "cpu":
            warning = None
            if placement.requested != "auto":
                warning = f"{card.name} (non-local means) runs on the CPU only"
            placement = DevicePlacement(requested=placement.requested, used="cpu", warning=warning)
        return LoadedModel(card, placement, sha, denoiser=nlm.denoise)
    network = ResidualDenoiser(**card.arguments)
    state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    network.to(placement.used).eval()
    run = functools.partial(network_denoise, network, device=placement.used)
    return LoadedModel(card, placement, sha, network=network, denoiser=run)
