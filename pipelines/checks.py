"""Whether each pipeline definition can run with the models the node has (no model is loaded).

Used by the worker at start-up (one warning per broken pipeline) and by the console's health,
which must not import PyTorch: this module needs only the definitions.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.spec import PipelineConfig


def pipeline_problems(
    configs: Mapping[str, PipelineConfig], model_errors: Mapping[str, str]
) -> dict[str, str]:
    """Why each pipeline cannot run, by name (pipelines that can are left out).

    ``model_errors`` maps every model the node has to its error ("" when usable); a member naming
    a model not in it is unknown. Disabled pipelines are not checked: they never run.
    """
    problems: dict[str, str] = {}
    for name, cfg in sorted(configs.items()):
        if not cfg.enabled:
            continue
        reasons = []
        for task_name, member in cfg.tasks.members():
            if member.model not in model_errors:
                reasons.append(f"{task_name} member {member.model!r}: no such model card")
            elif model_errors[member.model]:
                reasons.append(f"{task_name} member {member.model!r} is unusable")
        if reasons:
            problems[name] = "; ".join(reasons)
    return problems
