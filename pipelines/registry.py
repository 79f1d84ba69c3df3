"""The worker's entry point: every configured pipeline by name, sharing one warm model registry.

Created once per worker process. Definitions are read at start-up (a bad one stops start-up with
a :class:`ConfigError` naming file and key). The model registry is handed in by the runtime
(``app``): pipelines only know the :class:`ModelProvider` protocol, never ``models.registry``;
its models load on first use and stay warm.
Admin overrides from the console are applied with :meth:`PipelineRegistry.apply_overrides`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from core.config import ConfigError, Settings
from pipelines.checks import pipeline_problems
from pipelines.errors import PipelineInputError
from pipelines.members import ModelProvider
from pipelines.pipeline import Pipeline
from pipelines.spec import PipelineConfig, apply_overrides, load_pipeline_configs

__all__ = ["Pipeline", "PipelineInputError", "PipelineRegistry", "pipeline_problems"]

log = logging.getLogger(__name__)


class PipelineRegistry:
    def __init__(
        self,
        settings: Settings,
        models: ModelProvider,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self._lock = threading.Lock()
        self._base = load_pipeline_configs(settings.pipelines_dir)
        self._configs: dict[str, PipelineConfig] = dict(self._base)
        self._pipelines: dict[str, Pipeline] = {}
        for name, value in (overrides or {}).items():
            self.apply_overrides(name, value)

    def check(self, model_errors: Mapping[str, str]) -> dict[str, str]:
        """Log one warning per pipeline that cannot run (see :func:`pipeline_problems`); the
        others serve. Returns the problems by pipeline name."""
        problems = pipeline_problems(self.configs(), model_errors)
        for name, reason in problems.items():
            log.warning("pipeline %s cannot run: %s", name, reason)
        return problems

    def names(self) -> list[str]:
        return sorted(self._configs)

    def configs(self) -> dict[str, PipelineConfig]:
        return dict(self._configs)

    def get(self, name: str) -> Pipeline:
        """The pipeline called ``name``; KeyError lists the known ones."""
        if name not in self._configs:
            raise KeyError(
                f"no pipeline named {name!r} (known: {', '.join(self.names()) or 'none'})"
            )
        with self._lock:
            pipeline = self._pipelines.get(name)
            if pipeline is None or pipeline.config is not self._configs[name]:
                pipeline = Pipeline(self._configs[name], self.models)
                self._pipelines[name] = pipeline
            return pipeline

    def apply_overrides(self, name: str, overrides: Mapping[str, object]) -> PipelineConfig:
        """Replace ``name``'s config by its YAML definition with ``overrides`` applied."""
        if name not in self._base:
            raise ConfigError(f"override for unknown pipeline {name!r}")
        cfg = apply_overrides(self._base[name], overrides)
        with self._lock:
            self._configs[name] = cfg
        return cfg
