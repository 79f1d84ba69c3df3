"""Ensemble members: resolved models, concurrent execution per device, and their ``ModelRun``.

Members on the same device run one after the other (they would only fight over it); members on
different devices run at the same time in threads, so a cuda:0 + cpu ensemble costs about the
slower member, not the sum. PyTorch releases the GIL inside its kernels, so threads suffice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from models.card import ModelCard
from models.devices import DevicePlacement
from models.loaders import RawBox
from pipelines.augment import augmented_forward, effective_precision
from pipelines.contract import LabelSpec, ModelRun
from pipelines.errors import PipelineModelError
from pipelines.spec import MemberSpec
from pipelines.stages import stage

T = TypeVar("T")


class LoadedModelLike(Protocol):
    """``models.loaders.LoadedModel`` as the pipelines use it."""

    card: ModelCard
    placement: DevicePlacement
    sha256: str

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def detect(
        self, images: npt.NDArray[np.float32], conf: float | None = None
    ) -> list[list[RawBox]]: ...

    def anomaly_maps(
        self, images: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]: ...

    def denoise(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class ModelProvider(Protocol):
    """``models.registry.ModelRegistry`` as the pipelines use it."""

    def get(self, name: str, device: str) -> LoadedModelLike: ...


@dataclass(frozen=True)
class Member:
    task: str
    spec: MemberSpec
    weight: float  # normalised within its task
    model: LoadedModelLike

    @property
    def name(self) -> str:
        return self.spec.model

    @property
    def device(self) -> str:
        return str(self.model.placement.used)


@dataclass(frozen=True)
class MemberOutcome(Generic[T]):
    member: Member
    value: T
    seconds: float


def resolve_members(
    task: str,
    specs: Sequence[MemberSpec],
    weights: Sequence[float],
    models: ModelProvider,
    warnings: list[str] | None = None,
) -> list[Member]:
    """Load (or fetch warm) every member; a missing/broken model is a :class:`PipelineModelError`.

    A member whose model is unavailable runs its ``fallback_model`` instead when it names one;
    the substitution is appended to ``warnings`` so the report says which model really ran.
    """
    members: list[Member] = []
    for spec, weight in zip(specs, weights, strict=True):
        try:
            model = models.get(spec.model, spec.device)
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            if spec.fallback_model is None:
                raise PipelineModelError(f"{task} member {spec.model!r}: {exc}") from exc
            try:
                model = models.get(spec.fallback_model, spec.device)
            except (RuntimeError, KeyError, ValueError, OSError) as fallback_exc:
                raise PipelineModelError(
                    f"{task} member {spec.model!r}: {exc}; fallback {spec.fallback_model!r}: "
                    f"{fallback_exc}"
                ) from fallback_exc
            if warnings is not None:
                warnings.append(f"{spec.model} is not available; ran {spec.fallback_model} instead")
            spec = spec.model_copy(update={"model": spec.fallback_model})
        if model.card.task != task:
            raise PipelineModelError(
                f"{task} member {spec.model!r} is a {model.card.task} model (see its card)"
            )
        _check_own_inference(task, spec, model)
        spec, precision_warning = effective_precision(spec, str(model.placement.used))
        if precision_warning and warnings is not None:
            warnings.append(precision_warning)
        members.append(Member(task=task, spec=spec, weight=weight, model=model))
    return members


def _check_own_inference(task: str, spec: MemberSpec, model: LoadedModelLike) -> None:
    """A MONAI bundle or nnU-Net folder runs its own inferer: the node's TTA and autocast would
    not reach it, and nnU-Net already mirrors as its plans say. Refused rather than ignored."""
    own = (
        "a MONAI bundle (its own inferer)"
        if getattr(model, "bundle", None) is not None
        else "an nnU-Net model (it mirrors as its plans say)"
        if getattr(model, "nnunet", None) is not None
        else None
    )
    if own and (spec.tta != "none" or spec.precision != "fp32"):
        raise PipelineModelError(
            f"{task} member {spec.model!r} is {own}: tta and precision are not applied to it; "
            "remove them from the member"
        )


def member_forward(member: Member) -> Callable[[torch.Tensor], torch.Tensor]:
    """The member's ``forward`` with its pipeline's TTA and precision (:mod:`pipelines.augment`),
    timed as the ``inference`` stage (:mod:`pipelines.stages`)."""
    forward = augmented_forward(member.model.forward, member.spec, member.device)

    def timed(x: torch.Tensor) -> torch.Tensor:
        with stage("inference"):
            return forward(x)

    return timed


def run_per_device(
    members: Sequence[Member], work: Callable[[Member], T]
) -> list[MemberOutcome[T]]:
    """``work(member)`` for every member; one thread per device, results in member order."""
    by_device: dict[str, list[int]] = {}
    for index, member in enumerate(members):
        by_device.setdefault(member.device, []).append(index)
    outcomes: list[MemberOutcome[T] | None] = [None] * len(members)

    def run_group(indices: list[int]) -> None:
        for index in indices:
            start = time.perf_counter()
            value = work(members[index])
            outcomes[index] = MemberOutcome(members[index], value, time.perf_counter() - start)

    if len(by_device) == 1:
        run_group(next(iter(by_device.values())))
    else:
        with ThreadPoolExecutor(max_workers=len(by_device), thread_name_prefix="member") as pool:
            for future in [pool.submit(run_group, idx) for idx in by_device.values()]:
                future.result()  # re-raises a member's error here
    return [o for o in outcomes if o is not None]


def model_run(outcome: MemberOutcome[T]) -> ModelRun:
    member, card, placement = (
        outcome.member,
        outcome.member.model.card,
        outcome.member.model.placement,
    )
    return ModelRun(
        task=member.task,
        model_name=card.name,
        model_version=str(card.version),
        framework=str(card.framework),
        weight=float(member.weight),
        device_requested=member.spec.device,
        device_used=str(placement.used),
        weights_sha256=member.model.sha256,
        device_uid=str(card.device_uid),
        seconds=round(outcome.seconds, 4),
        fallback_warning=placement.warning,
    )


def label_specs(card: ModelCard) -> tuple[LabelSpec, ...]:
    """The card's labels as result :class:`LabelSpec` (sorted by value)."""
    out = []
    for label in sorted(card.labels, key=lambda lab: lab.value):
        out.append(
            LabelSpec(
                value=int(label.value),
                name=str(label.name),
                category=label.category.to_domain(),
                type=label.type.to_domain(),
                color_rgb=tuple(int(c) for c in label.color),  # type: ignore[arg-type]
                kind=label.kind,
                type_modifier=label.type_modifier.to_domain() if label.type_modifier else None,
            )
        )
    return tuple(out)


def member_order(
    task_names: Sequence[str], member: Member, member_names: Sequence[str]
) -> list[int]:
    """For each of the task's label names, the index of the member's output that carries it.

    The member's names go through its ``label_map`` first. A member whose (mapped) names are not
    exactly the task's is refused, naming both lists: averaging or fusing outputs that mean
    different things would be silently wrong.
    """
    mapping = member.spec.label_map
    unknown = sorted(set(mapping) - set(member_names))
    if unknown:
        raise PipelineModelError(
            f"label_map of {member.name} names {unknown}, which its card does not have "
            f"(its labels: {list(member_names)})"
        )
    mapped = [mapping.get(name, name) for name in member_names]
    if sorted(mapped) != sorted(task_names) or len(set(mapped)) != len(mapped):
        raise PipelineModelError(
            f"ensemble members disagree on labels: the task has {list(task_names)}, "
            f"{member.name} has {mapped}"
            + (" after its label_map" if mapping else "; map them with the member's label_map")
        )
    return [mapped.index(name) for name in task_names]


def task_orders(
    members: Sequence[Member], names_of: Callable[[Member], Sequence[str]]
) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """The task's label names (its first member's, mapped) and each member's output order."""
    first = members[0]
    first_names = [first.spec.label_map.get(n, n) for n in names_of(first)]
    orders = {m.name: member_order(first_names, m, names_of(m)) for m in members}
    return tuple(first_names), orders


def same_labels(members: Sequence[Member]) -> tuple[tuple[LabelSpec, ...], dict[str, list[int]]]:
    """The task's labels and, per member, the order that puts its outputs in the task's order."""
    names, orders = task_orders(members, lambda m: [lab.name for lab in label_specs(m.model.card)])
    first = label_specs(members[0].model.card)
    return tuple(replace(lab, name=n) for lab, n in zip(first, names, strict=True)), orders
