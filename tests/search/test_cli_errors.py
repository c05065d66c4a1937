"""Hostile but fair input to every command: each case ends in one line on stderr (`error: ...`), a
non-zero exit and no traceback; commands that only read leave the file system as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quant.config import ConfigError
from search.cli import app
from search.spec import SEED_LIMIT, StudySpec
from storage import Storage

ROOT = Path(__file__).resolve().parents[2]

# {tmp} is the test's directory: b.db (a bitsearch database), app.db (another application's SQLite
# file), corrupt.db (text), adir/ (a directory)
CASES = {
    "corrupt file": ["status", "dead", "--db", "{tmp}/corrupt.db"],
    "corrupt file, writing command": ["db", "upgrade", "--db", "{tmp}/corrupt.db"],
    "directory as database": ["list", "--db", "{tmp}/adir"],
    "missing directory": ["status", "demo", "--db", "sqlite:///{tmp}/nonexistent/x.db"],
    "missing file": ["pareto", "dead", "--db", "{tmp}/none.db"],
    "foreign database, list": ["list", "--db", "{tmp}/app.db"],
    "foreign database, resume": ["resume", "dead", "--db", "{tmp}/app.db"],
    "foreign database, import": ["import", "dead", "{tmp}/c.yaml", "--db", "{tmp}/app.db"],
    "read-only database, writing command": ["delete", "dead", "--yes", "--db", "sqlite:///file:{tmp}/b.db?mode=ro&uri=true"],
    "unreachable postgres": ["list", "--db", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"],
    "malformed URL port": ["list", "--db", "postgresql://host:port/db"],
    "unsupported URL": ["list", "--db", "mysql://u@localhost/db"],
    "empty URL": ["list", "--db", ""],
    "unknown study": ["status", "nope", "--db", "{tmp}/b.db"],
    "stored spec with an unknown backend": ["status", "bad", "--db", "{tmp}/b.db"],
    "export to a missing directory": ["export", "dead", "--candidate", "1", "-o", "{tmp}/nodir/x.json", "--db",
                                      "{tmp}/b.db"],
    "export to a directory": ["export", "dead", "--candidate", "1", "-o", "{tmp}/adir", "--db", "{tmp}/b.db"],
    "plot to a missing directory": ["pareto", "dead", "--plot", "{tmp}/nodir/p.png", "--db", "{tmp}/b.db"],
    "unknown objective": ["pareto", "dead", "--objectives", "nope", "--db", "{tmp}/b.db"],
    "read command that would compute": ["pareto", "dead", "--db", "{tmp}/b.db"],
    "backend cuda": ["launch", "--name", "x", "--backend", "cuda", "--db", "{tmp}/b.db"],
    "infinite budget": ["launch", "--name", "x", "--budget", "wbits=1e999", "--db", "{tmp}/b.db"],
    "overflowing budget unit": ["launch", "--name", "x", "--budget", "size=1e307GB", "--db", "{tmp}/b.db"],
    "NaN budget": ["launch", "--name", "x", "--budget", "wbits=nan", "--db", "{tmp}/b.db"],
    "too few images for a metric": ["launch", "--name", "x", "--full-samples", "1", "--db", "{tmp}/b.db"],
    "NUL in model": ["launch", "--name", "x", "--model", "built\0in", "--db", "{tmp}/b.db"],
    "delete without confirmation": ["delete", "dead", "--db", "{tmp}/b.db"],
    "delete unknown study": ["delete", "nope", "--yes", "--db", "{tmp}/b.db"],
}


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    import sqlite3

    st = Storage(str(tmp_path / "b.db"))
    st.create_study("dead", StudySpec().to_dict())
    st.set_study_state("dead", "RUNNING")  # its runner died: no heartbeat, no leases
    st.create_study("bad", {**StudySpec().to_dict(), "backend": "cuda"})  # stored before backends were checked
    st.close()
    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    (tmp_path / "corrupt.db").write_text("not a database, " * 20)
    (tmp_path / "adir").mkdir()
    (tmp_path / "c.yaml").write_text("_default: W8A8\n")
    return tmp_path


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_one_line_error(tmp: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, [a.replace("{tmp}", str(tmp)) for a in args], input="")
    assert isinstance(result.exception, SystemExit), result.exception  # an uncaught exception is a traceback
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("spec", [
    {"backend": "cuda"}, {"seed": SEED_LIMIT}, {"seed": 2**63 + 1}, {"seed": -1}, {"model": "built\0in"},
    {"model": "builtin\nstudy ok"}, {"budget": ("wbits=1e999",)}, {"budget": ("memory=inf",)},
    {"estimators": ("gradient\0",)},
], ids=str)
def test_spec_rejects(spec: dict[str, object]) -> None:
    # the API answers 422 for a ConfigError from StudySpec: every field is checked here, once
    with pytest.raises(ConfigError):
        StudySpec(**spec)  # type: ignore[arg-type]


def test_spec_accepts_the_bounds() -> None:
    assert StudySpec(seed=SEED_LIMIT - 1, backend="fake").seed == SEED_LIMIT - 1


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under `root` with its size, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.mark.parametrize("args", [
    ["status", "demo", "--db", "sqlite:///{tmp}/nonexistent/x.db"],
    ["list", "--db", "{tmp}/app.db"],
    ["status", "dead", "--db", "{tmp}/app.db"],
    ["list", "--db", "{tmp}/b.db"],
    ["status", "dead", "--db", "{tmp}/b.db"],
], ids=["missing dir", "foreign list", "foreign status", "bitsearch list", "bitsearch status"])
def test_read_commands_leave_files_as_they_were(tmp: Path, args: list[str]) -> None:
    # a subprocess: the files must be as they were once the process has closed the database
    before = _snapshot(tmp)
    proc = subprocess.run([sys.executable, "-m", "search.cli", *(a.replace("{tmp}", str(tmp)) for a in args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert _snapshot(tmp) == before
    if "b.db" in args[-1]:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
