"""Outgoing mail for password resets, through the SMTP server in ``settings.smtp``.

Mail leaves through :class:`MailOutbox`, a worker thread, never inside the request: how long the
relay takes (and whether there was anything to send at all) must not show in the response time, or
"forgot password" would tell an attacker which accounts exist. A failing relay is logged and
audited by the job itself.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

from core.config import SMTPSettings

log = logging.getLogger("pacsnode.web.mail")


class MailError(RuntimeError):
    """The relay refused or could not be reached."""


def send_mail(
    smtp: SMTPSettings, to: str, subject: str, body: str, timeout_s: float = 15.0
) -> None:
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s) as client:
            if smtp.starttls:
                client.starttls()
            if smtp.username:
                client.login(smtp.username, smtp.password)
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"cannot send mail through {smtp.host}:{smtp.port}: {exc}") from exc


def reset_mail_body(username: str, link: str, ttl_minutes: float) -> str:
    return (
        f"Hello {username},\n\n"
        f"A password reset was requested for your pacsnode console account.\n"
        f"Open this link within {ttl_minutes:g} minutes to choose a new password:\n\n"
        f"{link}\n\n"
        f"The link works once. If you did not ask for it, ignore this mail.\n"
    )


class MailOutbox:
    """A bounded queue of mail jobs run one at a time off the request path.

    Bounded so that a flood of requests cannot pile up unbounded work: beyond ``max_pending`` a job
    is dropped and logged (the forms are throttled per address long before that).
    """

    def __init__(self, max_pending: int = 100) -> None:
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False when the outbox is full and the job was dropped."""
        with self._lock:
            if self._pending >= self.max_pending:
                log.error("mail outbox full (%d pending): a mail job was dropped", self._pending)
                return False
            self._pending += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="pacsnode-mail")
            executor = self._executor
        executor.submit(self._run, job)
        return True

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # the worker must survive one bad job; the job reports its own errors
            log.exception("mail job failed")
        finally:
            with self._lock:
                self._pending -= 1

    def drain(self) -> None:
        """Wait for every queued job (tests, shutdown) and stop the worker thread."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
