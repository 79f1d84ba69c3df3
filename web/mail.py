"""Outgoing mail for password resets, through the SMTP server in ``settings.smtp``.

Sending is synchronous and bounded by a timeout: a reset request waits for the relay's answer, so a
misconfigured relay shows up as an error in the log rather than as a silently lost mail.
"""

from __future__ import annotations

import logging
import smtplib
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
