"""Errors a pipeline raises; the worker maps each to a job outcome."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """Base class: a pipeline could not produce a result."""


class PipelineInputError(PipelineError):
    """No series of the study fits the pipeline, or its pixels cannot be used (bad input).

    Retrying does not help; the worker fails the job with this message and keeps the study.
    """


class PipelineModelError(PipelineError):
    """A model listed in the pipeline is missing, mis-configured or failed to load/run."""
