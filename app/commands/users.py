"""``pacsnode user create``, ``reset-link`` and ``unlock``: account care without the console.

Passwords are generated (never chosen on a command line, where they would land in shell history)
and printed once; the reset link is for nodes without SMTP.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from core.config import Settings
from core.domain import Role
from node.db.engine import Database
from node.db.repositories import audit, throttle
from node.db.repositories import users as user_repo
from web.routes.auth import public_base_url, reset_link
from web.security import generate_password, generate_token, hash_password


def _database(settings: Settings) -> Database:
    db = Database(settings.effective_database_url)
    db.migrate()
    return db


def create_user_command(settings: Settings, args: argparse.Namespace) -> int:
    """Create a console user and print its generated password once; exit 1 if the name is taken."""
    role = Role.ADMIN if getattr(args, "admin", False) else Role(getattr(args, "role", "viewer"))
    password = generate_password()
    db = _database(settings)
    try:
        with db.write() as session:
            user_repo.create_user(
                session,
                args.username,
                hash_password(password),
                role=role,
                email=getattr(args, "email", "") or "",
            )
            audit.record(
                session,
                "user.create",
                entity_type="user",
                entity_id=args.username,
                actor="cli",
                to_state=role.value,
            )
    except ValueError as exc:
        print(f"pacsnode: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(f"created {role.value} user {args.username!r}")
    print(f"password (shown once): {password}")
    return 0


def reset_link_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print a single-use, time-limited password reset link for a user."""
    db = _database(settings)
    token = generate_token()
    ttl = timedelta(seconds=settings.web.reset_token_ttl_s)
    try:
        with db.write() as session:
            user = user_repo.get_by_username(session, args.username)
            if user is None:
                print(f"pacsnode: no user {args.username!r}", file=sys.stderr)
                return 1
            user_repo.create_reset_token(session, user, token, ttl)
            audit.record(
                session,
                "auth.reset_link_issued",
                entity_type="user",
                entity_id=user.username,
                actor="cli",
            )
    finally:
        db.dispose()
    base = public_base_url(settings)
    print(f"reset link for {args.username!r} (single use, valid {ttl.total_seconds() / 60:g} min):")
    print(reset_link(base, token))
    return 0


def unlock_command(settings: Settings, args: argparse.Namespace) -> int:
    """Forget a user's failed logins, so the next attempt is checked without delay."""
    db = _database(settings)
    try:
        with db.write() as session:
            user = user_repo.get_by_username(session, args.username)
            if user is None:
                print(f"pacsnode: no user {args.username!r}", file=sys.stderr)
                return 1
            cleared = throttle.clear(session, throttle.account_key(user.username))
            audit.record(
                session, "auth.unlock", entity_type="user", entity_id=user.username, actor="cli"
            )
    finally:
        db.dispose()
    print(f"unlocked {args.username!r}" + ("" if cleared else " (it had no failed logins)"))
    return 0
