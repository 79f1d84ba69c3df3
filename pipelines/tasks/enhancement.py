"""Denoising ensembles: every frame through every member, in the source's units, at native size.

A member sees each frame mapped to the unit range that frame's own values define
(:func:`models.enhance.to_unit`) and its output is mapped back with the same range, so the
denoised series keeps the source's units (HU stay HU) and geometry (nothing is resized). Members
are combined by their normalised weights. Colour sources are refused: denoising acts on the
values, and a colour image's luminance has no units to preserve.
"""

from __future__ import annotations

import numpy as np

from models.enhance import from_unit, noise_sigma, to_unit, unit_range
from pipelines.contract import EnhancementOutput
from pipelines.errors import PipelineInputError
from pipelines.members import Member, MemberOutcome, run_per_device
from pipelines.preprocess.decode import DecodedSeries
from pipelines.spec import EnhancementTask


def member_denoise(member: Member, values: np.ndarray, batch_size: int) -> np.ndarray:
    """(frames, rows, cols) source values -> denoised, same shape and units, float32."""
    out = np.empty(values.shape, np.float32)
    ranges = [unit_range(frame) for frame in values]
    for start in range(0, len(values), batch_size):
        stop = min(start + batch_size, len(values))
        batch = np.stack([to_unit(values[i], *ranges[i]) for i in range(start, stop)])
        denoised = member.model.denoise(batch)
        for i in range(start, stop):
            out[i] = from_unit(denoised[i - start], *ranges[i])
    return out


def run_enhancement(
    task: EnhancementTask, members: list[Member], series: DecodedSeries
) -> tuple[EnhancementOutput, list[MemberOutcome[np.ndarray]]]:
    if series.is_color:
        raise PipelineInputError(
            f"series {series.series_instance_uid}: enhancement denoises greyscale values; "
            "colour images are not supported"
        )
    values = np.asarray(series.values, np.float32)
    outcomes = run_per_device(members, lambda m: member_denoise(m, values, task.batch_size))
    image = np.zeros(values.shape, np.float32)
    for outcome in outcomes:
        image += np.float32(outcome.member.weight) * outcome.value
    output = EnhancementOutput(
        image=image,
        sigma_before=max(noise_sigma(frame) for frame in values),
        sigma_after=max(noise_sigma(frame) for frame in image),
        members=tuple(o.member.name for o in outcomes),
        series_description=task.series_description,
    )
    return output, outcomes
