"""One model registry per worker process: cards read once, each (model, device) loaded once, kept warm.

Loading a network (and its SHA-256 check) costs far more than an inference on a small study, so a
worker keeps every model it has used in memory; a thread lock makes the first concurrent request
load it once instead of twice.

The registry also knows each model's load status (not loaded yet / loaded / failed, with the last
error). :meth:`ModelRegistry.check` verifies every card's weights at start-up and logs one warning
per broken card, so a broken drop-in is seen when the node starts, not at the first study that
needs it, while the good models serve. Each change is handed to ``on_status`` (the runtime stores
it in the database for the console and ``pacsnode models list``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.domain import ModelLoadState
from models.card import ModelCard, ModelLoadError, refused_card_name, scan_cards
from models.devices import configure_torch_threads, resolve_device
from models.loaders import LoadedModel, load_model, verify_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    """One model's load status; ``error`` is the reason it failed (empty otherwise)."""

    name: str
    state: ModelLoadState
    device: str = ""
    error: str = ""


class ModelRegistry:
    """Cards under ``models_dir`` and a cache of loaded models keyed by (name, device used)."""

    def __init__(
        self,
        models_dir: Path,
        torch_threads: int = 0,
        on_status: Callable[[ModelStatus], None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        configure_torch_threads(torch_threads)
        self._cards, self.card_errors = scan_cards(self.models_dir)  # warns once per refused card
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()
        self._on_status = on_status
        self._status: dict[str, ModelStatus] = {
            name: ModelStatus(name, ModelLoadState.NOT_LOADED) for name in self._cards
        }
        for path, message in self.card_errors.items():
            name = refused_card_name(path)
            self._status[name] = ModelStatus(name, ModelLoadState.FAILED, error=message)

    def statuses(self) -> dict[str, ModelStatus]:
        """Every model's load status by name, refused cards included."""
        with self._lock:
            return dict(self._status)

    def check(self) -> dict[str, ModelStatus]:
        """Verify every card's weights (present, SHA-256 as the card says) without loading them;
        log one warning per broken card (refused cards were warned about when read) and report
        every model's status to ``on_status``. Returns the statuses."""
        for name, card in sorted(self._cards.items()):
            try:
                verify_weights(card)
            except ModelLoadError as exc:
                log.warning("model %s is unusable: %s", name, exc)
                self._set(ModelStatus(name, ModelLoadState.FAILED, error=str(exc)))
            else:
                self._set(ModelStatus(name, ModelLoadState.NOT_LOADED))
        for status in self.statuses().values():
            if status.name not in self._cards:  # a refused card
                self._report(status)
        return self.statuses()

    def _set(self, status: ModelStatus) -> None:
        with self._lock:
            self._status[status.name] = status
        self._report(status)

    def _report(self, status: ModelStatus) -> None:
        if self._on_status is None:
            return
        try:
            self._on_status(status)
        except Exception:  # noqa: BLE001 - a status that cannot be stored never stops a model
            log.warning("could not record the status of model %s", status.name, exc_info=True)

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
        failure: Exception | None = None
        fresh: ModelStatus | None = None
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                try:
                    model = load_model(card, device)
                except Exception as exc:  # noqa: BLE001 - recorded, then raised again below
                    failure = exc
                    fresh = ModelStatus(name, ModelLoadState.FAILED, placement.used, str(exc))
                    self._status[name] = fresh
                else:
                    self._loaded[key] = model
                    fresh = ModelStatus(name, ModelLoadState.LOADED, model.placement.used)
                    self._status[name] = fresh
                    log.info(
                        "loaded model %s on %s (sha256 %s)",
                        name,
                        model.placement.used,
                        model.sha256[:12],
                    )
        if fresh is not None:
            self._report(fresh)  # outside the lock: it may write to the database
        if failure is not None:
            raise failure
        assert model is not None
        if model.placement.requested != device:
            # same network, different request (e.g. cuda:1 -> cpu): report this request's fallback
            return LoadedModel(
                model.card,
                placement,
                model.sha256,
                network=model.network,
                detector=model._detector,
                outputs_probabilities=model._outputs_probabilities,
                nnunet=model.nnunet,
                bundle=model.bundle,
                anomaly=model._anomaly,
                denoiser=model._denoiser,
            )
        return model

    def loaded(self) -> list[LoadedModel]:
        """Models currently warm in this process (for the console / health)."""
        with self._lock:
            return list(self._loaded.values())
