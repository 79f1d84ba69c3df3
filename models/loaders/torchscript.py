"""TorchScript models: a self-contained ``torch.jit`` archive; the card only describes its I/O.

A TorchScript model returns logits unless its card says ``arguments: {outputs: probabilities}``.
"""

from __future__ import annotations

import torch

from models.card import ModelCard
from models.devices import DevicePlacement
from models.loaders import LoadedModel


def load_torchscript(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    network = torch.jit.load(str(card.weights_path), map_location=placement.used)
    probabilities = str(card.arguments.get("outputs", "logits")) == "probabilities"
    return LoadedModel(card, placement, sha, network=network, outputs_probabilities=probabilities)
