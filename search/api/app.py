"""The FastAPI app factory; `bitsearch serve` runs it with uvicorn."""

import hmac
import json
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from quant.config import BitConfig, ConfigError
from quant.errors import BitsearchError
from search.api.models import CandidateOut, FrontPointOut, StudyCreate, StudyDetail, StudyOut
from search.executors.base import Executor, heartbeat_interval, worker_id
from search.exports import FORMATS
from search.origins import origin_enum
from storage import CandidateState, Storage, StorageError, StudyInfo, StudyState
from storage.errors import DuplicateStudyError, StudyNotFoundError

if TYPE_CHECKING:
    from search.study import Study

MAX_BODY_BYTES = 64 * 1024
# every registered export format is served: the names come from the format registry
FORMAT_PATTERN = "^(" + "|".join(re.escape(f) for f in FORMATS) + ")$"
MIN_TOKEN_CHARS = 16  # `openssl rand -hex 16` gives 32
API_OWNER = "api:"  # prefix of the runner id of a study run by an API server (see Storage.acquire_study)
BUILTIN_MODEL = "builtin"
MEDIA_TYPES = {"json": "application/json", "yaml": "application/yaml", "torchao": "text/x-python"}

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimit:
    """Rejects request bodies over `max_bytes` with 413, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        # Buffer the (small) body so a stream without Content-Length is bounded too.
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="What went wrong (422 from body validation: field errors).")


_WHY = {400: "The body is not JSON (e.g. not UTF-8).", 401: "Missing or invalid bearer token.", 403: "Model path outside the configured model roots.",
        404: "No such study, candidate or stored artifact.", 409: "Conflicts with the study's state.",
        413: "Request body too large.", 422: "Invalid input."}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route documents in the OpenAPI schema (the fuzzing test holds the API to them)."""
    return {code: {"model": ErrorOut, "description": _WHY[code]} for code in codes}


def preload_model_code() -> None:
    """Import the model classes studies use once, before any request thread does: diffusers resolves
    them lazily, and two threads resolving one at once raised `ImportError: cannot import name
    'UNet2DConditionModel'` (4 concurrent POSTs on a fresh server gave 1-3 errors)."""
    import diffusers  # noqa: F401
    from diffusers import (  # noqa: F401
        DDIMScheduler,
        DDPMScheduler,
        DiffusionPipeline,
        DiTTransformer2DModel,
        ModelMixin,
        PixArtTransformer2DModel,
        Transformer2DModel,
        UNet2DConditionModel,
        UNet2DModel,
    )

    import quant.layers  # noqa: F401
    import workloads.base  # noqa: F401


def create_app(db_url: str | None, token: str | None, open_reads: bool = False,
               model_roots: Sequence[str | Path] = (), max_body_bytes: int = MAX_BODY_BYTES,
               executor: Callable[[], Executor] | None = None, run_studies: bool = True,
               lease_timeout_s: float = 60.0) -> FastAPI:
    """The API over the database at `db_url`. Writes need `Authorization: Bearer <token>` (with no
    token every write is refused; a token has at least MIN_TOKEN_CHARS characters); reads too unless
    `open_reads`. Studies may use the built-in model or a model directory under one of `model_roots`,
    and run in the background on a new executor from `executor()` each (default: `local`, in the
    server's process).

    At start (the ASGI lifespan), the server resumes the RUNNING studies an API server was running
    whose runner is gone: on this machine its process is dead, elsewhere its heartbeat is older than
    `lease_timeout_s` (checked again once after that long). `run_studies=False` records studies
    without running them (nothing runs in the background, resume answers 409): for tests and fuzzing."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the API token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                          "(e.g. BITSEARCH_TOKEN=$(openssl rand -hex 16))")
    preload_model_code()
    storage = Storage(db_url)
    # the origin filter's values come from the solver registry (storage keeps origins as free text)
    Origin: Any = origin_enum()  # noqa: N806
    roots = [Path(r).resolve() for r in model_roots]
    runs: dict[str, threading.Thread] = {}
    runs_lock = threading.Lock()
    me = f"{API_OWNER}{worker_id()}"  # this server, as the runner of the studies it runs
    timers: list[threading.Timer] = []
    bearer = HTTPBearer(auto_error=False, description="BITSEARCH_TOKEN")
    expected = token.encode() if token else None

    def check(credentials: HTTPAuthorizationCredentials | None) -> None:
        if expected is None:
            raise HTTPException(401, "no token configured on the server: writes are disabled",
                                headers={"WWW-Authenticate": "Bearer"})
        given = credentials.credentials.encode() if credentials is not None else b""
        if credentials is None or not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

    def write_auth(credentials: Creds) -> None:
        check(credentials)

    def read_auth(credentials: Creds) -> None:
        if not open_reads:
            check(credentials)

    def running_here(name: str) -> bool:
        thread = runs.get(name)
        return thread is not None and thread.is_alive()

    def launch(name: str, job: Callable[[], None]) -> None:
        thread = threading.Thread(target=job, name=f"study-{name}", daemon=True)
        runs[name] = thread
        thread.start()

    def start_run(study: "Study") -> None:
        """Run `study` in the background; this server already holds it (Storage.acquire_study)."""
        launch(study.name, lambda: _run(study, executor() if executor else None, me,
                                        heartbeat_interval(lease_timeout_s)))

    def adopt_orphans(recheck: bool) -> None:
        """Resume the studies whose API runner is gone (see the docstring of create_app)."""
        later = False
        for info in storage.list_studies():
            if info.state != StudyState.RUNNING or not (info.owner or "").startswith(API_OWNER):
                continue
            with runs_lock:
                if running_here(info.name) or _runner_alive(info, lease_timeout_s):
                    later = later or info.owner != me
                    continue
                why = _model_error(str(info.spec.get("model", "")), roots)
                if why is not None:
                    log.warning("not resuming study %s: %s", info.name, why[1])
                    continue
                try:
                    study = _study(storage, info.name, read_only=False)
                    if not storage.acquire_study(info.name, me, previous=info.owner):
                        continue  # another server adopted it first
                except BitsearchError as e:
                    log.warning("not resuming study %s: %s", info.name, e)
                    continue
                log.info("resuming study %s: its runner %s is gone", info.name, info.owner)
                start_run(study)
        if later and recheck:
            timer = threading.Timer(lease_timeout_s, adopt_orphans, args=(False,))
            timer.daemon = True
            timers.append(timer)
            timer.start()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if run_studies:
            try:
                adopt_orphans(recheck=True)
            except StorageError as e:  # the server still serves; resume by hand (POST .../resume)
                log.error("could not look for studies to resume: %s", e)
        yield
        for timer in timers:
            timer.cancel()

    app = FastAPI(title="bitsearch", summary="Mixed-precision quantization search for diffusion models.",
                  version="1", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.state.storage, app.state.runs = storage, runs

    @app.exception_handler(BitsearchError)
    async def _ours(_r: Request, e: BitsearchError) -> JSONResponse:
        status = _status(e)
        if status is None:  # a solver, storage or verification failure: a server error, as before
            raise e
        return JSONResponse({"detail": str(e)}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/studies", status_code=202, dependencies=[Depends(write_auth)],
              responses=_responses(400, 401, 403, 409, 413, 422))
    def create_study(body: StudyCreate) -> StudyOut:
        """Create a study and run it in the background on the server's executor."""
        from dataclasses import replace

        from search.study import Study

        spec = replace(body.spec(), model=_check_model(body.model, roots))
        try:
            storage.get_study(body.name)
            raise HTTPException(409, f"a study named {body.name!r} already exists")
        except StudyNotFoundError:
            pass
        try:
            study = Study.create(body.name, spec, db_url)
        except DuplicateStudyError as e:
            raise HTTPException(409, str(e)) from None
        except (BitsearchError, OSError) as e:  # anything of ours that made the study impossible: 422
            raise HTTPException(422, str(e)) from None
        if run_studies:
            with runs_lock:
                storage.acquire_study(body.name, me, previous=None)
                start_run(study)
        return _study_out(storage.get_study(body.name))

    def resumable(name: str) -> tuple[StudyInfo, "Study"]:
        """The study to run again in this server (409/403/422 when it cannot be)."""
        info = storage.get_study(name)
        if not run_studies:
            raise HTTPException(409, "this server does not run studies (create_app(run_studies=False))")
        if running_here(name):
            raise HTTPException(409, f"study {name!r} is running in this server")
        busy = _runner_alive(info, lease_timeout_s)
        if busy is None and not (info.owner or "").startswith(API_OWNER):
            live = storage.live_leases(name, lease_timeout_s=lease_timeout_s)
            busy = f"{live} of its candidates are being evaluated now" if live else None
        if busy is not None:
            raise HTTPException(409, f"study {name!r} is being run elsewhere ({busy}); try again later")
        why = _model_error(str(info.spec.get("model", "")), roots)
        if why is not None:
            raise HTTPException(*why)
        return info, _study(storage, name, read_only=False)

    @app.post("/studies/{name}/resume", status_code=202, dependencies=[Depends(write_auth)],
              responses=_responses(401, 403, 404, 409, 413, 422))
    def resume_study(name: str) -> StudyOut:
        """Run an interrupted or failed study again where it stopped, in the background (a server
        resumes the studies its dead predecessor was running by itself, at start)."""
        with runs_lock:
            info, study = resumable(name)
            if info.state == StudyState.COMPLETE:
                raise HTTPException(409, f"study {name!r} is COMPLETE; nothing to resume")
            if not storage.acquire_study(name, me, previous=info.owner):
                raise HTTPException(409, f"study {name!r} was just taken over by another runner")
            storage.set_study_state(name, StudyState.RUNNING)  # clears a FAILED reason until it fails again
            start_run(study)
        return _study_out(storage.get_study(name))

    @app.post("/studies/{name}/samples", status_code=202, dependencies=[Depends(write_auth)],
              responses=_responses(401, 403, 404, 409, 413, 422))
    def make_study_samples(name: str) -> StudyOut:
        """Make the stored sample grid of the chosen config in the background (a study makes it when it
        completes; this is for studies that completed before, or whose chosen config changed)."""
        from search.samples import make_samples

        with runs_lock:
            info, study = resumable(name)
            if not storage.list_evaluations(name):
                raise HTTPException(409, f"study {name!r} has no evaluated candidate yet")
            launch(name, lambda: _make_samples(study, make_samples))
        return _study_out(info)

    @app.get("/studies", dependencies=[Depends(read_auth)], responses=_responses(401))
    def list_studies() -> list[StudyOut]:
        return [_study_out(s) for s in storage.list_studies()]

    @app.get("/studies/{name}", dependencies=[Depends(read_auth)], responses=_responses(401, 404, 409, 422))
    def get_study(name: str) -> StudyDetail:
        from search.validation import stored_validation

        info = storage.get_study(name)
        counts = {s.value: n for s, n in storage.count_candidates(name).items()}
        done = sum(n for s, n in counts.items() if CandidateState(s).is_final)
        study = _study(storage, name)
        return StudyDetail(**_study_out(info).model_dump(), candidates=counts, total=sum(counts.values()), done=done,
                           evaluations={f: list(v) for f, v in study.evaluation_counts().items()},
                           validation=stored_validation(study.cache))

    @app.get("/studies/{name}/candidates", dependencies=[Depends(read_auth)], responses=_responses(401, 404, 422))
    def list_candidates(name: str, state: Annotated[list[CandidateState] | None, Query()] = None,
                        origin: Annotated[list[Origin] | None, Query()] = None) -> list[CandidateOut]:
        cands = storage.list_candidates(name, states=state or None,
                                        origins=None if not origin else [o.value for o in origin])
        return [CandidateOut(id=c.id, origin=c.origin, state=c.state.value, attempts=c.attempts,
                             reason=c.reason, config=c.config) for c in cands]

    @app.get("/studies/{name}/pareto", dependencies=[Depends(read_auth)], responses=_responses(401, 404, 409, 422))
    def pareto(name: str, objectives: Annotated[str, Query(pattern=r"^[a-z0-9_]+(,[a-z0-9_]+)+$",
                                                           max_length=200)] = "quality,wbits") -> list[FrontPointOut]:
        study = _study(storage, name)
        if not storage.list_evaluations(name):
            return []
        front = study.pareto(tuple(objectives.split(",")))
        return [FrontPointOut(candidate_id=p.candidate_id, origin=p.origin, metrics=p.metrics, costs=p.costs,
                              measured=p.measured) for p in front]

    @app.get("/studies/{name}/page", dependencies=[Depends(read_auth)],
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}},
                        **_responses(401, 404, 409, 422)})
    def study_page(name: str) -> HTMLResponse:
        """A web page: the Pareto front (plotly), the chosen config's bits heat map and sample images."""
        from search.api.page import render_page

        return HTMLResponse(render_page(_study(storage, name)))

    @app.get("/studies/{name}/samples.png", dependencies=[Depends(read_auth)],
             responses={200: {"content": {"image/png": {}}}, **_responses(401, 404, 409, 422)})
    def study_samples(name: str) -> Response:
        """Full precision vs the chosen (best-PSNR front) config: the grid the study stored (never made here)."""
        from search.front import chosen_point
        from search.samples import stored_samples

        study = _study(storage, name)
        chosen = chosen_point(study.front_points())
        if chosen is None:
            raise HTTPException(404, f"study {name!r} has no evaluated candidate yet, so no sample grid")
        png = stored_samples(study, chosen)
        if png is None:
            raise HTTPException(404, f"no sample grid is stored for study {name!r} (candidate {chosen.candidate_id}); "
                                "the study makes it when it completes, or make it with "
                                f"POST /studies/{name}/samples")
        return Response(png, media_type="image/png")

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_min_js() -> Response:
        from search.api.page import plotly_js

        js = plotly_js()
        if js is None:
            raise HTTPException(404, "plotly is not installed on the server")
        return Response(js, media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/studies/{name}/candidates/{candidate_id}/export", dependencies=[Depends(read_auth)],
             responses=_responses(401, 404, 409, 422))
    def export_candidate(name: str, candidate_id: int,
                         format: Annotated[str, Query(pattern=FORMAT_PATTERN)] = "json",
                         group: Annotated[int | None, Query(ge=0, le=1000)] = None) -> Response:
        from search.exports import PER_LAYER_FORMATS, export, format_options

        study = _study(storage, name)
        cand = next((c for c in storage.list_candidates(name) if c.id == candidate_id), None)
        if cand is None:
            raise HTTPException(404, f"study {name!r} has no candidate {candidate_id}")
        options: dict[str, Any] = {} if group is None or format not in PER_LAYER_FORMATS else {"group": group}
        layers = None
        if "layers" in format_options(format):  # a format that lists the model's layers by name
            if not storage.get_layers(name):
                raise HTTPException(409, f"study {name!r} has no layer inventory yet; try again later")
            layers = study.layers()
        result = export(BitConfig.from_dict(cand.config), format, layers=layers, **options)
        if isinstance(result, dict):
            return Response(json.dumps(result, indent=2), media_type="application/json")
        return PlainTextResponse(result, media_type=MEDIA_TYPES.get(format, "text/plain"))

    return app


def _model_error(model: str, roots: Sequence[Path]) -> tuple[int, str] | None:
    """Why `model` may not be loaded by this server (status, message), or None: `builtin` or another
    installed workload (the `bitsearch.workloads` entry points: code the server's owner installed), or
    an existing directory under a configured root. A plugin given as module:Class or file.py:Class is
    code named by the request: refused. Paths stored in the database are checked again with this."""
    from workloads.base import DIRECTORY_WORKLOADS, WORKLOADS, is_plugin

    if model == BUILTIN_MODEL or (model in WORKLOADS and model not in DIRECTORY_WORKLOADS and not is_plugin(model)):
        return None
    if is_plugin(model):
        return 403, (f"model {model!r} refused: the API runs no code named by a request; install the workload "
                     "as a package with a `bitsearch.workloads` entry point and use its name")
    if not roots:
        return 403, f"model {model!r} refused: only 'builtin' is allowed (no --model-root configured)"
    try:
        path = Path(model).resolve()  # resolves symlinks and '..' before the check
    except (OSError, ValueError) as e:  # a NUL byte, a symlink loop
        return 422, f"model path {model!r} is not usable: {e}"
    if not any(path.is_relative_to(root) for root in roots):
        return 403, f"model path {model!r} is outside the configured model roots ({', '.join(map(str, roots))})"
    if not path.is_dir():
        return 422, f"model path {model!r} is not a directory"
    return None


def _check_model(model: str, roots: Sequence[Path]) -> str:
    """`builtin`, or the resolved path of a directory under a configured root (403/422 otherwise)."""
    why = _model_error(model, roots)
    if why is not None:
        raise HTTPException(*why)
    return model if model == BUILTIN_MODEL else str(Path(model).resolve())


class _NeedsModel(BitsearchError):
    """A read asked for something only the model can compute (reads never load it): 409."""


def _status(e: BitsearchError) -> int | None:
    """The HTTP status of one of our errors, by kind; None for a server-side failure (500)."""
    if isinstance(e, LookupError):  # StudyNotFoundError, CandidateNotFoundError
        return 404
    if isinstance(e, DuplicateStudyError | _NeedsModel):
        return 409
    if isinstance(e, ValueError):  # ConfigError (UnknownNameError ...), WorkloadError, ModelLoadError, ...
        return 422
    return None


class _NoModel:
    """Stands in for the workload of a study opened for reading: any use of it is refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        raise _NeedsModel(f"study {self.name!r} has not stored what this read needs, and reads never run the "
                          "model; try again once the study has progressed")


def _study(storage: Storage, name: str, read_only: bool = True) -> "Study":
    """The stored study; `read_only` (every GET) gives it no model, so a read cannot compute."""
    from search.spec import StudySpec
    from search.study import Study

    spec = StudySpec.from_dict(storage.get_study(name).spec)
    return Study(name, spec, storage, workload=_NoModel(name) if read_only else None)  # type: ignore[arg-type]


def _study_out(info: StudyInfo) -> StudyOut:
    return StudyOut(name=info.name, state=info.state.value, reason=info.reason, spec=info.spec,
                    created_at=info.created_at.isoformat(), updated_at=info.updated_at.isoformat())


def _runner_alive(info: StudyInfo, lease_timeout_s: float) -> str | None:
    """Who runs the study now (a phrase), or None when nobody does: no runner, a heartbeat older than
    `lease_timeout_s`, or a runner process on this machine that is dead (a server killed and restarted
    at once: no need to wait for its lease to expire)."""
    if info.owner is None or info.heartbeat_at is None:
        return None
    age = (datetime.now(timezone.utc) - info.heartbeat_at).total_seconds()
    if age > lease_timeout_s or _dead_here(info.owner):
        return None
    return f"runner {info.owner}, heartbeat {max(age, 0):.0f} s ago"


def _dead_here(owner: str) -> bool:
    """Whether runner id `owner` ("api:host:pid:uuid") names a process of this machine that is gone."""
    parts = owner.removeprefix(API_OWNER).split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # this process: alive, whatever thread runs it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, someone else's
        return False
    return False


def _reason(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def _run(study: "Study", executor: Executor | None, owner: str, interval_s: float) -> None:
    """A study's pipeline in a background thread, holding the study (a heartbeat every `interval_s`); a
    crash marks it FAILED with the reason."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                study.storage.heartbeat_study(study.name, owner)
            except StorageError as e:  # a database hiccup: try again at the next beat
                log.warning("heartbeat of study %s failed: %s", study.name, e)

    beater = threading.Thread(target=beat, name=f"study-heartbeat-{study.name}", daemon=True)
    beater.start()
    try:
        study.run(progress=lambda m: log.info("%s: %s", study.name, m), executor=executor)
    except Exception as e:
        log.exception("study %s failed", study.name)
        try:
            study.storage.set_study_state(study.name, StudyState.FAILED, reason=_reason(e))
        except StorageError:
            log.exception("could not mark study %s failed", study.name)
    finally:
        stop.set()
        beater.join()
        try:
            study.storage.release_study(study.name, owner)
        except StorageError:
            log.exception("could not release study %s", study.name)


def _make_samples(study: "Study", make: Callable[["Study", Callable[[str], None]], bytes | None]) -> None:
    try:
        make(study, lambda m: log.info("%s: %s", study.name, m))
    except Exception:
        log.exception("sample grid of study %s failed", study.name)
