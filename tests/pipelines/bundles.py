"""MONAI model-zoo bundles as a node's models folder holds them, for the bundle tests.

The shipped bundle configurations (tests/data/monai_bundles: the real ``configs/inference.json``
and ``metadata.json`` of spleen_ct_segmentation and wholeBody_ct_segmentation) get seeded random
weights of their network and a card, so that a test can run a real bundle without downloading
its weights. One builder, so that every bundle test sets up its bundle the same way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.card import ModelCard, write_card
from models.loaders import weights_digest
from models.loaders.monai_bundle import read_parser

BUNDLES = Path(__file__).resolve().parents[1] / "data" / "monai_bundles"
# MONAI UNet arguments of a cheap network with the output of a 104-organ model (105 channels, one
# softmax): for the tests and benchmarks of many labels, where the network is not what is measured
CHEAP_105_UNET: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 105,
    "channels": [8, 16],
    "strides": [2],
    "num_res_units": 0,
}


def bundle_parser(bundle: Path) -> Any:
    """The bundle's inference configuration, read as MONAI reads it, to run on the CPU."""
    parser = read_parser(bundle, bundle / "configs" / "inference.json")
    parser["device"] = "$torch.device('cpu')"
    return parser


def write_bundle(
    models_dir: Path,
    model: str,
    zoo_name: str,
    card: dict[str, Any],
    edit_config: Callable[[dict[str, Any]], None] | None = None,
    tune: Callable[[torch.nn.Module, Any], None] | None = None,
) -> torch.nn.Module:
    """``models_dir/model``: the shipped bundle ``zoo_name`` with seeded random weights, and its
    card; returns the network whose weights were saved.

    ``edit_config`` changes the bundle's inference.json (as a dict) before the network is built;
    ``tune(network, parser)`` changes the weights before they are saved; ``card``'s fields are
    added to (or replace) those of a segmentation bundle with 96³ windows."""
    bundle = models_dir / model / zoo_name
    shutil.copytree(BUNDLES / zoo_name, bundle)
    if edit_config is not None:
        config_path = bundle / "configs" / "inference.json"
        config = json.loads(config_path.read_text())
        edit_config(config)
        config_path.write_text(json.dumps(config, indent=1))
    parser = bundle_parser(bundle)
    torch.manual_seed(0)
    network: torch.nn.Module = parser.get_parsed_content("network_def").eval()
    if tune is not None:
        tune(network, parser)
    (bundle / "models").mkdir()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    write_card(bundle_card(bundle, **{"name": model, **card}), models_dir / model / "card.yaml")
    return network


def bundle_card(bundle: Path, **fields: Any) -> ModelCard:
    """A card for the bundle folder ``bundle``: ``fields`` added to (or replacing) those of a
    segmentation bundle with 96³ windows and random weights."""
    defaults = {
        "task": "segmentation",
        "framework": "monai",
        "architecture": "bundle",
        "weights": str(bundle),
        "sha256": weights_digest(bundle),
        "input": {"dims": 3, "spatial_size": [96, 96, 96]},
        "disclaimer": "test bundle with random weights",
    }
    return ModelCard.model_validate({**defaults, **fields})


def monai_reference(parser: Any, folder: Path, network: torch.nn.Module, discrete: bool) -> Any:
    """MONAI's own run of the bundle configured by ``parser`` on the DICOM ``folder`` (read with
    its ``PydicomReader``): the post-processed prediction, (channels, i, j, k) on the source grid;
    ``discrete=False`` stops before the arg-max (probabilities)."""
    import numpy as np

    parser["preprocessing"]["transforms"][0]["reader"] = "PydicomReader"
    post = [t for t in parser["postprocessing"]["transforms"] if t["_target_"] != "SaveImaged"]
    if not discrete:
        post = [t for t in post if t["_target_"] != "AsDiscreted"]
    parser["postprocessing"]["transforms"] = post
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    data = preprocessing({"image": str(folder)})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    return np.asarray(postprocessing(data)["pred"])


def low_resolution(network_def: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """An ``edit_config`` for wholeBody_ct_segmentation: its own low-resolution mode (3 mm) with
    ``network_def`` in place of its SegResNet (cheap where the network is not what is tested)."""

    def edit(config: dict[str, Any]) -> None:
        config["displayable_configs"]["highres"] = False
        config["network_def"] = network_def

    return edit
