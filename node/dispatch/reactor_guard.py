"""Keep pynetdicom's reactor thread from swallowing the response a ``send_*`` call waits for.

Every pynetdicom association runs a reactor thread that polls the DIMSE queue for requests from
the peer. A ``send_c_store`` (and every other ``send_*``) pauses it first: it clears
``_reactor_checkpoint`` and spins until the reactor reports ``_is_paused``. The reactor, though,
sets ``_is_paused = True`` *before* it waits on the checkpoint and ``False`` after: when it has
just passed an open checkpoint and loses the GIL before the ``False``, the sender sees "paused",
sends its request and blocks on the queue, and the reactor, resumed, takes the peer's response
off the queue, logs "Received unexpected C-STORE service message" and drops it. The sender then
waits out its DIMSE timeout (30 s here) and aborts the association, and every object left in the
batch fails. pynetdicom 3.0.4 has this race; the faster the peer answers, the more often the
response is already there when the reactor polls (a fast receiver on loopback: about one
association in a few thousand stores, seen in ``tests/node/ingest/test_crash.py``).

The guard: a *response* that reaches the reactor while a ``send_*`` holds it paused is put back
at the head of the queue, where the waiting sender's ``get_msg`` finds it. A response with no
``send_*`` waiting is still dropped as before, and requests are served as before.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.association import Association

log = logging.getLogger(__name__)

_ORIGINAL = Association._serve_request


def _serve_request_keeping_responses(self: Association, msg: Any, context_id: int) -> None:
    """``Association._serve_request``, except that a response the reactor took while a
    ``send_*`` call waits for it goes back to that call."""
    waiting_sender = not self._reactor_checkpoint.is_set()
    if waiting_sender and not msg.is_valid_request:
        queue = self.dimse.msg_queue
        with queue.mutex:  # the head, so a multi-response service keeps its order
            queue.queue.appendleft((context_id, msg))
            queue.unfinished_tasks += 1
            queue.not_empty.notify()
        log.debug("returned a %s the reactor took to the waiting sender", msg.msg_type)
        return
    _ORIGINAL(self, msg, context_id)


def install() -> None:
    """Patch ``Association`` once per process (idempotent); every association gets the guard."""
    Association._serve_request = _serve_request_keeping_responses  # type: ignore[method-assign]
