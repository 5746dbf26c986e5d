"""The HTTP side of ``t2vturbo serve``: a FastAPI app over a :class:`~.scheduler.Scheduler`, and uvicorn to run it.

The API is OpenAI's video-generation shape (as FastVideo serves it): ``POST /v1/videos`` queues a video and
answers its video object, ``GET /v1/videos/{id}`` polls it, ``GET /v1/videos/{id}/content`` is the file,
``DELETE /v1/videos/{id}`` cancels or removes it, ``GET /v1/videos`` lists them (newest first), ``GET /v1/models``
says what is loaded, with its defaults and limits. ``GET /health`` and the page at ``/`` need no key; OpenAPI
docs are at ``/docs``. Every error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status;
``param`` names the request field that was wrong.
"""

from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import ConfigError
from .limits import MAX_SEED, FieldError, Limits, check_prompt, check_seed, settle_request
from .scheduler import VIDEO_FORMATS, NotAccepting, QueueFull, Scheduler

#: the page's file, shipped as package data
PAGE = "page.html"
#: the largest request body read (a request is a few hundred bytes of JSON)
MAX_BODY = 64 * 1024


class VideoRequest(BaseModel):
    """``POST /v1/videos``: a prompt and, optionally, how to sample it (default: the model's own settings)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the video shows (one line).")
    model: str | None = Field(None, description="A model id from GET /v1/models (default: the first).")
    seed: int | None = Field(None, description=f"0-{MAX_SEED}; the same seed, prompt and options give the same "
                                               "frames as `t2vturbo sample --seed`. Default: a random one, "
                                               "recorded on the video.")
    num_inference_steps: int | None = Field(None, description="Denoiser steps (a student: 4; the teacher: 50).")
    guidance_scale: float | None = Field(None, description="Guidance scale (a student: its guidance input).")
    num_frames: int | None = Field(None, description="Frames of the video.")
    size: str | None = Field(None, description="WIDTHxHEIGHT in pixels, e.g. 256x256.")
    fps: int | None = Field(None, description="Frame rate of the file (and of an fps-conditioned model).")
    motion_guidance: float | None = Field(None, description="T2V-Turbo-v2 motion-guided students: the scale.")
    motion_percentage: float | None = Field(None, description="T2V-Turbo-v2 students: share of steps guided.")


def error_response(status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error shape."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _validation_message(err: dict) -> tuple[str | None, str]:
    """(param, one line) for pydantic's first error."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        return None, "the request body is not valid JSON"
    if param is None:
        return None, "the request body must be a JSON object (Content-Type: application/json) with a prompt"
    if kind == "missing":
        return param, f"{param} is required"
    if kind == "extra_forbidden":
        known = ", ".join(VideoRequest.model_fields)
        return param, f"unknown field {param}; the fields are {known}"
    return param, f"{param}: {err.get('msg', 'invalid value')}"


def describe_model(model_id: str, model, limits: Limits, created: int) -> dict:
    """A ``GET /v1/models`` entry: the model, what a request gets when it gives no option, and the limits."""
    d = model.defaults
    caps = limits.caps(model)
    spec = Path(model.spec)
    defaults = {"num_inference_steps": d.steps, "guidance_scale": d.guidance, "num_frames": d.frames,
                "size": f"{d.width}x{d.height}", "fps": d.fps}
    if d.motion is not None:
        defaults.update(motion_guidance=d.motion.scale, motion_percentage=d.motion.percentage)
    return {"id": model_id, "object": "model", "created": created, "owned_by": "t2vturbo", "mode": model.mode,
            # a local folder is named, not its path: the file system stays out of the API
            "base_model": spec.name if spec.exists() else model.spec,
            "defaults": defaults,
            "limits": {"prompt_chars": caps["prompt_chars"], "num_inference_steps": caps["num_inference_steps"],
                       "num_frames": caps["num_frames"], "size": f"{caps['width']}x{caps['height']}",
                       "fps": caps["fps"], "seed": MAX_SEED}}


def create_app(scheduler: Scheduler, *, limits: Limits | None = None, api_key: str | None = None,
               allowed_hosts: Collection[str] | None = None, close_timeout: float | None = None,
               stop_now: Callable[[], bool] = lambda: False) -> FastAPI:
    """The app. Its lifespan starts the scheduler's worker and, at shutdown, closes it (queued jobs fail, the
    running batch is waited for up to ``close_timeout``, default the job timeout, or until ``stop_now()``).

    ``allowed_hosts``: the only ``Host`` names answered (None: any). A keyless server on loopback passes the
    loopback names, so a web page whose own name was re-pointed at 127.0.0.1 (DNS rebinding) cannot use it.
    """
    limits = limits or Limits()
    hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}
    page = resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")
    started = int(time.time())
    key = api_key.encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.close, close_timeout, stop_now)

    app = FastAPI(title="t2vturbo serve", version="1",
                  description="Text-to-video with a T2V-Turbo student (or its teacher), in OpenAI's video API shape.",
                  lifespan=lifespan)

    def authorized(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key):
            raise HTTPException(401, "a valid API key is required: send the header 'Authorization: Bearer KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        param, message = _validation_message(exc.errors()[0] if exc.errors() else {})
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind=kind, headers=exc.headers)

    @app.exception_handler(FieldError)
    async def _field(request: Request, exc: FieldError):
        return error_response(400, str(exc), param=exc.param, code="invalid_value")

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull):
        return error_response(429, str(exc), kind="rate_limit_error", code="queue_full",
                              headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NotAccepting)
    async def _stopping(request: Request, exc: NotAccepting):
        return error_response(503, str(exc), kind="server_error", code="shutting_down")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        if hosts is not None:
            name = urlsplit("//" + request.headers.get("host", "")).hostname or ""
            if name.lower() not in hosts:
                return error_response(400, f"this server answers only as {', '.join(sorted(hosts))}; open it by "
                                           "that name (or give it an --api-key)")
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY:
            return error_response(413, f"the request body is larger than {MAX_BODY // 1024} KiB")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def _unknown(video_id: str) -> HTTPException:
        return HTTPException(404, f"no video with id {video_id!r} (unknown, deleted, or past the server's retention)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", tags=["server"])
    async def health() -> dict:
        """Whether the server accepts videos, its models, whether it needs a key, and its queue."""
        return {"status": "ok" if scheduler.accepting else "stopping", "models": list(scheduler.models),
                "auth": key is not None, **scheduler.stats()}

    @app.get("/v1/models", dependencies=guarded, tags=["models"])
    async def models() -> dict:
        return {"object": "list",
                "data": [describe_model(i, m, limits, started) for i, m in scheduler.models.items()]}

    @app.post("/v1/videos", dependencies=guarded, tags=["videos"])
    async def create_video(body: VideoRequest) -> dict:
        """Queue a video; poll ``GET /v1/videos/{id}`` until its status is completed or failed."""
        model_id = body.model or scheduler.default_model
        if model_id not in scheduler.models:
            raise FieldError("model", f"unknown model {model_id!r}; this server has {', '.join(scheduler.models)}")
        prompt = check_prompt(body.prompt, limits)
        settings = settle_request(scheduler.models[model_id], limits, steps=body.num_inference_steps,
                                  guidance=body.guidance_scale, frames=body.num_frames, size=body.size,
                                  fps=body.fps, motion_guidance=body.motion_guidance,
                                  motion_percentage=body.motion_percentage)
        job = scheduler.submit(model_id, prompt, check_seed(body.seed), settings)
        return scheduler.get(job.id) or job.video_object()

    @app.get("/v1/videos", dependencies=guarded, tags=["videos"])
    async def list_videos(limit: int = 100) -> dict:
        """The videos since the server started (newest first; at most ``limit``)."""
        return {"object": "list", "data": scheduler.recent(max(1, min(limit, 1000)))}

    @app.get("/v1/videos/{video_id}", dependencies=guarded, tags=["videos"])
    async def get_video(video_id: str) -> dict:
        obj = scheduler.get(video_id)
        if obj is None:
            raise _unknown(video_id)
        return obj

    @app.get("/v1/videos/{video_id}/content", dependencies=guarded, tags=["videos"],
             responses={200: {"content": {m: {} for m in VIDEO_FORMATS.values()}}})
    async def get_content(video_id: str):
        """The video file, once completed (409 before)."""
        found = scheduler.content(video_id)
        if found is None:
            raise _unknown(video_id)
        obj, path = found
        if path is None:
            return error_response(409, f"video {video_id} is {obj['status']}; its content is there once it is "
                                       "completed", code="not_ready")
        return FileResponse(path, media_type=VIDEO_FORMATS[scheduler.fmt], filename=path.name,
                            content_disposition_type="inline")

    @app.delete("/v1/videos/{video_id}", dependencies=guarded, tags=["videos"])
    async def delete_video(video_id: str) -> dict:
        """Cancel a queued or running video, or remove a finished one and its file."""
        obj = scheduler.delete(video_id)
        if obj is None:
            raise _unknown(video_id)
        return {**obj, "deleted": True}

    return app


# ---------------------------------------------------------------------------------------------- running it
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """A server reachable from other machines needs a key, unless the user says ``--insecure``."""
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty; give a secret string (e.g. from `openssl rand -hex 16`)")
    if is_loopback(host) or api_key or insecure:
        return
    raise ConfigError(f"--host {host} lets other machines reach the server: give --api-key KEY (or set "
                      "T2VTURBO_API_KEY) so that only clients with the key can use it, or --insecure to serve "
                      "without one")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or one line saying why not."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        return socket.create_server(address[:2], family=family)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --host or "
                          "--port") from None


def run_server(scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               insecure: bool = False, limits: Limits | None = None,
               on_ready: Callable[[str], None] = lambda url: None, log_level: str = "warning") -> None:
    """Serve until Ctrl-C or SIGTERM: then stop accepting, fail the queued videos, finish the running batch (up
    to the job timeout) and return (the command exits 0)."""
    import uvicorn

    check_exposure(host, api_key, insecure)
    sock = bind(host, port)
    held: dict[str, uvicorn.Server] = {}
    # a second Ctrl-C (uvicorn's force_exit) stops the running batch at its next step
    names = LOOPBACK_NAMES if is_loopback(host) and not api_key else None
    app = create_app(scheduler, limits=limits, api_key=api_key, allowed_hosts=names,
                     stop_now=lambda: held["server"].force_exit)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    server = held["server"] = uvicorn.Server(config)
    shown = sock.getsockname()[0]
    shown = f"[{shown}]" if ":" in shown else shown
    on_ready(f"http://{shown}:{sock.getsockname()[1]}")
    # uvicorn handles SIGINT / SIGTERM (a graceful shutdown), then re-raises the signal on the handlers it found
    # installed: these note it, so that a stop asked for by a signal ends the command normally (exit 0)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
