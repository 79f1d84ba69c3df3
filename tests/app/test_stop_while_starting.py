"""A stop signal that arrives while ``pacsnode serve`` is still starting stops it: the stages not
yet started are skipped and the web console is never served (before the fix the node finished
starting and ran until a second signal)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app import runtime
from app import serve as serve_command
from core.config import Settings


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.timeout(60)
def test_sigterm_during_start_stops_serve(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, own_signal_handlers: None
) -> None:
    real_start_receiver = runtime.start_receiver
    spawned: list[str] = []
    real_spawn = runtime.Node._spawn

    def start_receiver_then_sigterm(*args: Any, **kwargs: Any) -> Any:
        handle = real_start_receiver(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the operator stops the node mid-start
        return handle

    def recording_spawn(self: runtime.Node, name: str, target: Any) -> None:
        spawned.append(name)
        real_spawn(self, name, target)

    monkeypatch.setattr(runtime, "start_receiver", start_receiver_then_sigterm)
    monkeypatch.setattr(runtime.Node, "_spawn", recording_spawn)
    started = time.monotonic()
    assert serve_command.serve(settings, argparse.Namespace()) == 0
    assert time.monotonic() - started < 30
    assert spawned == [], f"stages started after the stop signal: {spawned}"
    with pytest.raises(OSError):  # the console was never served
        socket.create_connection(("127.0.0.1", settings.web_port), timeout=1).close()
