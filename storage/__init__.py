"""Storage: the SQLAlchemy schema and session helpers; the single source of truth.

    from storage import Storage
    st = Storage("sqlite:///bitsearch.db")          # or postgresql+psycopg://user@host/db
    st.create_study("sdxl-w4", {"version": 1, ...})
    st.add_candidate("sdxl-w4", bit_config.to_dict(), "ilp")
    c = st.claim("sdxl-w4", owner="host:pid:uuid")  # None when nothing is waiting
    st.complete(c.id, "host:pid:uuid", metrics={...}, backend="int8", machine="host", run_labels={...})

Depends on nothing else of ours: configs, scores and layers come in as plain dicts/JSON.
"""

from storage.db import DEFAULT_URL, Database, is_transient, normalize_url
from storage.errors import (
    CandidateNotFoundError,
    DuplicateStudyError,
    LeaseLostError,
    SchemaVersionError,
    StorageError,
    StudyNotFoundError,
)
from storage.migrate import database_revision, head_revision, upgrade, upgrade_command
from storage.models import CandidateState, Origin, StudyState
from storage.repository import (
    ArtifactInfo,
    CandidateInfo,
    EvaluationInfo,
    Reclaimed,
    Storage,
    StudyInfo,
    config_hash,
)

__all__ = [
    "DEFAULT_URL", "ArtifactInfo", "CandidateInfo", "CandidateNotFoundError", "CandidateState", "Database",
    "DuplicateStudyError", "EvaluationInfo", "LeaseLostError", "Origin", "Reclaimed", "SchemaVersionError",
    "Storage", "StorageError", "StudyInfo", "StudyNotFoundError", "StudyState", "config_hash",
    "database_revision", "head_revision", "is_transient", "normalize_url", "upgrade", "upgrade_command",
]
