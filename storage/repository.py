"""The storage API that search/ (coordinator, workers, CLI) uses. Plain dicts and JSON in, frozen
records out: callers never hold ORM objects or sessions, and nothing here imports our other
packages and knows none of their vocabularies: configs and specs are opaque versioned JSON, score sets
are rows of plain numbers, origins and run labels are free text (the callers in
search/ encode and decode with the codecs beside the types, e.g. Scores.to_table, and validate names
against the registries).

Candidate life cycle:

    add_candidate ──> WAITING ──claim──> RUNNING ──complete──> COMPLETE ──promote──> WAITING (next fidelity)
                         ^                  │ ├──fail / NaN metric──> FAILED   (final)
                         │                  │ └──invalid───────────> INVALID  (final)
                         └──reclaim_expired─┘   (lease expired: back to WAITING while
                            / release           attempts < max_attempts, else FAILED)

Every transition out of RUNNING is conditional on the caller still holding the lease
(`state='RUNNING' AND lease_owner=:me`), so a worker whose lease was reclaimed cannot overwrite the
result of the worker that got the candidate next: it gets LeaseLostError and drops its result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database, display_url
from storage.errors import (
    CandidateNotFoundError,
    DuplicateStudyError,
    LeaseLostError,
    StorageError,
    StudyNotFoundError,
)
from storage.migrate import open_schema
from storage.models import (
    Artifact,
    Candidate,
    CandidateState,
    Evaluation,
    LayerRow,
    ScoreSet,
    SensitivityScore,
    Study,
    StudyState,
    utcnow,
)

ORIGIN_CHARS = 64  # the column's width
ScoreKey = tuple[str, int, int, int]  # (fqn, timestep group, w_bits, a_bits)

WAITING, RUNNING = CandidateState.WAITING.value, CandidateState.RUNNING.value
COMPLETE, FAILED, INVALID = CandidateState.COMPLETE.value, CandidateState.FAILED.value, CandidateState.INVALID.value


class _NameTaken(Exception):
    """create_study lost a race for the name (mapped to DuplicateStudyError outside the transaction)."""


# ---- records handed back to callers ----------------------------------------------------------
@dataclass(frozen=True)
class StudyInfo:
    id: int
    name: str
    spec: dict[str, Any]
    spec_version: int
    state: StudyState
    created_at: datetime
    updated_at: datetime
    reason: str | None = None  # why it is FAILED
    owner: str | None = None  # the process that runs (or last ran) it, see `acquire_study`
    heartbeat_at: datetime | None = None  # None once that process let go of it


@dataclass(frozen=True)
class CandidateInfo:
    id: int
    study_id: int
    config: dict[str, Any]
    config_hash: str
    origin: str
    state: CandidateState
    priority: int
    fidelity: str
    meta: dict[str, Any]
    lease_owner: str | None
    heartbeat_at: datetime | None
    attempts: int
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class EvaluationInfo:
    id: int
    candidate_id: int
    study_id: int
    fidelity: str
    metrics: dict[str, float]
    latency_s: float | None
    float_latency_s: float | None  # the float model's, timed side by side with latency_s
    peak_memory_bytes: int | None
    run_labels: dict[str, int]
    layers_real: int
    layers_simulated: int
    backend: str
    machine: str
    measured: bool  # False: numerics simulated, latency and memory estimated
    worker: str | None
    duration_s: float | None
    created_at: datetime
    config: dict[str, Any]  # the candidate's, so a Pareto query needs no second lookup
    origin: str


@dataclass(frozen=True)
class ArtifactInfo:
    id: int
    study_id: int
    candidate_id: int | None
    kind: str
    name: str
    media_type: str
    path: str | None
    size: int | None
    created_at: datetime
    data: bytes | None = None  # filled by get_artifact only; listings leave it out


@dataclass(frozen=True)
class Reclaimed:
    candidate_id: int
    state: CandidateState  # WAITING (will be retried) or FAILED (retry limit reached)
    attempts: int
    lease_owner: str | None


def _study_info(r: Study) -> StudyInfo:
    return StudyInfo(r.id, r.name, r.spec, r.spec_version, StudyState(r.state), r.created_at, r.updated_at,
                     r.reason, r.owner, r.heartbeat_at)


def _candidate_info(r: Candidate) -> CandidateInfo:
    return CandidateInfo(
        r.id, r.study_id, r.config, r.config_hash, r.origin, CandidateState(r.state), r.priority,
        r.fidelity, r.meta, r.lease_owner, r.heartbeat_at, r.attempts, r.reason, r.created_at, r.updated_at,
    )


def _evaluation_info(e: Evaluation, config: dict[str, Any], origin: str) -> EvaluationInfo:
    return EvaluationInfo(
        e.id, e.candidate_id, e.study_id, e.fidelity, e.metrics, e.latency_s, e.float_latency_s, e.peak_memory_bytes,
        e.run_labels, e.layers_real, e.layers_simulated, e.backend, e.machine, e.measured, e.worker,
        e.duration_s, e.created_at, config, origin,
    )


def _artifact_info(a: Artifact, with_data: bool) -> ArtifactInfo:
    return ArtifactInfo(
        a.id, a.study_id, a.candidate_id, a.kind, a.name, a.media_type, a.path, a.size, a.created_at,
        a.data if with_data else None,
    )


# ---- JSON helpers ------------------------------------------------------------------------------
def _json(obj: Any, what: str) -> Any:
    """`obj` as the JSON the database will hand back (tuples become lists); NaN/inf rejected,
    because PostgreSQL's json type refuses them and SQLite would store invalid JSON."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON (dicts, lists, str, finite numbers): {exc}") from None


def _versioned(obj: Mapping[str, Any], what: str, hint: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("version"), int):
        raise ValueError(f"{what} must be a mapping with an integer 'version' ({hint})")
    out: dict[str, Any] = _json(dict(obj), what)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """The content hash that makes adding a candidate idempotent: sha256 of canonical JSON
    (sorted keys, no whitespace). Two configs that differ only in key order hash the same."""
    text = json.dumps(_json(dict(config), "config"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _text(value: str, what: str, limit: int) -> str:
    """A free-text name as stored: 1-`limit` characters without control characters (PostgreSQL refuses
    NUL in text, and a newline would forge lines of CLI output)."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} must be 1-{limit} characters without control characters")
    return value


def _finite(value: Any, what: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is {value!r}; must be finite")
    return v


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT on both supported backends."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise StorageError(f"database dialect {name!r} is not supported; use SQLite or PostgreSQL")


# ---- the storage -------------------------------------------------------------------------------
class Storage:
    """A bitsearch database. `Storage(url)` opens it (creating it at the schema head when new;
    raising SchemaVersionError naming the upgrade command when it is behind). `create=False` opens
    only an existing bitsearch database; `readonly=True` (commands that only read) also cannot write
    to it (storage/db.py); both raise DatabaseOpenError otherwise. Picklable: a copy sent to a Ray
    worker or a subprocess reconnects by URL."""

    def __init__(
        self, url: str | URL | None = None, *, create: bool = True, readonly: bool = False,
        busy_timeout_s: float = 30.0, retries: int = 8,
    ) -> None:
        self._kw: dict[str, Any] = {"busy_timeout_s": busy_timeout_s, "retries": retries, "readonly": readonly}
        self._db = Database(url, create=create, **self._kw)
        open_schema(self._db, create=create and not readonly)

    @property
    def url(self) -> URL:
        return self._db.url

    @property
    def db(self) -> Database:
        """The engine and session scope, for queries this API lacks (prefer adding them here)."""
        return self._db

    def close(self) -> None:
        self._db.dispose()

    def __repr__(self) -> str:
        return f"Storage({display_url(self.url)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url.render_as_string(hide_password=False), "kw": self._kw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], create=False, **state["kw"])  # type: ignore[misc]

    # ---- studies ------------------------------------------------------------------------------
    def _study(self, s: Session, name: str) -> Study:
        row = s.scalars(select(Study).where(Study.name == name)).one_or_none()
        if row is None:
            names = s.scalars(select(Study.name).order_by(Study.name).limit(20)).all()
            have = ", ".join(names) if names else "none"
            raise StudyNotFoundError(
                f"no study named {name!r} in {display_url(self.url)} (studies there: {have}); "
                "check the name and --db, or list them with `bitsearch list`"
            )
        return row

    def create_study(self, name: str, spec: Mapping[str, Any], *, load_if_exists: bool = False) -> StudyInfo:
        """A new study. `spec` is the launch specification as versioned JSON (it must hold an
        integer 'version'). An existing name raises DuplicateStudyError unless `load_if_exists`,
        which returns the stored study (its stored spec, not `spec`)."""
        # control characters: PostgreSQL refuses NUL in text, and a newline would forge CLI output lines
        if not name or len(name) > 200 or name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError(f"study name {name!r} must be 1-200 characters without surrounding spaces or "
                             "control characters")
        data = _versioned(spec, "study spec", "e.g. {'version': 1, ...}")

        def fn(s: Session) -> StudyInfo:
            existing = s.scalars(select(Study).where(Study.name == name)).one_or_none()
            if existing is not None:
                if load_if_exists:
                    return _study_info(existing)
                raise DuplicateStudyError(
                    f"a study named {name!r} already exists in {display_url(self.url)}; "
                    f"continue it with `bitsearch resume {name}` or choose another --name"
                )
            row = Study(name=name, spec=data, spec_version=data["version"], state=StudyState.CREATED.value)
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                # a concurrent create of the same name committed between our SELECT and INSERT (PostgreSQL
                # waits for it, then reports the unique violation); the only unique column is the name
                raise _NameTaken from None
            return _study_info(row)

        try:
            return self._db.run(fn)
        except _NameTaken:
            if load_if_exists:
                return self.get_study(name)
            raise DuplicateStudyError(
                f"a study named {name!r} already exists in {display_url(self.url)}; "
                f"continue it with `bitsearch resume {name}` or choose another --name"
            ) from None

    def get_study(self, name: str) -> StudyInfo:
        return self._db.run(lambda s: _study_info(self._study(s, name)), readonly=True)

    def list_studies(self) -> list[StudyInfo]:
        return self._db.run(
            lambda s: [_study_info(r) for r in s.scalars(select(Study).order_by(Study.id))], readonly=True
        )

    def set_study_state(self, name: str, state: StudyState | str, *, reason: str | None = None) -> None:
        """Set the state; `reason` says why (kept for FAILED, shown by the API and `status`); any other
        state clears it."""
        value = StudyState(state).value

        def fn(s: Session) -> None:
            row = self._study(s, name)
            row.state, row.reason = value, reason

        self._db.run(fn)

    def set_study_spec(self, name: str, spec: Mapping[str, Any]) -> None:
        """Replace the study's stored spec (versioned JSON, as in `create_study`), e.g. a changed estimator."""
        data = _versioned(spec, "study spec", "e.g. {'version': 1, ...}")

        def fn(s: Session) -> None:
            row = self._study(s, name)
            row.spec, row.spec_version = data, data["version"]

        self._db.run(fn)

    def acquire_study(self, name: str, owner: str, *, previous: str | None, now: datetime | None = None) -> bool:
        """Make `owner` the study's runner, if its runner is still `previous` (compare and set: of two
        servers that both found the previous runner dead, one wins). False when another got it."""
        if not owner:
            raise ValueError("acquire_study needs a non-empty owner")

        def fn(s: Session) -> bool:
            sid = self._study(s, name).id
            same = Study.owner.is_(None) if previous is None else Study.owner == previous
            stmt = (update(Study).where(Study.id == sid, same).values(owner=owner, heartbeat_at=now or utcnow())
                    .returning(Study.id).execution_options(synchronize_session=False))
            return s.execute(stmt).first() is not None

        return self._db.run(fn)

    def heartbeat_study(self, name: str, owner: str, *, now: datetime | None = None) -> bool:
        """Extend `owner`'s hold on the study; False when another runner took it over."""
        stmt = (update(Study).where(Study.name == name, Study.owner == owner).values(heartbeat_at=now or utcnow())
                .returning(Study.id).execution_options(synchronize_session=False))
        return self._db.run(lambda s: s.execute(stmt).first() is not None)

    def release_study(self, name: str, owner: str) -> None:
        """`owner` stopped running the study: its heartbeat is cleared (the owner stays, as the last runner)."""
        stmt = (update(Study).where(Study.name == name, Study.owner == owner).values(heartbeat_at=None)
                .execution_options(synchronize_session=False))
        self._db.run(lambda s: s.execute(stmt))

    def live_leases(self, name: str, *, lease_timeout_s: float, now: datetime | None = None) -> int:
        """How many of the study's candidates are RUNNING with a heartbeat newer than `lease_timeout_s`
        (a worker is evaluating them now)."""

        def fn(s: Session) -> int:
            cutoff = (now or utcnow()) - timedelta(seconds=lease_timeout_s)
            q = select(func.count()).where(Candidate.study_id == self._study(s, name).id, Candidate.state == RUNNING,
                                           Candidate.heartbeat_at > cutoff)
            return int(s.scalar(q) or 0)

        return self._db.run(fn, readonly=True)

    def delete_study(self, name: str) -> None:
        """Delete a study and everything recorded for it (its target tables are among its artifacts)."""

        def fn(s: Session) -> None:
            sid = self._study(s, name).id
            # children first: explicit deletes do not depend on the backend enforcing CASCADE
            set_ids = select(ScoreSet.id).where(ScoreSet.study_id == sid)
            s.execute(delete(SensitivityScore).where(SensitivityScore.score_set_id.in_(set_ids)))
            for table in (ScoreSet, Artifact, Evaluation, Candidate, LayerRow):
                s.execute(delete(table).where(table.study_id == sid))
            s.execute(delete(Study).where(Study.id == sid))

        self._db.run(fn)

    # ---- layer inventory ----------------------------------------------------------------------
    def add_layers(self, study: str, layers: Iterable[Mapping[str, Any] | Any]) -> int:
        """Record the layer inventory (dicts with fqn, kind, weight_shape, params, macs, i.e.
        dataclasses.asdict(quant.layers.Layer); Layer instances are accepted too). Layers already
        recorded (by FQN) are skipped; returns how many were added. Order is kept."""
        rows = []
        for layer in layers:
            is_dc = dataclasses.is_dataclass(layer) and not isinstance(layer, type)
            d = dataclasses.asdict(layer) if is_dc else dict(layer)  # type: ignore[arg-type]
            try:
                rows.append({
                    "fqn": str(d["fqn"]), "kind": str(d["kind"]),
                    "weight_shape": [int(x) for x in d["weight_shape"]],
                    "params": int(d["params"]), "macs": int(d["macs"]),
                })
            except KeyError as exc:
                raise ValueError(f"layer {d!r} lacks {exc}; pass dataclasses.asdict(Layer)") from None

        def fn(s: Session) -> int:
            sid = self._study(s, study).id
            start = s.scalar(select(func.coalesce(func.max(LayerRow.position) + 1, 0)).where(LayerRow.study_id == sid))
            added = 0
            for i, row in enumerate(rows):
                stmt = (
                    _insert(s, LayerRow)
                    .values(study_id=sid, position=(start or 0) + i, **row)
                    .on_conflict_do_nothing(index_elements=["study_id", "fqn"])
                    .returning(LayerRow.id)
                )
                added += s.execute(stmt).first() is not None
            return added

        return self._db.run(fn)

    def get_layers(self, study: str) -> list[dict[str, Any]]:
        """The inventory in module order, as dicts that `quant.layers.Layer(**d)` accepts (but for
        weight_shape being a list: make it a tuple)."""

        def fn(s: Session) -> list[dict[str, Any]]:
            sid = self._study(s, study).id
            q = select(LayerRow).where(LayerRow.study_id == sid).order_by(LayerRow.position)
            return [
                {"fqn": r.fqn, "kind": r.kind, "weight_shape": list(r.weight_shape), "params": r.params, "macs": r.macs}
                for r in s.scalars(q)
            ]

        return self._db.run(fn, readonly=True)

    # ---- sensitivity scores -------------------------------------------------------------------
    def put_scores(
        self, study: str, *, estimator: str, metric: str, timestep_groups: Mapping[str, Any],
        values: Mapping[ScoreKey, float], stderr: Mapping[ScoreKey, float] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one estimator's scores of one metric (the keywords `Scores.to_table()` gives), replacing
        any earlier set of the same estimator and metric. `values` and `stderr` are keyed (fqn, timestep
        group, w_bits, a_bits); `timestep_groups` is opaque JSON handed back as it came. `params`: what
        the scores depend on (calibration prompts, samples, seed), so the caller can tell whether the
        cache still applies."""
        errs = dict(stderr or {})
        if set(errs) - set(values):
            raise ValueError(f"stderr for {sorted(set(errs) - set(values))[0]!r}, which has no score")
        entries = []
        for key, value in values.items():
            fqn, group, w, a = key
            e = errs.get(key)
            entries.append({"fqn": str(fqn), "timestep_group": int(group), "w_bits": int(w), "a_bits": int(a),
                            "value": _finite(value, f"score {key!r}"),
                            "stderr": None if e is None else _finite(e, f"stderr of score {key!r}")})
        groups = _json(dict(timestep_groups), "timestep_groups")
        extra = _json(dict(params or {}), "score params")

        def fn(s: Session) -> None:
            sid = self._study(s, study).id
            old = select(ScoreSet.id).where(
                ScoreSet.study_id == sid, ScoreSet.estimator == estimator, ScoreSet.metric == metric
            )
            s.execute(delete(SensitivityScore).where(SensitivityScore.score_set_id.in_(old)))
            s.execute(delete(ScoreSet).where(ScoreSet.id.in_(old.scalar_subquery())))
            row = ScoreSet(study_id=sid, estimator=estimator, metric=metric, timestep_groups=groups, params=extra)
            s.add(row)
            s.flush()
            if entries:
                s.execute(insert(SensitivityScore), [{"score_set_id": row.id, **e} for e in entries])

        self._db.run(fn)

    def get_scores(self, study: str, estimator: str, metric: str) -> dict[str, Any] | None:
        """That estimator's scores of that metric as put_scores took them (`Scores.from_table()` input:
        estimator, metric, timestep_groups, values, stderr or None), or None if none are stored."""

        def fn(s: Session) -> dict[str, Any] | None:
            sid = self._study(s, study).id
            row = s.scalars(select(ScoreSet).where(
                ScoreSet.study_id == sid, ScoreSet.estimator == estimator, ScoreSet.metric == metric
            )).one_or_none()
            if row is None:
                return None
            values: dict[ScoreKey, float] = {}
            errs: dict[ScoreKey, float] = {}
            q = select(SensitivityScore).where(SensitivityScore.score_set_id == row.id).order_by(SensitivityScore.id)
            for r in s.scalars(q):
                key = (r.fqn, r.timestep_group, r.w_bits, r.a_bits)
                values[key] = r.value
                if r.stderr is not None:
                    errs[key] = r.stderr
            return {"estimator": row.estimator, "metric": row.metric, "timestep_groups": row.timestep_groups,
                    "values": values, "stderr": errs or None}

        return self._db.run(fn, readonly=True)

    def list_score_sets(self, study: str) -> list[dict[str, Any]]:
        """Which scores are cached: estimator, metric, params, created_at, count."""

        def fn(s: Session) -> list[dict[str, Any]]:
            sid = self._study(s, study).id
            n = (select(func.count()).where(SensitivityScore.score_set_id == ScoreSet.id)
                 .correlate(ScoreSet).scalar_subquery())
            q = select(ScoreSet, n).where(ScoreSet.study_id == sid).order_by(ScoreSet.id)
            return [
                {"estimator": r.estimator, "metric": r.metric, "params": r.params, "created_at": r.created_at,
                 "count": count}
                for r, count in s.execute(q).all()
            ]

        return self._db.run(fn, readonly=True)

    # ---- candidates ---------------------------------------------------------------------------
    def add_candidate(
        self, study: str, config: Mapping[str, Any], origin: str, *, priority: int = 0,
        fidelity: str = "full", meta: Mapping[str, Any] | None = None,
    ) -> tuple[int, bool]:
        """Queue a config (BitConfig.to_dict()) as WAITING. Idempotent by content hash: adding the
        same config again returns (existing id, False) and changes nothing."""
        return self.add_candidates(study, [config], origin, priority=priority, fidelity=fidelity, meta=meta)[0]

    def add_candidates(
        self, study: str, configs: Iterable[Mapping[str, Any]], origin: str, *, priority: int = 0,
        fidelity: str = "full", meta: Mapping[str, Any] | None = None,
    ) -> list[tuple[int, bool]]:
        """add_candidate for many configs in one transaction; (id, created) for each, in order. `origin`
        (who proposed them) is free text here; search checks it names a solver or source it knows."""
        origin_value = _text(origin, "origin", ORIGIN_CHARS)
        extra = _json(dict(meta or {}), "candidate meta")
        items = []
        for config in configs:
            data = _versioned(config, "a candidate config", "pass BitConfig.to_dict()")
            items.append((data, config_hash(data)))

        def fn(s: Session) -> list[tuple[int, bool]]:
            sid = self._study(s, study).id
            out = []
            now = utcnow()
            for data, digest in items:
                stmt = (
                    _insert(s, Candidate)
                    .values(study_id=sid, config=data, config_hash=digest, origin=origin_value, state=WAITING,
                            priority=priority, fidelity=fidelity, meta=extra, attempts=0, created_at=now,
                            updated_at=now)
                    .on_conflict_do_nothing(index_elements=["study_id", "config_hash"])
                    .returning(Candidate.id)
                )
                new_id = s.execute(stmt).scalar()
                if new_id is not None:
                    out.append((int(new_id), True))
                else:
                    old = s.scalar(select(Candidate.id).where(Candidate.study_id == sid, Candidate.config_hash == digest))
                    assert old is not None
                    out.append((int(old), False))
            return out

        return self._db.run(fn)

    def find_candidate(self, study: str, config: Mapping[str, Any]) -> CandidateInfo | None:
        """The candidate holding this config (by content hash), if any."""
        digest = config_hash(config)

        def fn(s: Session) -> CandidateInfo | None:
            sid = self._study(s, study).id
            row = s.scalars(select(Candidate).where(Candidate.study_id == sid, Candidate.config_hash == digest)).first()
            return None if row is None else _candidate_info(row)

        return self._db.run(fn, readonly=True)

    def get_candidate(self, candidate_id: int) -> CandidateInfo:
        def fn(s: Session) -> CandidateInfo:
            row = s.get(Candidate, candidate_id)
            if row is None:
                raise CandidateNotFoundError(f"no candidate with id {candidate_id} in {display_url(self.url)}")
            return _candidate_info(row)

        return self._db.run(fn, readonly=True)

    def list_candidates(
        self, study: str, *, states: Iterable[CandidateState | str] | None = None,
        origins: Iterable[str] | None = None,
    ) -> list[CandidateInfo]:
        """Candidates of a study in id order, optionally only those in `states` / from `origins`."""
        state_values = None if states is None else [CandidateState(x).value for x in states]
        origin_values = None if origins is None else list(origins)

        def fn(s: Session) -> list[CandidateInfo]:
            q = select(Candidate).where(Candidate.study_id == self._study(s, study).id)
            if state_values is not None:
                q = q.where(Candidate.state.in_(state_values))
            if origin_values is not None:
                q = q.where(Candidate.origin.in_(origin_values))
            return [_candidate_info(r) for r in s.scalars(q.order_by(Candidate.id))]

        return self._db.run(fn, readonly=True)

    def count_candidates(self, study: str) -> dict[CandidateState, int]:
        """How many candidates are in each state (every state present, zeros included)."""

        def fn(s: Session) -> dict[CandidateState, int]:
            sid = self._study(s, study).id
            q = select(Candidate.state, func.count()).where(Candidate.study_id == sid).group_by(Candidate.state)
            counts = {state: 0 for state in CandidateState}
            for state, n in s.execute(q).all():
                counts[CandidateState(state)] = int(n)
            return counts

        return self._db.run(fn, readonly=True)

    def count_by_fidelity(self, study: str) -> dict[str, dict[str, int]]:
        """Per fidelity: candidates currently at it by state value, and `evaluations` stored at it
        (progress without reading configs: cheap enough to poll)."""

        def fn(s: Session) -> dict[str, dict[str, int]]:
            sid = self._study(s, study).id
            out: dict[str, dict[str, int]] = {}
            by_state = (select(Candidate.fidelity, Candidate.state, func.count()).where(Candidate.study_id == sid)
                        .group_by(Candidate.fidelity, Candidate.state))
            for fidelity, state, n in s.execute(by_state).all():
                out.setdefault(fidelity, {})[CandidateState(state).value] = int(n)
            evaluated = (select(Evaluation.fidelity, func.count()).where(Evaluation.study_id == sid)
                         .group_by(Evaluation.fidelity))
            for fidelity, n in s.execute(evaluated).all():
                out.setdefault(fidelity, {})["evaluations"] = int(n)
            return out

        return self._db.run(fn, readonly=True)

    # ---- leases: claim, heartbeat, reclaim ----------------------------------------------------
    def claim(self, study: str, owner: str, *, now: datetime | None = None) -> CandidateInfo | None:
        """Atomically take the next WAITING candidate (highest priority, then oldest) for `owner`
        (unique per worker and claim, e.g. "host:pid:uuid"): RUNNING, lease to owner, heartbeat
        now, attempts + 1. None when nothing is WAITING. Two callers never get the same candidate:
        the UPDATE is conditional on state='WAITING' and only a row it changed is returned."""
        if not owner:
            raise ValueError("claim needs a non-empty lease owner")

        def fn(s: Session) -> CandidateInfo | None:
            sid = self._study(s, study).id
            when = now or utcnow()
            waiting = (Candidate.study_id == sid, Candidate.state == WAITING)
            pick = select(Candidate.id).where(*waiting).order_by(Candidate.priority.desc(), Candidate.id).limit(1)
            if s.get_bind().dialect.name == "postgresql":
                # skip rows another claimer has locked instead of queueing behind it
                pick = pick.with_for_update(skip_locked=True)
            stmt = (
                update(Candidate)
                .where(Candidate.id == pick.scalar_subquery(), Candidate.state == WAITING)
                .values(state=RUNNING, lease_owner=owner, heartbeat_at=when, attempts=Candidate.attempts + 1,
                        updated_at=when)
                .returning(Candidate)
                .execution_options(synchronize_session=False)
            )
            for _ in range(10_000):
                row = s.scalars(stmt).first()
                if row is not None:
                    return _candidate_info(row)
                # 0 rows: none WAITING, or (PostgreSQL) the one we picked was taken or is locked by
                # a concurrent claim; read committed gives the next statement a fresh snapshot.
                if not s.scalar(select(exists().where(*waiting))):
                    return None
            raise StorageError("claim kept losing races for 10000 tries; is something resetting candidates?")

        return self._db.run(fn)

    def heartbeat(self, candidate_id: int, owner: str, *, now: datetime | None = None) -> bool:
        """Extend the lease. False when `owner` no longer holds it: stop evaluating and drop the result."""

        def fn(s: Session) -> bool:
            when = now or utcnow()
            stmt = (
                update(Candidate)
                .where(Candidate.id == candidate_id, Candidate.state == RUNNING, Candidate.lease_owner == owner)
                .values(heartbeat_at=when)
                .returning(Candidate.id)
                .execution_options(synchronize_session=False)
            )
            return s.execute(stmt).first() is not None

        return self._db.run(fn)

    def reclaim_expired(
        self, study: str, *, lease_timeout_s: float, max_attempts: int, now: datetime | None = None,
    ) -> list[Reclaimed]:
        """RUNNING candidates whose last heartbeat is older than `lease_timeout_s` (their worker
        died or hung) go back to WAITING, or to FAILED once `attempts >= max_attempts`. On resume
        after a crash with no workers alive, `lease_timeout_s=0` reclaims every RUNNING candidate.

        Heartbeats are written with the workers' clocks and compared with this caller's clock: keep
        the timeout well above the clock skew between machines (NTP keeps it far below a second)."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

        def fn(s: Session) -> list[Reclaimed]:
            sid = self._study(s, study).id
            when = now or utcnow()
            cutoff = when - timedelta(seconds=lease_timeout_s)
            expired = (Candidate.state == RUNNING,
                       or_(Candidate.heartbeat_at.is_(None), Candidate.heartbeat_at <= cutoff))
            rows = s.execute(
                select(Candidate.id, Candidate.attempts, Candidate.lease_owner)
                .where(Candidate.study_id == sid, *expired).order_by(Candidate.id)
            ).all()
            out = []
            for cid, attempts, owner in rows:
                final = attempts >= max_attempts
                reason = (f"lease of {owner} expired (no heartbeat for {lease_timeout_s:g} s) on attempt "
                          f"{attempts} of {max_attempts}")
                if final:
                    reason += "; retry limit reached"
                state = FAILED if final else WAITING
                # the WHERE repeats the expiry test: a heartbeat that landed since the SELECT wins
                stmt = (
                    update(Candidate).where(Candidate.id == cid, *expired)
                    .values(state=state, lease_owner=None, reason=reason, updated_at=when)
                    .returning(Candidate.id).execution_options(synchronize_session=False)
                )
                if s.execute(stmt).first() is not None:
                    out.append(Reclaimed(cid, CandidateState(state), attempts, owner))
            return out

        return self._db.run(fn)

    # ---- results ------------------------------------------------------------------------------
    def _finish(
        self, s: Session, candidate_id: int, owner: str | None, values: dict[str, Any],
        from_states: Sequence[str] = (RUNNING,),
    ) -> Candidate:
        cond = [Candidate.id == candidate_id, Candidate.state.in_(list(from_states))]
        if owner is not None:
            cond += [Candidate.state == RUNNING, Candidate.lease_owner == owner]
        stmt = (update(Candidate).where(*cond).values(updated_at=utcnow(), **values).returning(Candidate)
                .execution_options(synchronize_session=False))
        row = s.scalars(stmt).first()
        if row is not None:
            return row
        cur = s.get(Candidate, candidate_id)
        if cur is None:
            raise CandidateNotFoundError(f"no candidate with id {candidate_id} in {display_url(self.url)}")
        raise LeaseLostError(
            f"candidate {candidate_id} is {cur.state} with lease owner {cur.lease_owner!r}, not RUNNING for "
            f"{owner!r}: its lease expired and it was reclaimed; this result is dropped"
        )

    def complete(
        self, candidate_id: int, owner: str, *, metrics: Mapping[str, float], backend: str, machine: str,
        run_labels: Mapping[str, int], layers_simulated: int = 0, measured: bool = False,
        latency_s: float | None = None, float_latency_s: float | None = None,
        peak_memory_bytes: int | None = None, duration_s: float | None = None,
    ) -> CandidateState:
        """Record the evaluation of a RUNNING candidate held by `owner` and mark it COMPLETE.

        `run_labels` counts the layers per label of how they really ran, `layers_simulated` how many
        of them ran simulated, and `measured` whether latency and memory are real rather than
        estimated: the caller decides all three (what the labels mean and which backends simulate is
        quant's vocabulary, quant.backends.base.measurement); left out, a run counts as estimated.
        Storage only refuses what contradicts itself: measured=True with a simulated layer or with no
        layer at all. A NaN/inf metric,
        latency or memory marks the candidate FAILED instead (returned), and no evaluation is stored:
        it can never reach a front. LeaseLostError if `owner` lost the lease."""
        metric_values: dict[str, float] = {}
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"metric {name!r} is {value!r}; metrics are numbers")
            metric_values[str(name)] = float(value)
        labels: dict[str, int] = {}
        for label, n in run_labels.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise TypeError(f"run label count {label!r}: {n!r} is not a count of layers")
            labels[str(label)] = n
        total = sum(labels.values())
        counted = not isinstance(layers_simulated, bool) and isinstance(layers_simulated, int)
        if not counted or not 0 <= layers_simulated <= total:
            raise ValueError(f"layers_simulated = {layers_simulated!r} is not a count within the {total} "
                             "layers the run labels count")
        # the generic half of the rule, in this table's own terms (the rest is the caller's)
        contradiction = (f"{layers_simulated} layers ran simulated" if layers_simulated else
                         "no run labels say how the layers ran" if not labels else None)
        if measured and contradiction:
            raise ValueError(f"{contradiction}; latency and memory cannot be reported as measured")
        checked = {**metric_values, "latency_s": latency_s, "float_latency_s": float_latency_s,
                   "peak_memory_bytes": peak_memory_bytes}
        bad = [(k, v) for k, v in checked.items() if v is not None and not math.isfinite(float(v))]

        def fn(s: Session) -> CandidateState:
            if bad:
                name, value = bad[0]
                self._finish(s, candidate_id, owner, {
                    "state": FAILED,
                    "reason": f"non-finite {name} = {value} (NaN/inf results are failures, never scored)",
                })
                return CandidateState.FAILED
            row = self._finish(s, candidate_id, owner, {"state": COMPLETE, "reason": None})
            s.add(Evaluation(
                candidate_id=candidate_id, study_id=row.study_id, fidelity=row.fidelity, metrics=metric_values,
                latency_s=latency_s, float_latency_s=float_latency_s, peak_memory_bytes=peak_memory_bytes,
                run_labels=labels,
                layers_real=total - layers_simulated, layers_simulated=layers_simulated, backend=backend,
                machine=machine, measured=measured, worker=owner, duration_s=duration_s,
            ))
            return CandidateState.COMPLETE

        return self._db.run(fn)

    def fail(self, candidate_id: int, reason: str, *, owner: str | None = None) -> None:
        """Mark FAILED (final: OOM, NaN, crash that will repeat). With `owner`, only while it holds
        the lease; without, from WAITING or RUNNING (the coordinator rejecting a candidate)."""
        self._db.run(lambda s: self._finish(s, candidate_id, owner, {"state": FAILED, "reason": reason},
                                            (WAITING, RUNNING)))

    def invalid(self, candidate_id: int, reason: str, *, owner: str | None = None) -> None:
        """Mark INVALID (final): the applied model did not match the config (wrong count of
        quantized layers), so the run says nothing about the config."""
        self._db.run(lambda s: self._finish(s, candidate_id, owner, {"state": INVALID, "reason": reason},
                                            (WAITING, RUNNING)))

    def release(self, candidate_id: int, owner: str, reason: str, *, max_attempts: int) -> CandidateState:
        """Give a claimed candidate back after a failure worth retrying (worker shutting down, lost
        device): WAITING while attempts < max_attempts, else FAILED."""

        def fn(s: Session) -> CandidateState:
            row = self._finish(s, candidate_id, owner, {"state": WAITING, "lease_owner": None, "reason": reason})
            if row.attempts >= max_attempts:
                self._finish(s, candidate_id, None, {"state": FAILED, "reason": f"{reason}; retry limit reached"},
                             (WAITING,))
                return CandidateState.FAILED
            return CandidateState.WAITING

        return self._db.run(fn)

    def promote(self, candidate_id: int, fidelity: str, *, priority: int | None = None) -> None:
        """Queue a COMPLETE candidate again for a higher-fidelity evaluation (multi-fidelity: the
        expensive metrics only for candidates that may enter the front). Attempts restart at 0;
        its earlier evaluations stay."""

        def fn(s: Session) -> None:
            done = s.scalar(select(exists().where(Evaluation.candidate_id == candidate_id,
                                                  Evaluation.fidelity == fidelity)))
            if done:
                raise StorageError(f"candidate {candidate_id} already has a {fidelity!r} evaluation")
            values: dict[str, Any] = {"state": WAITING, "fidelity": fidelity, "attempts": 0, "lease_owner": None,
                                      "heartbeat_at": None, "reason": None}
            if priority is not None:
                values["priority"] = priority
            self._finish(s, candidate_id, None, values, (COMPLETE,))

        self._db.run(fn)

    def list_evaluations(
        self, study: str, *, fidelity: str | None = None, measured_only: bool = False,
    ) -> list[EvaluationInfo]:
        """Evaluations of a study's candidates, with each candidate's config and origin, by id."""

        def fn(s: Session) -> list[EvaluationInfo]:
            q = (select(Evaluation, Candidate.config, Candidate.origin).join(Candidate)
                 .where(Evaluation.study_id == self._study(s, study).id))
            if fidelity is not None:
                q = q.where(Evaluation.fidelity == fidelity)
            if measured_only:
                q = q.where(Evaluation.measured.is_(True))
            return [_evaluation_info(e, c, o) for e, c, o in s.execute(q.order_by(Evaluation.id)).all()]

        return self._db.run(fn, readonly=True)

    def get_evaluations(self, candidate_id: int) -> list[EvaluationInfo]:
        def fn(s: Session) -> list[EvaluationInfo]:
            q = (select(Evaluation, Candidate.config, Candidate.origin).join(Candidate)
                 .where(Evaluation.candidate_id == candidate_id).order_by(Evaluation.id))
            return [_evaluation_info(e, c, o) for e, c, o in s.execute(q).all()]

        return self._db.run(fn, readonly=True)

    # ---- artifacts ----------------------------------------------------------------------------
    def put_artifact(
        self, study: str, kind: str, name: str, *, data: bytes | None = None, path: str | None = None,
        media_type: str = "application/octet-stream", candidate_id: int | None = None,
    ) -> int:
        """Store a file the study produced: inline `data` (sample grids, small plots) or a `path`
        (large files kept outside the database). Exactly one of the two."""
        if (data is None) == (path is None):
            raise ValueError("give exactly one of data= (bytes) or path=")

        def fn(s: Session) -> int:
            row = Artifact(study_id=self._study(s, study).id, candidate_id=candidate_id, kind=kind, name=name,
                           media_type=media_type, data=None if data is None else bytes(data), path=path,
                           size=None if data is None else len(data))
            s.add(row)
            s.flush()
            return row.id

        return self._db.run(fn)

    def get_artifact(self, artifact_id: int) -> ArtifactInfo:
        def fn(s: Session) -> ArtifactInfo:
            row = s.get(Artifact, artifact_id)
            if row is None:
                raise StorageError(f"no artifact with id {artifact_id} in {display_url(self.url)}")
            return _artifact_info(row, True)

        return self._db.run(fn, readonly=True)

    def list_artifacts(self, study: str, *, kind: str | None = None, candidate_id: int | None = None) -> list[ArtifactInfo]:
        """Artifacts without their bytes (get_artifact fetches those)."""

        def fn(s: Session) -> list[ArtifactInfo]:
            q = select(Artifact).where(Artifact.study_id == self._study(s, study).id)
            if kind is not None:
                q = q.where(Artifact.kind == kind)
            if candidate_id is not None:
                q = q.where(Artifact.candidate_id == candidate_id)
            return [_artifact_info(r, False) for r in s.scalars(q.order_by(Artifact.id))]

        return self._db.run(fn, readonly=True)
