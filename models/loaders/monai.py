"""MONAI networks: a ``monai.networks.nets`` class + kwargs + state_dict, or a MONAI bundle folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.card import ModelCard, ModelLoadError
from models.devices import DevicePlacement
from models.label_codes import bundle_labels
from models.loaders import LoadedModel, read_state_dict
from models.loaders.monai_bundle import (
    bundle_channel_names,
    find_config,
    has_own_pipeline,
    load_bundle,
    read_parser,
)


def build_monai_network(architecture: str, arguments: dict[str, object]) -> torch.nn.Module:
    """Instantiate ``monai.networks.nets.<architecture>(**arguments)`` with a clear error."""
    from monai.networks import nets

    cls = getattr(nets, architecture, None)
    if cls is None or not isinstance(cls, type):
        raise ModelLoadError(f"monai.networks.nets has no network {architecture!r}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in arguments.items()}
    network: torch.nn.Module = cls(**kwargs)
    return network


def load_monai(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    path = card.weights_path
    if path.is_dir():
        card = with_bundle_labels(card, path)
        network, parser = _network_from_bundle(path, card)
        network.to(placement.used)
        if not has_own_pipeline(parser):
            return LoadedModel(card, placement, sha, network=network)
        bundle = load_bundle(path, network, parser, placement.used)
        return LoadedModel(card, placement, sha, network=network, bundle=bundle)
    network = build_monai_network(card.architecture, card.arguments)
    network.load_state_dict(read_state_dict(path), strict=True)
    network.to(placement.used)
    return LoadedModel(card, placement, sha, network=network)


def with_bundle_labels(card: ModelCard, bundle: Path) -> ModelCard:
    """The card with the bundle's labels: its ``channel_def`` names (background first), coded from
    the shipped SNOMED CT map where the card does not list a label itself.

    A card's labels must name the channel at their value; a bundle without a ``channel_def``
    needs every label in its card.
    """
    channels = bundle_channel_names(bundle)
    if not channels:
        if not card.labels:
            raise ModelLoadError(
                f"model {card.name!r}: the card lists no labels and the bundle's metadata.json "
                "has no channel_def to take them from"
            )
        return card
    return card.model_copy(update={"labels": bundle_labels(channels, card.labels, card.name)})


def _network_from_bundle(bundle: Path, card: ModelCard) -> tuple[torch.nn.Module, Any]:
    """A MONAI bundle: ``configs/inference.{json,yaml}`` defines the net, ``models/model.pt`` weights.

    Card ``arguments`` may name ``config_file``, ``network_key`` (default ``network_def``) and
    ``model_file`` (default ``models/model.pt``) relative to the bundle folder.
    """
    config = find_config(bundle, str(card.arguments.get("config_file", "")))
    parser = read_parser(bundle, config)
    network_key = str(card.arguments.get("network_key", "network_def"))
    if network_key not in parser:
        raise ModelLoadError(f"MONAI bundle {bundle}: {config.name} has no {network_key!r}")
    network = parser.get_parsed_content(network_key, instantiate=True)
    if not isinstance(network, torch.nn.Module):
        raise ModelLoadError(f"MONAI bundle {bundle}: {network_key!r} is not a torch module")
    model_file = bundle / str(card.arguments.get("model_file", "models/model.pt"))
    if not model_file.is_file():
        raise ModelLoadError(f"MONAI bundle {bundle}: weights {model_file} not found")
    network.load_state_dict(read_state_dict(model_file), strict=True)
    return network, parser
