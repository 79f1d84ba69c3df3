"""Database classes (SQLAlchemy 2.0 typed ORM): every piece of node state lives in these tables.

Files under the data directory hold DICOM blobs only; what was received, what is due, what was
sent and who approved it is here, so any process (receiver, worker, dispatcher, web) can pick up
where another stopped. Schema changes go through Alembic (``node/db/migrations``); a test checks
that the migrations and these classes agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use node.db.orm.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Study(Base):
    __tablename__ = "studies"
    # Numbers are never reused (AUTOINCREMENT on SQLite; PostgreSQL's sequences never reuse
    # one). SQLite would number a new row one past the highest left: after the newest study was
    # deleted, the next patient's study, job, result and delivery took its numbers, and a review
    # page still open on the deleted job approved the next patient's (migration 0009).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    modalities: Mapped[str] = mapped_column(String(64), default="")  # e.g. "CT\\SEG"
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    completion_reason: Mapped[str] = mapped_column(String(64), default="")
    # how the study ended, for people: "no pipeline matches (modality NM)", "1 of 2 jobs failed"
    outcome: Mapped[str] = mapped_column(String(255), default="")
    # set by "force complete" (CLI, API, Orthanc hook); the completion sweep acts on it and clears it
    complete_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result_version: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    source: Mapped[str] = mapped_column(String(16), default="dicom")
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)

    series: Mapped[list[Series]] = relationship(
        back_populates="study", cascade="all, delete-orphan"
    )
    jobs: Mapped[list[Job]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, default=None)
    series_description: Mapped[str] = mapped_column(String(256), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(
        back_populates="series", cascade="all, delete-orphan"
    )


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer, default=None)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    image_type: Mapped[str] = mapped_column(String(128), default="")
    path: Mapped[str] = mapped_column(String(512))  # relative to data_dir
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    source: Mapped[str] = mapped_column(String(16), default="dicom")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class UnsyncedFile(Base):
    """The bytes of a small received instance whose file is not yet synced to disk.

    Committed in the transaction that records the instance, so one database commit makes both
    durable (one device flush per commit group instead of a file flush, a directory flush and a
    commit flush per instance); the file itself is synced in bulk later and this row deleted
    (``node.ingest.write_ahead``). After a crash, a file that lost its bytes is written again
    from here. Deleting the instance deletes the row (a deleted study is never brought back).
    """

    __tablename__ = "unsynced_files"
    # Never reuse a number: the bulk sync deletes the rows up to the highest it saw before it
    # synced, and SQLite would give a row committed later the number of a deleted newest one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)  # commit order: what a bulk sync covered
    sop_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("instances.sop_instance_uid", ondelete="CASCADE"), unique=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)  # the whole file, as written
    # whose page cache holds the file (``spool.temp_owner``: host and boot): only a bulk sync on
    # that host covers it
    writer: Mapped[str] = mapped_column(String(64), default="")


class Job(Base):
    """One run of one pipeline over one study (per result version)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_pk", "pipeline_name", "result_version"),
        {"sqlite_autoincrement": True},  # see Study
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    pipeline_name: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(32), default="")
    result_version: Mapped[int] = mapped_column(Integer, default=1)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    review_state: Mapped[str] = mapped_column(String(16), default="not_required", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    duration_s: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    log: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict
    )  # classes, severity, devices

    study: Mapped[Study] = relationship(back_populates="jobs")
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", cascade="all, delete-orphan"
    )


class Artifact(Base):
    """A DICOM object (or export file) a job produced; kept on disk under the data directory."""

    __tablename__ = "artifacts"
    __table_args__ = {"sqlite_autoincrement": True}  # see Study

    id: Mapped[int] = mapped_column(primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, default="")
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    validated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="artifact", cascade="all, delete-orphan"
    )


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("artifact_pk", "destination_name"),
        {"sqlite_autoincrement": True},  # see Study
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_pk: Mapped[int] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), index=True
    )
    destination_name: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # when last_error was written: the destinations page's health column ("last error at")
    last_error_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    # jobs.engine celery: when the leader's outbox last published this delivery's destination;
    # None while not yet published for its current attempt (every move to PENDING clears it)
    published_at: Mapped[datetime | None] = mapped_column(default=None)

    artifact: Mapped[Artifact] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """Every state transition and every user action, append-only."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_entity", "entity_type", "entity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), default="system")
    action: Mapped[str] = mapped_column(String(64), index=True)
    entity_type: Mapped[str] = mapped_column(String(32), default="")
    entity_id: Mapped[str] = mapped_column(String(128), default="")
    from_state: Mapped[str] = mapped_column(String(32), default="")
    to_state: Mapped[str] = mapped_column(String(32), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    __tablename__ = "users"
    # never reused (see Study): a stale admin page's "make admin" or "reset link" for a deleted
    # account acted on the next account created
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(255), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class PasswordResetToken(Base):
    __tablename__ = "password_reset_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A console session: the browser's cookie holds only a random id whose SHA-256 is this row's
    key, so logging out, or an admin disabling the account, ends the session by deleting the row.
    ``data`` holds what a page must carry to the next one (flash messages, a secret shown once)."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_pk: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None, index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuthThrottle(Base):
    """Failed authentication attempts per key (an account name, a client address): shared by every
    web process, so guessing cannot be spread across processes or survive a restart."""

    __tablename__ = "auth_throttle"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    user_pk: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected | comment
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User | None] = relationship()  # who decided (None once the account is deleted)


class ConfigOverride(Base):
    """Admin edits made in the console over the YAML: destinations (switches, whole definitions,
    deletions), routing rules, the AE allowlist, pipelines (devices, weights, review gate)."""

    __tablename__ = "config_overrides"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="")


class ModelStatus(Base):
    """The latest load status of each model as a worker reported it (start-up check, first load),
    so the console and ``pacsnode models list`` in other processes can show it."""

    __tablename__ = "model_status"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # core.domain.ModelLoadState
    device: Mapped[str] = mapped_column(String(32), default="")
    worker: Mapped[str] = mapped_column(String(128), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrthancPull(Base):
    """A study an Orthanc announced (hook or ``/changes``) that the node must pull; the durable
    acknowledgement of the hook, deleted once the study's instances are persisted."""

    __tablename__ = "orthanc_pulls"
    __table_args__ = (UniqueConstraint("source_url", "orthanc_study_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_url: Mapped[str] = mapped_column(String(255))
    orthanc_study_id: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SourceCursor(Base):
    """Where polling of an external source (Orthanc ``/changes``) last stopped."""

    __tablename__ = "source_cursors"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerProcess(Base):
    """A running worker or delivery consumer, as its own heartbeat last wrote it: which queues it
    consumes and which devices it has, so health can say "queue gpu has no worker" and the
    console offers only devices some live worker has. A row whose ``last_seen_at`` is older than
    ``jobs.stale_after_s`` is a process that died (a clean stop deletes its row)."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(160), unique=True)  # w1@hostA, host:pid:worker
    host: Mapped[str] = mapped_column(String(128), default="")
    engine: Mapped[str] = mapped_column(String(16), default="local")
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)  # "*": every pipeline's queue
    devices: Mapped[list[str]] = mapped_column(JSON, default=list)  # cpu, cuda:N, mps
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
