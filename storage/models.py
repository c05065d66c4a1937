"""The schema: one file, typed SQLAlchemy 2 declarative models.

Every table is prefixed `bitsearch_`: Optuna's RDBStorage lives in the same database (the `optuna`
solver persists its study there) and owns un-prefixed names such as `studies` and `trials`.

Configs, specs and metrics are stored as versioned JSON, never pickled, so that any later version
(or another tool) can read them. Timestamps are timezone-aware UTC on every backend.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

PREFIX = "bitsearch_"
VERSION_TABLE = "bitsearch_alembic_version"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out. SQLite has no time zones, so UTC is stored naive there and
    made aware again on read; comparisons (lease expiry) then work on both backends."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; pass an aware one (datetime.now(timezone.utc))")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # PostgreSQL answers in the session's time zone; hand out plain UTC everywhere
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class StudyState(str, enum.Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


class CandidateState(str, enum.Enum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    INVALID = "INVALID"

    @property
    def is_final(self) -> bool:
        return self in (CandidateState.COMPLETE, CandidateState.FAILED, CandidateState.INVALID)


def _in(column: str, values: type[enum.Enum]) -> str:
    # Check constraints instead of native enums: adding a value later is a one-line migration on
    # both backends, with no ALTER TYPE on PostgreSQL.
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Study(Base):
    __tablename__ = PREFIX + "studies"
    __table_args__ = (CheckConstraint(_in("state", StudyState), name="ck_study_state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[dict[str, Any]]
    spec_version: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default=StudyState.CREATED.value)
    # why the study is FAILED (the exception that stopped it in the background), else NULL
    reason: Mapped[str | None] = mapped_column(Text)
    # the process that runs the study (an API server: "api:host:pid:uuid") and its last heartbeat,
    # so a restarted server can tell a study whose runner died from one that is still being run
    owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    candidates: Mapped[list[Candidate]] = relationship(back_populates="study", passive_deletes=True)


class LayerRow(Base):
    """The layer inventory of the study's model (quant.layers.Layer), in module order."""

    __tablename__ = PREFIX + "layers"
    __table_args__ = (UniqueConstraint("study_id", "fqn", name="uq_layer_fqn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(Study.id, ondelete="CASCADE"), index=True)
    position: Mapped[int]
    fqn: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(32))
    weight_shape: Mapped[list[int]] = mapped_column(JSON)
    params: Mapped[int] = mapped_column(BigInteger)
    macs: Mapped[int] = mapped_column(BigInteger)


class ScoreSet(Base):
    """One estimator's scores of one metric (quant.scores.Scores), with the timestep groups they
    were estimated for and the estimator's parameters (what the sensitivity cache is keyed by)."""

    __tablename__ = PREFIX + "score_sets"
    __table_args__ = (UniqueConstraint("study_id", "estimator", "metric", name="uq_score_set"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(Study.id, ondelete="CASCADE"), index=True)
    estimator: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(32))
    timestep_groups: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SensitivityScore(Base):
    __tablename__ = PREFIX + "sensitivity_scores"
    __table_args__ = (
        UniqueConstraint("score_set_id", "fqn", "timestep_group", "w_bits", "a_bits", name="uq_score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    score_set_id: Mapped[int] = mapped_column(ForeignKey(ScoreSet.id, ondelete="CASCADE"), index=True)
    fqn: Mapped[str] = mapped_column(String(500))
    timestep_group: Mapped[int]
    w_bits: Mapped[int]
    a_bits: Mapped[int]
    value: Mapped[float] = mapped_column(Float)
    stderr: Mapped[float | None] = mapped_column(Float)


class Candidate(Base):
    __tablename__ = PREFIX + "candidates"
    __table_args__ = (
        UniqueConstraint("study_id", "config_hash", name="uq_candidate_hash"),
        CheckConstraint(_in("state", CandidateState), name="ck_candidate_state"),
        # the claim query: first WAITING candidate of a study by priority
        Index("ix_candidate_claim", "study_id", "state", "priority", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(Study.id, ondelete="CASCADE"))
    config: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(64))
    # who proposed it: a solver's name or another source (search/origins.py); free text that search
    # validates, so that registering a solver needs no migration
    origin: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=CandidateState.WAITING.value)
    priority: Mapped[int] = mapped_column(default=0)
    fidelity: Mapped[str] = mapped_column(String(32), default="full")
    meta: Mapped[dict[str, Any]]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    study: Mapped[Study] = relationship(back_populates="candidates")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="candidate", passive_deletes=True)


class Evaluation(Base):
    """One real (or simulated, and then flagged) run of a candidate at one fidelity."""

    __tablename__ = PREFIX + "evaluations"
    __table_args__ = (UniqueConstraint("candidate_id", "fidelity", name="uq_evaluation_fidelity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey(Candidate.id, ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(Study.id, ondelete="CASCADE"), index=True)
    fidelity: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]]
    latency_s: Mapped[float | None] = mapped_column(Float)
    # the float model's latency timed side by side with the candidate's (call by call, same inputs)
    float_latency_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # layers per run label, in the backends' vocabulary (opaque here); the caller counts the simulated ones
    run_labels: Mapped[dict[str, Any]]
    layers_real: Mapped[int]
    layers_simulated: Mapped[int]
    backend: Mapped[str] = mapped_column(String(64))
    machine: Mapped[str] = mapped_column(String(200))
    # True only when no layer was simulated: latency and memory were measured, not estimated
    measured: Mapped[bool] = mapped_column(Boolean)
    worker: Mapped[str | None] = mapped_column(String(200))
    duration_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    candidate: Mapped[Candidate] = relationship(back_populates="evaluations")


class Artifact(Base):
    """A file a study produced (sample image grids, Pareto plots, exports): inline bytes or a path."""

    __tablename__ = PREFIX + "artifacts"
    __table_args__ = (
        CheckConstraint("(data IS NULL) != (path IS NULL)", name="ck_artifact_data_or_path"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(Study.id, ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey(Candidate.id, ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(500))
    media_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    path: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
