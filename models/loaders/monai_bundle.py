"""A MONAI bundle run as MONAI runs it: its own pre-processing, inferer and post-processing.

The bundle's ``configs/inference.{json,yaml}`` is parsed with :class:`monai.bundle.ConfigParser`.
What reads or writes files is left out — ``LoadImage*`` (the node hands over the decoded series as
a MetaTensor with its true affine) and ``SaveImage*`` (the node writes DICOM) — and everything else
runs unchanged: orientation, spacing, intensity scaling, the bundle's inferer and its
post-processing, including ``Invertd`` back to the source grid. The post-processing is split in
three, kept in the bundle's order: what runs on the probabilities at the network's grid (up to the
first discretising step, ``AsDiscreted``, e.g. the softmax), the discretiser, and the ``Invertd``
(before or after the discretiser, as the bundle has it). So the node can run the inverse on only
what an output needs: the one-channel arg-max a bundle like wholeBody_ct_segmentation saves, or
the probabilities a few channels at a time (:mod:`pipelines.tasks.bundle`), never all 105 channels
of float probabilities at source resolution at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.card import ModelLoadError

_READERS = ("LoadImage", "LoadImaged")
_WRITERS = ("SaveImage", "SaveImaged", "SaveClassificationd")
_DISCRETISERS = ("AsDiscrete", "AsDiscreted")
_INVERTERS = ("Invertd",)
_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


@dataclass
class MonaiBundle:
    """The parts of a bundle the node runs, in the bundle's own order."""

    root: Path
    network: torch.nn.Module
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]]
    inferer: Callable[..., Any]
    # the bundle's post-processing before its discretiser, without Invertd: runs on the network's
    # grid (a softmax is voxel-wise, so before or after the inverse is the same)
    to_probabilities: Callable[[dict[str, Any]], dict[str, Any]]
    version: str
    channel_names: tuple[str, ...]  # from metadata.json's channel_def, background first
    image_key: str = "image"
    pred_key: str = "pred"
    # the bundle's Invertd (None: it has none), run on any number of channels of ``pred_key``
    invert: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # the bundle's first AsDiscreted (None: it has none)
    discretise: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # whether the bundle inverts after discretising (wholeBody_ct_segmentation: softmax, arg-max,
    # Invertd with nearest interpolation): its label map is then the inverse of one channel
    discretise_first: bool = False
    argmax: bool = False  # whether that discretiser is an arg-max over the channels


def _target_name(item: Any) -> str:
    target = item.get("_target_", "") if isinstance(item, dict) else ""
    return str(target).rsplit(".", 1)[-1].removeprefix("$")


def _transforms(parser: Any, key: str) -> list[dict[str, Any]]:
    config = parser.get(key)
    if config is None:
        return []
    if isinstance(config, dict) and _target_name(config) == "Compose":
        return list(config.get("transforms", []))
    raise ModelLoadError(f"MONAI bundle: {key!r} is not a Compose of transforms")


def find_config(bundle: Path, config_name: str = "") -> Path:
    candidates = (
        [bundle / config_name] if config_name else [bundle / "configs" / n for n in _CONFIG_NAMES]
    )
    config = next((c for c in candidates if c.is_file()), None)
    if config is None:
        raise ModelLoadError(
            f"MONAI bundle {bundle}: no inference config ({', '.join(map(str, candidates))})"
        )
    return config


def read_parser(bundle: Path, config: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(config))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ModelLoadError(f"MONAI bundle {bundle}: {config.name} is not valid: {exc}") from exc
    parser["bundle_root"] = str(bundle)
    return parser


def _metadata(bundle: Path) -> dict[str, Any]:
    path = bundle / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"MONAI bundle {bundle}: metadata.json is not valid: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _channel_names(metadata: dict[str, Any], pred_key: str) -> tuple[str, ...]:
    outputs: dict[str, Any] = metadata.get("network_data_format", {}).get("outputs", {})
    output: dict[str, Any] = outputs.get(pred_key) or next(iter(outputs.values()), {})
    channel_def: dict[str, Any] = output.get("channel_def", {})
    return tuple(str(channel_def[k]) for k in sorted(channel_def, key=lambda k: int(k)))


def bundle_channel_names(bundle: Path) -> tuple[str, ...]:
    """The bundle's output channel names from ``metadata.json`` (background first), or ()."""
    return _channel_names(_metadata(bundle), "pred")


def has_own_pipeline(parser: Any) -> bool:
    """Whether the bundle brings its own transforms; one with only ``network_def`` does not, and
    its network is fed as the card's ``input`` says, like any MONAI network."""
    return "preprocessing" in parser


def load_bundle(bundle: Path, network: torch.nn.Module, parser: Any, device: str) -> MonaiBundle:
    """Build the runnable pieces of ``bundle`` (its network already loaded with its weights)."""
    pre = [t for t in _transforms(parser, "preprocessing") if _target_name(t) not in _READERS]
    post = [t for t in _transforms(parser, "postprocessing") if _target_name(t) not in _WRITERS]
    cut = next((i for i, t in enumerate(post) if _target_name(t) in _DISCRETISERS), len(post))
    # an Invertd after the discretiser (wholeBody_ct_segmentation: softmax, argmax, invert) is
    # kept too: the probabilities (or the arg-max) are mapped back with the bundle's own
    # interpolation (nearest there: the arg-max of nearest-resampled probabilities is exactly
    # the nearest-resampled arg-max the bundle saves)
    at = [i for i, t in enumerate(post) if _target_name(t) in _INVERTERS]
    inverters = [post[i] for i in at]
    discretise_first = bool(at) and at[0] > cut
    if "inferer" not in parser:  # MONAI's evaluators default to one forward pass as well
        parser["inferer"] = {"_target_": "SimpleInferer"}
    # Every item is set before anything is instantiated: setting an item resets the parser's
    # cache, and Invertd must invert the very Compose instance that ran (MONAI checks its id).
    parser["device"] = f"$torch.device({device!r})"  # where the node placed the network
    parser["preprocessing"] = {"_target_": "Compose", "transforms": pre}
    parser["_pacsnode_to_probabilities"] = {
        "_target_": "Compose",
        "transforms": [t for t in post[:cut] if _target_name(t) not in _INVERTERS],
    }
    parser["_pacsnode_invert"] = {"_target_": "Compose", "transforms": inverters[:1]}
    parser["_pacsnode_discretise"] = {"_target_": "Compose", "transforms": post[cut : cut + 1]}
    try:
        preprocessing = parser.get_parsed_content("preprocessing")
        to_probabilities = parser.get_parsed_content("_pacsnode_to_probabilities")
        invert = parser.get_parsed_content("_pacsnode_invert") if inverters else None
        discretise = parser.get_parsed_content("_pacsnode_discretise") if cut < len(post) else None
        inferer = parser.get_parsed_content("inferer")
    except Exception as exc:  # noqa: BLE001 - any config error becomes a load error naming the bundle
        raise ModelLoadError(f"MONAI bundle {bundle}: {type(exc).__name__}: {exc}") from exc
    metadata = _metadata(bundle)
    return MonaiBundle(
        root=bundle,
        network=network,
        preprocessing=preprocessing,
        inferer=inferer,
        to_probabilities=to_probabilities,
        version=str(metadata.get("version", "")),
        channel_names=_channel_names(metadata, "pred"),
        invert=invert,
        discretise=discretise,
        discretise_first=discretise_first,
        argmax=cut < len(post) and bool(post[cut].get("argmax", False)),
    )
