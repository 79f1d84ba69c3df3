"""One model registry per worker process: cards read once, each (model, device) loaded once, kept warm.

Loading a network (and its SHA-256 check) costs far more than an inference on a small study, so a
worker keeps every model it has used in memory; a thread lock makes the first concurrent request
load it once instead of twice.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from models.card import ModelCard, ModelLoadError, scan_cards
from models.devices import configure_torch_threads, resolve_device
from models.loaders import LoadedModel, load_model

log = logging.getLogger(__name__)


class ModelRegistry:
    """Cards under ``models_dir`` and a cache of loaded models keyed by (name, device used)."""

    def __init__(self, models_dir: Path, torch_threads: int = 0) -> None:
        self.models_dir = Path(models_dir)
        configure_torch_threads(torch_threads)
        self._cards, self.card_errors = scan_cards(self.models_dir)
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    @property
    def cards(self) -> dict[str, ModelCard]:
        return dict(self._cards)

    def card(self, name: str) -> ModelCard:
        """The card called ``name``; :class:`ModelLoadError` says which cards exist otherwise."""
        try:
            return self._cards[name]
        except KeyError:
            known = ", ".join(sorted(self._cards)) or "none"
            refused = [p.name for p, msg in self.card_errors.items() if f"{name}" in msg]
            hint = f"; refused card(s) mentioning it: {refused}" if refused else ""
            raise ModelLoadError(
                f"no model card named {name!r} in {self.models_dir} (known: {known}){hint}"
            ) from None

    def get(self, name: str, device: str) -> LoadedModel:
        """The loaded model, loading it on first use; the cache key is the device really used."""
        card = self.card(name)
        placement = resolve_device(device)
        key = (name, placement.used)
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                model = load_model(card, device)
                self._loaded[key] = model
                log.info(
                    "loaded model %s on %s (sha256 %s)",
                    name,
                    model.placement.used,
                    model.sha256[:12],
                )
        if model.placement.requested != device:
            # same network, different request (e.g. cuda:1 -> cpu): report this request's fallback
            return LoadedModel(
                model.card,
                placement,
                model.sha256,
                network=model.network,
                detector=model._detector,
                outputs_probabilities=model._outputs_probabilities,
                anomaly=model._anomaly,
            )
        return model

    def loaded(self) -> list[LoadedModel]:
        """Models currently warm in this process (for the console / health)."""
        with self._lock:
            return list(self._loaded.values())
