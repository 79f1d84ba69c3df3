"""A member's forward pass as its pipeline asks for it: flip test-time augmentation, half precision.

Both are per member (``tta``, ``flip_axes``, ``precision`` in the pipeline YAML) because they are
properties of how a given model behaves best, not of the task. Flip TTA follows nnU-Net's mirroring:
the input is mirrored along every combination of the chosen spatial axes, each output mirrored
back, and the probabilities averaged — per batch or sliding-window patch, so a 3D member's memory
does not grow. Half precision is PyTorch autocast on the member's device: fp16 on CUDA, bf16 on
CUDA or the CPU; a precision the device cannot run falls back to fp32 with a warning in the result
(see :func:`effective_precision`), so a pipeline written for a GPU node still runs on a CPU one.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence

import torch

from pipelines.errors import PipelineModelError
from pipelines.spec import MemberSpec

# which autocast dtypes each device type runs here (fp16 autocast on the CPU is slow and lossy
# where it runs at all; MPS autocast is untested on this project's hardware)
_HALF_ON = {"cuda": {"fp16", "bf16"}, "cpu": {"bf16"}}
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def effective_precision(spec: MemberSpec, device: str) -> tuple[MemberSpec, str | None]:
    """``spec`` with the precision ``device`` can run, and a warning when it had to change."""
    kind = torch.device(device).type
    if spec.precision == "fp32" or spec.precision in _HALF_ON.get(kind, set()):
        return spec, None
    warning = (
        f"{spec.model}: precision {spec.precision} needs "
        f"{'CUDA' if spec.precision == 'fp16' else 'CUDA or the CPU'}; ran in fp32 on {device}"
    )
    return spec.model_copy(update={"precision": "fp32"}), warning


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    """Mixed precision on ``device`` for ``fp16``/``bf16``; nothing for ``fp32``."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision]):
        yield


def flip_sets(axes: Sequence[int], spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of ``axes`` (all spatial axes when empty), the identity first."""
    chosen = tuple(axes) or tuple(range(spatial_dims))
    if any(a >= spatial_dims for a in chosen):
        raise PipelineModelError(
            f"flip_axes {list(chosen)} name an axis the {spatial_dims}D network input lacks"
        )
    return [
        combo for size in range(len(chosen) + 1) for combo in itertools.combinations(chosen, size)
    ]


def augmented_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], spec: MemberSpec, device: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` (N, C, *spatial) → probabilities, with ``spec``'s TTA and precision.

    Outputs with the input's spatial shape (segmentation) are mirrored back before averaging;
    per-image outputs (classification) are averaged as they come.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(spec.precision, device):
            if spec.tta == "none":
                return forward(x)
            total: torch.Tensor | None = None
            combos = flip_sets(spec.flip_axes, x.ndim - 2)
            for combo in combos:
                dims = [2 + a for a in combo]
                out = forward(torch.flip(x, dims) if dims else x).float()
                if dims and out.ndim == x.ndim:
                    out = torch.flip(out, dims)
                total = out if total is None else total.add_(out)
            assert total is not None
            return total.div_(len(combos))

    return run
