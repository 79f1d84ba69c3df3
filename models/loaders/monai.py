"""MONAI networks: a ``monai.networks.nets`` class + kwargs + state_dict, or a MONAI bundle folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.card import ModelCard, ModelLoadError
from models.devices import DevicePlacement
from models.loaders import LoadedModel, read_state_dict


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
        network = _network_from_bundle(path, card)
    else:
        network = build_monai_network(card.architecture, card.arguments)
        network.load_state_dict(read_state_dict(path), strict=True)
    network.to(placement.used)
    return LoadedModel(card, placement, sha, network=network)


def _network_from_bundle(bundle: Path, card: ModelCard) -> torch.nn.Module:
    """A MONAI bundle: ``configs/inference.{json,yaml}`` defines the net, ``models/model.pt`` weights.

    Card ``arguments`` may name ``config_file``, ``network_key`` (default ``network_def``) and
    ``model_file`` (default ``models/model.pt``) relative to the bundle folder.
    """
    from monai.bundle import ConfigParser

    config_name = str(card.arguments.get("config_file", ""))
    candidates = (
        [bundle / config_name]
        if config_name
        else [
            bundle / "configs" / name
            for name in ("inference.json", "inference.yaml", "inference.yml")
        ]
    )
    config = next((c for c in candidates if c.is_file()), None)
    if config is None:
        raise ModelLoadError(
            f"MONAI bundle {bundle}: no inference config ({', '.join(map(str, candidates))})"
        )
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"MONAI bundle {bundle}: {config.name} is not valid: {exc}") from exc
    parser["bundle_root"] = str(bundle)
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
    return network
