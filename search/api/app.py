"""The FastAPI app factory; `bitsearch serve` runs it with uvicorn."""

import hmac
import json
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from quant.config import BitConfig, ConfigError
from search.api.models import CandidateOut, FrontPointOut, StudyCreate, StudyDetail, StudyOut
from search.executors.base import Executor
from storage import CandidateState, Origin, Storage, StorageError, StudyState
from storage.errors import DuplicateStudyError, StudyNotFoundError

MAX_BODY_BYTES = 64 * 1024
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


def create_app(db_url: str | None, token: str | None, open_reads: bool = False,
               model_roots: Sequence[str | Path] = (), max_body_bytes: int = MAX_BODY_BYTES,
               executor: Callable[[], Executor] | None = None) -> FastAPI:
    """The API over the database at `db_url`. Writes need `Authorization: Bearer <token>` (with no
    token every write is refused); reads too unless `open_reads`. Studies may use the built-in model
    or a model directory under one of `model_roots`, and run in the background on a new executor from
    `executor()` each (default: `local`, in the server's process)."""
    storage = Storage(db_url)
    roots = [Path(r).resolve() for r in model_roots]
    runs: dict[str, threading.Thread] = {}
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

    app = FastAPI(title="bitsearch", summary="Mixed-precision quantization search for diffusion models.",
                  version="1")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.state.storage, app.state.runs = storage, runs

    @app.exception_handler(StudyNotFoundError)
    async def _not_found(_r: Request, e: StudyNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(ConfigError)
    async def _config(_r: Request, e: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/studies", status_code=202, dependencies=[Depends(write_auth)])
    def create_study(body: StudyCreate) -> StudyOut:
        """Create a study and run it in the background on the server's executor."""
        from search.study import Study, StudySpec

        model = _check_model(body.model, roots)
        spec = StudySpec(**{**body.spec_kwargs(), "model": model})
        try:
            storage.get_study(body.name)
            raise HTTPException(409, f"a study named {body.name!r} already exists")
        except StudyNotFoundError:
            pass
        try:
            study = Study.create(body.name, spec, db_url)
        except DuplicateStudyError as e:
            raise HTTPException(409, str(e)) from None
        except (ConfigError, ValueError, StorageError) as e:
            raise HTTPException(422, str(e)) from None
        thread = threading.Thread(target=_run, args=(study, executor() if executor else None),
                                  name=f"study-{body.name}", daemon=True)
        runs[body.name] = thread
        thread.start()
        return _study_out(storage.get_study(body.name))

    @app.get("/studies", dependencies=[Depends(read_auth)])
    def list_studies() -> list[StudyOut]:
        return [_study_out(s) for s in storage.list_studies()]

    @app.get("/studies/{name}", dependencies=[Depends(read_auth)])
    def get_study(name: str) -> StudyDetail:
        info = storage.get_study(name)
        counts = {s.value: n for s, n in storage.count_candidates(name).items()}
        done = sum(n for s, n in counts.items() if CandidateState(s).is_final)
        study = _study(storage, name)
        return StudyDetail(**_study_out(info).model_dump(), candidates=counts, total=sum(counts.values()), done=done,
                           evaluations={f: list(v) for f, v in study.evaluation_counts().items()},
                           validation=study.validation())

    @app.get("/studies/{name}/candidates", dependencies=[Depends(read_auth)])
    def list_candidates(name: str, state: Annotated[list[CandidateState] | None, Query()] = None,
                        origin: Annotated[list[Origin] | None, Query()] = None) -> list[CandidateOut]:
        cands = storage.list_candidates(name, states=state or None, origins=origin or None)
        return [CandidateOut(id=c.id, origin=c.origin.value, state=c.state.value, attempts=c.attempts,
                             reason=c.reason, config=c.config) for c in cands]

    @app.get("/studies/{name}/pareto", dependencies=[Depends(read_auth)])
    def pareto(name: str, objectives: Annotated[str, Query(pattern=r"^[a-z0-9_]+(,[a-z0-9_]+)+$",
                                                           max_length=200)] = "psnr_db,wbits") -> list[FrontPointOut]:
        study = _study(storage, name)
        if not storage.list_evaluations(name):
            return []
        front = study.pareto(tuple(objectives.split(",")))
        return [FrontPointOut(candidate_id=p.candidate_id, origin=p.origin, metrics=p.metrics, costs=p.costs,
                              measured=p.measured) for p in front]

    @app.get("/studies/{name}/page", dependencies=[Depends(read_auth)], response_class=HTMLResponse)
    def study_page(name: str) -> HTMLResponse:
        """A web page: the Pareto front (plotly), the chosen config's bits heat map and sample images."""
        from search.api.page import render_page

        return HTMLResponse(render_page(_study(storage, name)))

    @app.get("/studies/{name}/samples.png", dependencies=[Depends(read_auth)],
             responses={200: {"content": {"image/png": {}}}})
    def study_samples(name: str) -> Response:
        """Full precision vs the chosen (best-PSNR front) config; generated once, then cached as an artifact."""
        from search.api.page import chosen_point, samples_png

        study = _study(storage, name)
        chosen = chosen_point(study)
        if chosen is None:
            raise HTTPException(409, f"study {name!r} has no evaluated candidate yet")
        return Response(samples_png(study, chosen), media_type="image/png")

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_min_js() -> Response:
        from search.api.page import plotly_js

        js = plotly_js()
        if js is None:
            raise HTTPException(404, "plotly is not installed on the server")
        return Response(js, media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/studies/{name}/candidates/{candidate_id}/export", dependencies=[Depends(read_auth)])
    def export_candidate(name: str, candidate_id: int,
                         format: Annotated[str, Query(pattern=r"^(json|yaml|mixdq|torchao|modelopt|step-policy)$")]
                         = "json",
                         group: Annotated[int | None, Query(ge=0)] = None) -> Response:
        from search.exports import export

        study = _study(storage, name)
        cand = next((c for c in storage.list_candidates(name) if c.id == candidate_id), None)
        if cand is None:
            raise HTTPException(404, f"study {name!r} has no candidate {candidate_id}")
        options: dict[str, Any] = {} if group is None or format in ("json", "yaml", "step-policy") else {"group": group}
        layers = None
        if format not in ("json", "yaml"):
            if not storage.get_layers(name):
                raise HTTPException(409, f"study {name!r} has no layer inventory yet; try again later")
            layers = study.layers()
        result = export(BitConfig.from_dict(cand.config), format, layers=layers, **options)
        if isinstance(result, dict):
            return Response(json.dumps(result, indent=2), media_type="application/json")
        return PlainTextResponse(result, media_type=MEDIA_TYPES.get(format, "text/plain"))

    return app


def _check_model(model: str, roots: Sequence[Path]) -> str:
    """`builtin`, or the resolved path of a directory under a configured root (403 otherwise)."""
    if model == BUILTIN_MODEL:
        return model
    if not roots:
        raise HTTPException(403, f"model {model!r} refused: only 'builtin' is allowed (no --model-root configured)")
    path = Path(model).resolve()  # resolves symlinks and '..' before the check
    if not any(path.is_relative_to(root) for root in roots):
        raise HTTPException(403, f"model path {model!r} is outside the configured model roots "
                            f"({', '.join(map(str, roots))})")
    if not path.is_dir():
        raise HTTPException(422, f"model path {model!r} is not a directory")
    return str(path)


def _study(storage: Storage, name: str) -> Any:
    from search.study import Study, StudySpec

    info = storage.get_study(name)
    return Study(name, StudySpec.from_dict(info.spec), storage)


def _study_out(info: Any) -> StudyOut:
    return StudyOut(name=info.name, state=info.state.value, spec=info.spec, created_at=info.created_at.isoformat(),
                    updated_at=info.updated_at.isoformat())


def _run(study: Any, executor: Executor | None) -> None:
    """A study's pipeline in a background thread; a crash marks it FAILED."""
    try:
        study.run(progress=lambda m: log.info("%s: %s", study.name, m), executor=executor)
    except Exception:
        log.exception("study %s failed", study.name)
        try:
            study.storage.set_study_state(study.name, StudyState.FAILED)
        except StorageError:
            log.exception("could not mark study %s failed", study.name)
