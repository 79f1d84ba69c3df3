"""Segmentation ensembles: per-member probabilities in source geometry, weighted mean, counts.

2D models run on every frame (batched slices for volumes); 3D models run by sliding-window
inference on the card's grid (its orientation and spacing: :mod:`pipelines.preprocess.orientation`)
and stay at that (model) resolution. The ensemble is then formed
on the source grid one slab of slices at a time: each member's slab is mapped back
(:meth:`ModelGrid.to_source_slab`), weighted and added, and the slab's label map is decided
there. Probabilities for every label at source resolution are kept only when an output needs them
(a FRACTIONAL SEG, or when they are small); otherwise only the heat map (the highest label
probability per voxel) is kept. A 105-label model on a 300 x 512² CT would need 33 GB of float32
probabilities at source resolution; the label map is 79 MB and a slab a few hundred MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.component_numbers import component_sizes
from pipelines.contract import LabelSpec
from pipelines.errors import PipelineModelError
from pipelines.members import (
    Member,
    MemberOutcome,
    member_forward,
    run_per_device,
    same_labels,
)
from pipelines.postprocess import label_map_dtype, threshold_labels
from pipelines.preprocess.orientation import ModelGrid
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.spec import PostprocessSpec, SegmentationTask
from pipelines.stages import stage
from pipelines.tasks.bundle import BundleOutput, bundle_output, bundle_probabilities
from pipelines.tasks.nnunet import nnunet_probabilities

SLAB_BYTES = 256 << 20  # float32 label probabilities of one slab at source resolution
KEEP_PROBABILITIES_BYTES = 1 << 30  # below this the full probabilities are kept anyway


@dataclass
class SourceProbabilities:
    """One member's (L, F, H, W) label probabilities on the source grid, read slab by slab.

    ``on_source`` holds them at source resolution already (2D models, nnU-Net); else
    ``at_model`` (1, L, d, h, w) holds them at the model's resolution, on the model's device,
    resampled per slab there (a GPU maps its output back itself; the CPU gets the slab), or
    ``bundle`` holds a MONAI bundle's output on its network's grid: its label map and heat map
    come from it directly (:meth:`BundleOutput.label_map_and_heat`), and where probabilities at
    source resolution are needed after all (an ensemble, a FRACTIONAL SEG, a label threshold) it
    inverts them a chunk of channels at a time into ``on_source``.
    """

    labels: int
    frames: int
    on_source: np.ndarray | None = None
    at_model: torch.Tensor | None = None
    grid: ModelGrid | None = None
    bundle: BundleOutput | None = None

    def slab(self, start: int, stop: int) -> np.ndarray:
        """(L, stop - start, H, W) float32; a view of ``on_source`` (do not write to it)."""
        if self.on_source is None and self.bundle is not None:
            self.on_source = self.bundle.probabilities(SLAB_BYTES)
            self.bundle = None  # the network-grid output is not needed any more
        if self.on_source is not None:
            return self.on_source[:, start:stop]
        assert self.at_model is not None and self.grid is not None
        with stage("map back"):  # on the model's device; only the slab comes to the CPU
            return self.grid.to_source_slab(self.at_model, start, stop)[0].cpu().numpy()

    def full(self) -> np.ndarray:
        if self.on_source is not None:
            return self.on_source
        return self.slab(0, self.frames)


@dataclass
class SegmentationRun:
    labels: tuple[LabelSpec, ...]
    # (L, F, H, W) ensemble mean of the labels (no background), source grid; None when no output
    # needs it (see the module docstring): ``heat`` holds its maximum over the labels then
    probabilities: np.ndarray | None
    label_map: np.ndarray  # (F, H, W) thresholded / arg-max label values, before clean-up
    heat: np.ndarray | None
    member_pixel_counts: dict[str, dict[str, int]]
    outcomes: list[MemberOutcome[SourceProbabilities]]


def member_probabilities(
    member: Member, inputs: PreparedInputs, task: SegmentationTask
) -> np.ndarray:
    """One member's (L, F, H, W) label probabilities on the source grid.

    The background channel is dropped before the inverse mapping: nothing downstream needs it,
    and resampling it would double the most expensive step after inference.
    """
    bundle = getattr(member.model, "bundle", None)
    if bundle is not None:  # the bundle's own transforms and inferer, back on the source grid
        label_probs = bundle_probabilities(bundle, inputs.series, SLAB_BYTES)
        _check_channels(member, label_probs.shape[0] + 1)
        return label_probs
    predictor = getattr(member.model, "nnunet", None)
    if predictor is not None:  # nnU-Net's own pre-processing and inference, on the source grid
        label_probs = nnunet_probabilities(predictor, inputs.series)
        _check_channels(member, label_probs.shape[0] + 1)
        return label_probs
    card_input = member.model.card.input
    forward = member_forward(member)
    if card_input.dims == 2:
        prepared = inputs.for_2d(card_input)
        frames = prepared.batch.shape[0]
        rows, cols = inputs.series.shape
        out: np.ndarray | None = None
        for start in range(0, frames, task.batch_size):
            probs = forward(prepared.batch[start : start + task.batch_size])
            _check_channels(member, probs.shape[1])
            with stage("map back"):
                source = prepared.letterbox.inverse(probs[:, 1:]).numpy()  # (b, L, rows, cols)
                if out is None and source.shape[0] == frames:  # one batch: no second copy
                    out = np.ascontiguousarray(source.transpose(1, 0, 2, 3), dtype=np.float32)
                    continue
                if out is None:
                    out = np.empty((source.shape[1], frames, rows, cols), dtype=np.float32)
                out[:, start : start + source.shape[0]] = source.transpose(1, 0, 2, 3)
        assert out is not None
        return out
    return member_output(member, inputs, task).full()


def member_output(
    member: Member, inputs: PreparedInputs, task: SegmentationTask
) -> SourceProbabilities:
    """One member's label probabilities, 3D sliding-window ones left at model resolution."""
    frames = inputs.series.frame_count
    card_input = member.model.card.input
    bundle = getattr(member.model, "bundle", None)
    if bundle is not None:  # the bundle's own transforms and inferer; mapped back when read
        output = bundle_output(bundle, inputs.series)
        _check_channels(member, output.channels)
        return SourceProbabilities(output.channels - 1, frames, bundle=output)
    if getattr(member.model, "nnunet", None) is not None or card_input.dims == 2:
        probs = member_probabilities(member, inputs, task)
        return SourceProbabilities(probs.shape[0], frames, on_source=probs)
    from monai.inferers import sliding_window_inference

    prepared3 = inputs.for_3d(card_input)
    forward = member_forward(member)
    with torch.inference_mode(), stage("inference"):
        window_probs: Any = sliding_window_inference(
            prepared3.volume,
            roi_size=tuple(int(s) for s in card_input.spatial_size),
            sw_batch_size=task.sw_batch_size,
            predictor=forward,
            overlap=task.sw_overlap,
        )
    assert isinstance(window_probs, torch.Tensor)
    _check_channels(member, window_probs.shape[1])
    # left on the model's device: a CUDA model's output is mapped back there (SourceProbabilities)
    at_model = window_probs[:, 1:].float()
    del window_probs
    return SourceProbabilities(
        int(at_model.shape[1]), frames, at_model=at_model, grid=prepared3.grid
    )


def _check_channels(member: Member, channels: int) -> None:
    labels = len(member.model.card.labels)
    if channels != labels + 1:
        raise PipelineModelError(
            f"model {member.name} returned {channels} channels, its card has {labels} label(s) "
            "+ background"
        )


def _bundle_decides(
    output: BundleOutput, names: list[str], spec: PostprocessSpec, exclusive: bool
) -> bool:
    """Whether a lone bundle member's own arg-max is the label map the node would decide: the
    bundle discretises by arg-max, and the task asks for no other threshold (one label: p ≥ 0.5
    is the arg-max of a two-channel softmax; several: the arg-max over background and labels)."""
    if not output.bundle.argmax or any(name in spec.label_thresholds for name in names):
        return False
    return spec.threshold == 0.5 if len(names) == 1 else exclusive


def _bundle_run(
    output: BundleOutput,
    labels: tuple[LabelSpec, ...],
    outcomes: list[MemberOutcome[SourceProbabilities]],
) -> SegmentationRun:
    """A lone bundle member's label map and heat map, without its probabilities at source
    resolution; its pixel counts are the voxels of its label map."""
    label_map, heat = output.label_map_and_heat(label_map_dtype(len(labels)), SLAB_BYTES)
    outcomes[0].value.bundle = None  # the network-grid output is not needed any more
    sizes = component_sizes(label_map, len(labels))
    counts = {
        outcomes[0].member.name: {lab.name: int(n) for lab, n in zip(labels, sizes, strict=True)}
    }
    return SegmentationRun(
        labels=labels,
        probabilities=None,
        label_map=label_map,
        heat=heat,
        member_pixel_counts=counts,
        outcomes=outcomes,
    )


def slab_frames(labels: int, rows: int, cols: int, budget: int = SLAB_BYTES) -> int:
    """How many source slices one slab of ``labels`` float32 probability maps may hold."""
    return max(1, budget // max(1, labels * rows * cols * 4))


def run_segmentation(
    task: SegmentationTask,
    members: list[Member],
    inputs: PreparedInputs,
    exclusive: bool = False,
    keep_probabilities: bool | None = None,
) -> SegmentationRun:
    """The ensemble's label map (and probabilities where kept) on the source grid.

    ``keep_probabilities``: True keeps the (L, F, H, W) probabilities (a FRACTIONAL SEG needs
    them), False keeps only the heat map; None keeps them when they take at most
    ``KEEP_PROBABILITIES_BYTES``.
    """
    labels, orders = same_labels(members)
    outcomes = run_per_device(members, lambda member: member_output(member, inputs, task))
    frames = inputs.series.frame_count
    rows, cols = inputs.series.shape
    count = len(labels)
    if keep_probabilities is None:
        keep_probabilities = count * frames * rows * cols * 4 <= KEEP_PROBABILITIES_BYTES
    names = [lab.name for lab in labels]
    spec = task.postprocess
    lone = outcomes[0].value if len(outcomes) == 1 and members[0].weight == 1.0 else None
    in_order = orders[members[0].name] == sorted(orders[members[0].name])
    bundle = lone.bundle if lone is not None and in_order and not keep_probabilities else None
    if bundle is not None and _bundle_decides(bundle, names, spec, exclusive):
        return _bundle_run(bundle, labels, outcomes)
    step = slab_frames(count, rows, cols)
    # one slab holding every frame is a fresh array (never a view of a member's on_source,
    # which the first branch takes whole): it becomes the probabilities, not copied into them
    adopt = False
    if keep_probabilities and lone is not None and lone.on_source is not None and in_order:
        probabilities: np.ndarray | None = lone.on_source  # already whole: no second copy
    elif keep_probabilities and step >= frames:
        probabilities, adopt = None, True
    elif keep_probabilities:
        probabilities = np.empty((count, frames, rows, cols), np.float32)
    else:
        probabilities = None
    heat = None if keep_probabilities else np.empty((frames, rows, cols), np.float32)
    label_map = np.empty((frames, rows, cols), label_map_dtype(count))
    counts = {o.member.name: {name: 0 for name in names} for o in outcomes}
    # a lone member's single label: its count is the label map's (same threshold, weight 1)
    count_from_map = lone is not None and count == 1
    with stage("label map"):  # threshold / arg-max, counts, heat map (map back inside)
        for start in range(0, frames, step):
            stop = min(start + step, frames)
            total: np.ndarray | None = None
            for outcome in outcomes:
                member = outcome.member
                probs = outcome.value.slab(start, stop)
                order = orders[member.name]
                if order != sorted(order):  # a label_map reordered this member's labels
                    probs = probs[order]
                for i, name in enumerate(names if not count_from_map else ()):
                    counts[member.name][name] += int(
                        np.count_nonzero(probs[i] >= spec.threshold_for(name))
                    )
                if member.weight != 1.0:  # a lone member's normalised weight is 1: nothing to scale
                    probs = probs * np.float32(member.weight)
                if total is None:
                    total = probs if len(outcomes) == 1 else np.array(probs, np.float32)
                else:
                    total += probs
            assert total is not None
            threshold_labels(total, names, spec, exclusive, out=label_map[start:stop])
            if count_from_map:
                counts[members[0].name][names[0]] += int(np.count_nonzero(label_map[start:stop]))
            if adopt:
                probabilities = np.ascontiguousarray(total)
            elif probabilities is not None and not np.may_share_memory(probabilities, total):
                probabilities[:, start:stop] = total
            if heat is not None:
                np.max(total, axis=0, out=heat[start:stop])
            del total
    for outcome in outcomes:  # model-resolution outputs are not needed any more
        outcome.value.at_model = None
    return SegmentationRun(
        labels=labels,
        probabilities=probabilities,
        label_map=label_map,
        heat=heat,
        member_pixel_counts=counts,
        outcomes=outcomes,
    )
