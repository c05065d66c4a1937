"""Storage: the SQLAlchemy schema and session helpers; the single source of truth.

    from storage import Storage
    st = Storage("sqlite:///bitsearch.db")          # or postgresql+psycopg://user@host/db
    st.create_study("sdxl-w4", {"version": 1, ...})
    st.add_candidate("sdxl-w4", bit_config.to_dict(), "ilp")
    c = st.claim("sdxl-w4", owner="host:pid:uuid")  # None when nothing is waiting
    st.complete(c.id, "host:pid:uuid", metrics={...}, backend="int8", machine="host", run_labels={...},
                layers_simulated=0, measured=True)     # the caller decides (quant.backends.base.measurement)

Depends on nothing else of ours and knows none of our vocabularies: configs, scores and layers come in
as plain dicts, JSON and numbers; origins and run labels are free text that search validates.
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
from storage.models import CandidateState, StudyState
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
    "DuplicateStudyError", "EvaluationInfo", "LeaseLostError", "Reclaimed", "SchemaVersionError",
    "Storage", "StorageError", "StudyInfo", "StudyNotFoundError", "StudyState", "config_hash",
    "database_revision", "head_revision", "is_transient", "normalize_url", "upgrade", "upgrade_command",
]
