"""Console users, API tokens and password-reset tokens: every query the web layer needs about people.

Secrets never reach the database in clear: passwords are argon2 hashes made by the caller
(``web.security``), tokens are stored as SHA-256 digests so a leaked database cannot be replayed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.domain import Role
from node.db.orm import ApiToken, PasswordResetToken, Review, User, WebSession, utcnow


class UserExistsError(ValueError):
    """A username is already taken (usernames are unique, case-insensitively)."""


def token_digest(token: str) -> str:
    """What is stored for a bearer or reset token: its SHA-256 (tokens are long random strings)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def count_users(session: Session) -> int:
    return int(session.scalar(select(func.count(User.id))) or 0)


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def get_by_username(session: Session, username: str) -> User | None:
    return session.scalars(
        select(User).where(func.lower(User.username) == username.strip().lower())
    ).first()


def get_by_email(session: Session, email: str) -> User | None:
    if not email.strip():
        return None
    return session.scalars(
        select(User).where(func.lower(User.email) == email.strip().lower())
    ).first()


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.username)).all()


def create_user(
    session: Session, username: str, password_hash: str, *, role: Role | str, email: str = ""
) -> User:
    username = username.strip()
    if not username or len(username) > 64 or not username.isprintable():
        raise ValueError("username must be 1-64 printable characters")
    if get_by_username(session, username) is not None:
        raise UserExistsError(f"user {username!r} already exists")
    user = User(
        username=username, email=email.strip(), password_hash=password_hash, role=Role(role).value
    )
    session.add(user)
    session.flush()
    return user


def record_login(session: Session, user: User, now: datetime) -> None:
    user.last_login_at = now


def end_sessions(session: Session, user_pk: int) -> int:
    """End every console session of a user at once (password, role or status changed)."""
    result = session.execute(delete(WebSession).where(WebSession.user_pk == user_pk))
    return int(result.rowcount)  # type: ignore[attr-defined]


def set_password(session: Session, user: User, password_hash: str) -> None:
    """The one way a password changes: every reset link still out and every session end with the
    old password, so whoever held either loses it now."""
    user.password_hash = password_hash
    revoke_reset_tokens(session, user.id)
    end_sessions(session, user.id)


# -- password reset ---------------------------------------------------------------------------


def revoke_reset_tokens(session: Session, user_pk: int) -> int:
    """Drop the user's unused reset links (a newer link or a password change supersedes them)."""
    result = session.execute(
        delete(PasswordResetToken).where(
            PasswordResetToken.user_pk == user_pk, PasswordResetToken.used_at.is_(None)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def create_reset_token(
    session: Session, user: User, token: str, ttl: timedelta
) -> PasswordResetToken:
    """A new reset link for ``user``; any older unused link stops working."""
    revoke_reset_tokens(session, user.id)
    row = PasswordResetToken(
        user_pk=user.id, token_hash=token_digest(token), expires_at=utcnow() + ttl
    )
    session.add(row)
    session.flush()
    return row


def find_valid_reset_token(
    session: Session, token: str, now: datetime
) -> PasswordResetToken | None:
    """The unused, unexpired reset token row for ``token``, else None."""
    row = session.scalars(
        select(PasswordResetToken).where(PasswordResetToken.token_hash == token_digest(token))
    ).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        return None
    return row


def consume_reset_token(session: Session, row: PasswordResetToken, now: datetime) -> None:
    row.used_at = now


# -- API tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenOwner:
    token: ApiToken
    user: User


def create_api_token(
    session: Session, user: User, name: str, token: str, scopes: Sequence[str]
) -> ApiToken:
    row = ApiToken(
        user_pk=user.id, name=name[:64], token_hash=token_digest(token), scopes=list(scopes)
    )
    session.add(row)
    session.flush()
    return row


def find_api_token(session: Session, token: str) -> TokenOwner | None:
    """The live token and its active owner, or None (revoked, unknown, owner disabled)."""
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == token_digest(token))
    ).first()
    if row is None or row.revoked:
        return None
    user = session.get(User, row.user_pk)
    if user is None or not user.active:
        return None
    return TokenOwner(row, user)


def list_api_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()


def revoke_api_token(session: Session, token_id: int) -> ApiToken | None:
    row = session.get(ApiToken, token_id)
    if row is not None:
        row.revoked = True
    return row


# -- per-user figures for the dashboard -------------------------------------------------------


@dataclass(frozen=True)
class UserActivity:
    username: str
    role: str
    active: bool
    reviews: int
    last_login_at: datetime | None
    created_at: datetime


def user_activity(session: Session) -> list[UserActivity]:
    review_counts = dict(
        session.execute(
            select(Review.user_pk, func.count(Review.id)).group_by(Review.user_pk)
        ).all()
    )
    return [
        UserActivity(
            username=u.username,
            role=u.role,
            active=u.active,
            reviews=int(review_counts.get(u.id, 0)),
            last_login_at=u.last_login_at,
            created_at=u.created_at,
        )
        for u in list_users(session)
    ]
