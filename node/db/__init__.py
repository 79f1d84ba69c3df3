"""Persistence: engine and sessions, the ORM classes, repositories (all queries), migrations."""
