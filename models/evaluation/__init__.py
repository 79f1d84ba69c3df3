"""Scoring of models and ensembles (``pacsnode evaluate``)."""
