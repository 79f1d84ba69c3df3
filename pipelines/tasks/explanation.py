"""Explanations of a classification decision: Grad-CAM, Grad-CAM++ or occlusion sensitivity.

Each classifier member explains the ensemble's *decision* (the class the pipeline decided, in the
member's own output order) with MONAI's ``monai.visualize`` implementation, at a target layer
chosen per member: the member spec's ``explain_layer``, else the card's, else the last module of
the network whose output still has a spatial grid (found by tracing one forward pass: for a timm
ResNet that is ``layer4``, for MONAI's DenseNet ``class_layers.relu``). A network without such a
layer (a transformer, say) falls back to occlusion sensitivity, which needs no layer.

The map is mapped back to the source geometry like segmentation probabilities (letterbox inverse
for 2D models, every frame of a volume for 2D classifiers; the resampling inverse for 3D ones),
scaled to 0..1 per frame (1: what mattered most), and the ensemble map is the weighted mean with the
members' normalised weights.

MONAI registers its hooks on the module for good (and turns in-place activations off), so every
explanation runs on a private copy of the network: the warm shared model is never modified.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from pipelines.contract import ClassificationOutput, ExplanationOutput
from pipelines.errors import PipelineModelError
from pipelines.members import Member, run_per_device, task_orders
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.spec import ClassificationTask

METHODS = ("gradcam", "gradcampp", "occlusion")
_layer_cache: dict[tuple[str, str], str] = {}
_layer_lock = threading.Lock()


@dataclass(frozen=True)
class MemberExplanation:
    maps: np.ndarray  # (frames, rows, cols) float32 in [0, 1], source geometry
    method: str
    layer: str  # "" for occlusion


def normalise_frames(maps: np.ndarray) -> np.ndarray:
    """Scale every frame to 0..1 (min → 0, max → 1); a constant frame becomes all 0.

    MONAI's default normaliser maps max → 0 (it flips magnitudes); a viewer wants 1 where the
    model looked, so the raw maps are scaled here instead.
    """
    maps = maps.astype(np.float32, copy=True)
    for frame in maps:
        low, high = float(frame.min()), float(frame.max())
        if high > low:
            frame -= low
            frame /= high - low
        else:
            frame[...] = 0.0
    return maps


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def spatial_layer(network: torch.nn.Module, example: torch.Tensor) -> str | None:
    """The last module (in completion order) whose output keeps a spatial grid larger than 1.

    One forward pass with a hook on every named module; the root module is never chosen.
    """
    spatial_dims = example.ndim - 2
    finished: list[str] = []
    handles = []

    def hook(name: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        def record(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            if (
                isinstance(output, torch.Tensor)
                and output.ndim == spatial_dims + 2
                and any(int(s) > 1 for s in output.shape[2:])
            ):
                finished.append(name)

        return record

    try:
        for name, module in network.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        with torch.inference_mode():
            network(example)
    except RuntimeError:  # TorchScript modules take no Python hooks: no layer to explain at
        return None
    finally:
        for handle in handles:
            handle.remove()
    return finished[-1] if finished else None


def target_layer(member: Member, network: torch.nn.Module, example: torch.Tensor) -> str | None:
    """The member's Grad-CAM layer: spec override, card, else traced on ``network`` (the
    member's private copy, so the shared model never carries a hook) and cached per weights."""
    chosen = member.spec.explain_layer or member.model.card.explain_layer
    if chosen is not None:
        names = {name for name, _ in network.named_modules()}
        if chosen not in names:
            raise PipelineModelError(
                f"explain_layer {chosen!r} is not a module of {member.name} "
                f"(e.g. {sorted(names)[-3:]})"
            )
        return chosen
    key = (member.model.card.name, member.model.sha256)
    with _layer_lock:
        if key not in _layer_cache:
            found = spatial_layer(network, example[:1])
            _layer_cache[key] = found or ""
        return _layer_cache[key] or None


def _network(member: Member) -> torch.nn.Module:
    network = getattr(member.model, "network", None)
    if not isinstance(network, torch.nn.Module):
        raise PipelineModelError(f"{member.name} has no network to explain")
    return network


def explain_batch(
    network: torch.nn.Module,
    batch: torch.Tensor,
    class_index: int,
    method: str,
    layer: str | None,
) -> torch.Tensor:
    """Raw (N, 1, *spatial) maps at the input size, high where ``class_index`` was driven from.

    ``network`` must be a private copy (MONAI's hooks stay on it)."""
    from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity

    if method in ("gradcam", "gradcampp") and layer is not None:
        cam_class = GradCAM if method == "gradcam" else GradCAMpp
        cam = cam_class(network, target_layers=layer, postprocessing=_identity)
        # MONAI's Grad-CAM++ weighs by exp(score) broadcast against the gradients, right only for
        # one image at a time; Grad-CAM takes the batch
        chunks = batch.split(1) if method == "gradcampp" else (batch,)
        maps = []
        with torch.enable_grad():
            for chunk in chunks:
                x = chunk.detach().clone().requires_grad_(True)
                maps.append(cam(x, class_idx=class_index).detach().float())
        return torch.cat(maps)
    occlusion = OcclusionSensitivity(
        network, mask_size=max(4, min(int(s) for s in batch.shape[2:]) // 8), verbose=False
    )
    out = []
    with torch.inference_mode():
        for item in batch:
            sensitivity, _ = occlusion(item[None])
            # the class probability with each region hidden: low where the region mattered
            out.append(-sensitivity[:, class_index : class_index + 1].float())
    return torch.cat(out)


def member_explanation(
    member: Member,
    inputs: PreparedInputs,
    task: ClassificationTask,
    class_index: int,
) -> MemberExplanation:
    """One member's map of ``class_index`` (its own output index) on the source grid, 0..1."""
    card_input = member.model.card.input
    device = member.model.placement.used
    network = copy.deepcopy(_network(member)).eval()
    requested = task.explain
    if card_input.dims == 2:
        prepared = inputs.for_2d(card_input)
        layer = (
            target_layer(member, network, prepared.batch[:1].to(device))
            if requested != "occlusion"
            else None
        )
        method = requested if layer is not None else "occlusion"
        parts = []
        for start in range(0, prepared.batch.shape[0], task.batch_size):
            batch = prepared.batch[start : start + task.batch_size].to(device, torch.float32)
            raw = explain_batch(network, batch, class_index, method, layer).cpu()
            parts.append(prepared.letterbox.inverse(raw)[:, 0].numpy())
        return MemberExplanation(normalise_frames(np.concatenate(parts)), method, layer or "")
    prepared3 = inputs.for_3d(card_input)
    size = tuple(int(s) for s in card_input.spatial_size)
    with torch.inference_mode():
        resized = F.interpolate(prepared3.volume, size=size, mode="trilinear", align_corners=False)
    resized = resized.to(device, torch.float32)
    layer = target_layer(member, network, resized) if requested != "occlusion" else None
    method = requested if layer is not None else "occlusion"
    raw = explain_batch(network, resized, class_index, method, layer).cpu()
    with torch.inference_mode():
        back = F.interpolate(
            raw, size=tuple(prepared3.volume.shape[2:]), mode="trilinear", align_corners=False
        )
        source = prepared3.grid.to_source(back)[0, 0].numpy()
    return MemberExplanation(normalise_frames(source), method, layer or "")


def run_explanation(
    task: ClassificationTask,
    members: list[Member],
    inputs: PreparedInputs,
    decision: ClassificationOutput,
) -> ExplanationOutput | None:
    """The ensemble's map of the decided class (None when the task's ``explain`` is none)."""
    if task.explain == "none" or not members:
        return None
    classes, orders = task_orders(members, lambda m: list(m.model.card.class_names))
    decided = classes.index(decision.decision)

    def explain(member: Member) -> MemberExplanation:
        return member_explanation(member, inputs, task, orders[member.name][decided])

    outcomes = run_per_device(members, explain)
    total = sum(o.member.weight for o in outcomes)
    mean: np.ndarray | None = None
    for outcome in outcomes:
        weighted = outcome.value.maps * np.float32(outcome.member.weight / total)
        mean = weighted if mean is None else mean + weighted
    assert mean is not None
    return ExplanationOutput(
        method=task.explain,
        class_name=decision.decision,
        maps=np.clip(mean, 0.0, 1.0).astype(np.float32),
        member_methods={o.member.name: o.value.method for o in outcomes},
        member_layers={o.member.name: o.value.layer for o in outcomes},
    )
