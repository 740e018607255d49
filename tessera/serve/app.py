"""The web app: server-rendered pages (tokenize, few-shot, chat) over a JSON API, on FastAPI.

    app = create_app(runs_dir="runs", data_dir="runs/serve")      # then: uvicorn.run(app, host="127.0.0.1")

Every page posts to the same functions as its API route (`/api/tokenize`, `/api/fewshot`, `/api/chat`,
`/api/chat/stream`); the OpenAPI schema is at /openapi.json and browsable at /docs. Errors come back as JSON
(`{"error": {"status", "message", "field"}}`) under /api and as an HTML page elsewhere, always with a 4xx for a
bad request (type, size, dimensions, corrupt file, missing field) and a message naming the problem.

What the app writes: only images generated in chat, under `<data_dir>/generated/` (served back from /files/).
Uploads are held in memory (the request body is capped before parsing), never written to disk.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.serve.backends import ChatEvent, ChatRequest, select_chat_backend
from tessera.serve.config import ServeConfig, ServeLimits
from tessera.serve.errors import ServeError
from tessera.serve.models import ModelRegistry
from tessera.serve.services import (
    classify_fewshot,
    load_classifier_folder,
    load_tokenizer_folder,
    png_data_uri,
    tokenize_image,
)
from tessera.serve.uploads import UploadedImage, read_image

__all__ = ["create_app"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"


class _BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes (413) before anything parses them."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send, int(declared))
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ServeError(413, f"the request body is over the limit of {self.limit:,} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: dict, send: Callable[[dict], Awaitable[None]], size: int) -> None:
        err = ServeError(413, f"the request body is {size:,} bytes, over the limit of {self.limit:,} bytes")
        api = scope.get("path", "").startswith("/api")
        body = json.dumps(err.to_json()).encode() if api else f"<h1>413</h1><p>{err.message}</p>".encode()
        ctype = b"application/json" if api else b"text/html; charset=utf-8"
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", ctype), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(runs_dir: str | Path | None = None, data_dir: str | Path | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The app, reading model folders under `runs_dir` and writing only under `data_dir`.

    Args:
        runs_dir: where model folders are found (default: `config.runs_dir`, else `tessera.paths.runs_dir()`).
        data_dir: the app's own folder (default: `config.data_dir`, else `<runs_dir>/serve`).
        config: limits, chat backend choice and the rest (`ServeConfig`).
    """
    from tessera import __version__

    cfg = config or ServeConfig()
    if runs_dir is None:
        if cfg.runs_dir is not None:
            runs_dir = cfg.runs_dir
        else:
            from tessera.paths import runs_dir as default_runs

            runs_dir = default_runs()
    runs = Path(runs_dir).resolve()
    data = Path(data_dir if data_dir is not None else (cfg.data_dir or runs / "serve")).resolve()
    limits: ServeLimits = cfg.limits
    registry = ModelRegistry(runs, cfg.scan_depth, cfg.model_cache)
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    backends: dict[tuple[str, str, float], Any] = {}
    backend_lock = threading.Lock()

    app = FastAPI(title="Tessera", version=__version__, description="Tokenize images, classify from a few examples with "
                  "CAML, and chat with the multimodal decoder. Bad requests get a 4xx with a message naming the problem.")
    app.state.config, app.state.runs_dir, app.state.data_dir, app.state.registry = cfg, runs, data, registry

    # -- errors: JSON under /api, an HTML page elsewhere ----------------------------------------------------------------
    def _error(request: Request, err: ServeError) -> Any:
        if request.url.path.startswith("/api"):
            return JSONResponse(err.to_json(), status_code=err.status)
        return templates.TemplateResponse(request, "error.html", {"err": err, "nav": None}, status_code=err.status)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> Any:
        return _error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        msg = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            msg = f"no page at {request.url.path}"
        return _error(request, ServeError(exc.status_code, msg))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return _error(request, ServeError(422, "; ".join(parts) or "invalid request"))

    # -- helpers ----------------------------------------------------------------------------------------------------
    async def _form(request: Request) -> FormData:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise ServeError(415, f"send the form as multipart/form-data (got {ctype or 'no content type'})")
        try:
            return await request.form(max_files=limits.max_files, max_fields=200, max_part_size=limits.max_prompt_chars * 4 + 1024)
        except StarletteHTTPException as exc:
            raise ServeError(exc.status_code if exc.status_code < 500 else 400, f"could not read the form: {exc.detail}") from exc

    async def _with_form(request: Request, fn: Callable[[FormData], Awaitable[Any]]) -> Any:
        """Run fn on the request's form, then close its uploads (spooled temporary files) whatever happened."""
        form = await _form(request)
        try:
            return await fn(form)
        finally:
            await form.close()

    async def _images(form: FormData, field: str, required: bool = True) -> list[UploadedImage]:
        out = []
        for item in form.getlist(field):
            if isinstance(item, str):
                if item == "":
                    continue  # an empty file input submits an empty string in some browsers
                raise ServeError(422, f"{field}: expected a file upload, got text", field)
            if not item.filename and (item.size or 0) == 0:
                continue  # an empty file input
            data = await item.read(limits.max_upload_bytes + 1)
            out.append(read_image(data, item.filename or "", limits, field))
        if required and not out:
            raise ServeError(422, f"{field}: no image uploaded", field)
        return out

    def _text(form: FormData, field: str, default: str = "", max_chars: int | None = None) -> str:
        value = form.get(field, default)
        if isinstance(value, UploadFile):
            raise ServeError(422, f"{field}: expected text, got a file", field)
        value = str(value)
        cap = max_chars or limits.max_prompt_chars
        if len(value) > cap:
            raise ServeError(422, f"{field}: {len(value)} characters, over the limit of {cap}", field)
        return value

    def _int(form: FormData, field: str, default: int, lo: int, hi: int) -> int:
        raw = _text(form, field, str(default), 32).strip() or str(default)
        try:
            v = int(raw)
        except ValueError as exc:
            raise ServeError(422, f"{field}: expected an integer, got {raw!r}", field) from exc
        if not lo <= v <= hi:
            raise ServeError(422, f"{field}: must be between {lo} and {hi}, got {v}", field)
        return v

    async def _timed(fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.wait_for(run_in_threadpool(fn), timeout=limits.request_timeout_s)
        except asyncio.TimeoutError as exc:
            raise ServeError(504, f"the request took longer than the limit of {limits.request_timeout_s:g} s") from exc
        except ValueError as exc:  # bad input found by the model code (shapes, labels, special tokens)
            raise ServeError(422, str(exc)) from exc

    def _checkpoint(form: FormData) -> str | None:
        return _text(form, "checkpoint", "", 500).strip() or None

    def _models() -> dict[str, list[dict]]:
        return {k: [e.to_json() for e in v] for k, v in registry.scan().items()}

    def _page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Any:
        ctx = {"models": registry.scan(), "limits": limits, "nav": name.removesuffix(".html"), **ctx}
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    # -- the work of each page --------------------------------------------------------------------------------------
    async def do_tokenize(form: FormData) -> dict[str, Any]:
        entry = registry.resolve("tokenizer", _checkpoint(form))
        (img,) = (await _images(form, "image"))[:1]
        result = await _timed(lambda: tokenize_image(registry.load(entry, load_tokenizer_folder), img.image))
        return {"checkpoint": entry.id, "filename": img.filename, "format": img.format, **result}

    async def do_fewshot(form: FormData) -> dict[str, Any]:
        entry = registry.resolve("caml", _checkpoint(form))
        # The API: files `support` with one `labels` value each, in order.
        support = await _images(form, "support", required=False)
        labels = []
        for x in form.getlist("labels"):
            if not isinstance(x, str) or len(x) > 200:
                raise ServeError(422, "labels: each label must be text of at most 200 characters", "labels")
            labels.append(x.strip())
        # The page's form: one name and a file input per class (class_<i>_name, class_<i>_images).
        for i in range(limits.max_way):
            name = _text(form, f"class_{i}_name", "", 200).strip()
            imgs = await _images(form, f"class_{i}_images", required=False)
            if imgs and not name:
                raise ServeError(422, f"class {i + 1} has images but no name", f"class_{i}_name")
            support += imgs
            labels += [name] * len(imgs)
        if not support:
            raise ServeError(422, "no support images: give a few labelled images per class", "support")
        if any(not lab for lab in labels):
            raise ServeError(422, "every support image needs a non-empty label", "labels")
        queries = await _images(form, "queries")
        if len(set(labels)) > limits.max_way:
            raise ServeError(422, f"{len(set(labels))} classes, over the limit of {limits.max_way}", "labels")
        names = [q.filename for q in queries]
        result = await _timed(lambda: classify_fewshot(registry.load(entry, load_classifier_folder), [s.image for s in support], labels,
                                                        [q.image for q in queries], names))
        return {"checkpoint": entry.id, **result}

    async def chat_request(form: FormData) -> tuple[Any, ChatRequest, str, str]:
        entry = registry.resolve("lm", _checkpoint(form))
        images = await _images(form, "images", required=False)
        prompt = _text(form, "prompt")
        draw = _text(form, "draw", "", 8).lower() in ("1", "true", "on", "yes")
        if not prompt.strip() and not images:
            raise ServeError(422, "prompt: give some text and/or an image", "prompt")
        req = ChatRequest(prompt=prompt, images=[i.image for i in images],
                          max_new_tokens=_int(form, "max_new_tokens", min(64, limits.max_new_tokens), 1, limits.max_new_tokens),
                          draw=draw, seed=_int(form, "seed", 0, 0, 2**31 - 1),
                          deadline=time.monotonic() + limits.request_timeout_s)
        try:
            name, factory = select_chat_backend(cfg.chat_backend, entry.path)
        except ValueError as exc:
            raise ServeError(500, f"chat backend: {exc}") from exc
        key = (name, entry.id, entry.mtime)

        def load() -> Any:
            with backend_lock:
                if key not in backends:
                    backends.clear()  # one chat model in memory at a time
                    backends[key] = factory(entry.path)
                return backends[key]

        backend = await _timed(load)
        return backend, req, name, entry.id

    def save_image(image: Any) -> str:
        import io

        from tessera.io import atomic_write_bytes

        out = data / "generated" / f"{uuid.uuid4().hex}.png"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
        return f"/files/generated/{out.name}"

    def event_json(ev: ChatEvent) -> dict[str, Any]:
        if ev.kind == "image" and ev.image is not None:
            return {"type": "image", "url": save_image(ev.image), "png": png_data_uri(ev.image, max(1, 128 // ev.image.width))}
        return {"type": ev.kind, "text": ev.text}

    async def do_chat(form: FormData) -> dict[str, Any]:
        backend, req, name, ckpt = await chat_request(form)
        events = await _timed(lambda: [event_json(e) for e in backend.stream(req)])
        text = "".join(e["text"] for e in events if e["type"] in ("text", "refusal"))
        return {"checkpoint": ckpt, "backend": name, "text": text, "images": [e for e in events if e["type"] == "image"],
                "events": [e for e in events if e["type"] not in ("image",)]}

    # -- pages ------------------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> Any:
        return _page(request, "index.html", {"runs_dir": runs, "data_dir": data, "version": __version__})

    @app.get("/tokenize", response_class=HTMLResponse, include_in_schema=False)
    async def tokenize_page(request: Request) -> Any:
        return _page(request, "tokenize.html", {"result": None})

    @app.post("/tokenize", response_class=HTMLResponse, include_in_schema=False)
    async def tokenize_post(request: Request) -> Any:
        return _page(request, "tokenize.html", {"result": await _with_form(request, do_tokenize)})

    @app.get("/fewshot", response_class=HTMLResponse, include_in_schema=False)
    async def fewshot_page(request: Request) -> Any:
        return _page(request, "fewshot.html", {"result": None})

    @app.post("/fewshot", response_class=HTMLResponse, include_in_schema=False)
    async def fewshot_post(request: Request) -> Any:
        return _page(request, "fewshot.html", {"result": await _with_form(request, do_fewshot)})

    @app.get("/chat", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page(request: Request) -> Any:
        return _page(request, "chat.html", {"result": None, "prompt": ""})

    @app.post("/chat", response_class=HTMLResponse, include_in_schema=False)
    async def chat_post(request: Request) -> Any:
        async def turn(form: FormData) -> dict[str, Any]:
            return {"result": await do_chat(form), "prompt": _text(form, "prompt")}

        return _page(request, "chat.html", await _with_form(request, turn))

    @app.get("/files/generated/{name}", include_in_schema=False)
    async def generated_file(name: str) -> Any:
        if not (len(name) == 36 and name.endswith(".png") and all(c in "0123456789abcdef" for c in name[:32])):
            raise ServeError(404, f"no generated file {name!r}")
        path = data / "generated" / name
        if not path.is_file():
            raise ServeError(404, f"no generated file {name!r}")
        return FileResponse(path, media_type="image/png")

    # -- JSON API ---------------------------------------------------------------------------------------------------

    @app.get("/api/health", tags=["meta"], summary="liveness and version")
    async def api_health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/models", tags=["meta"], summary="model folders found under the runs folder, by kind")
    async def api_models() -> dict[str, Any]:
        return {"runs_dir": str(runs), "models": _models()}

    @app.get("/api/limits", tags=["meta"], summary="the limits every request is held to")
    async def api_limits() -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(limits)

    @app.post("/api/tokenize", tags=["tokenize"], openapi_extra=_with_fields({"image": "binary", "checkpoint": "string"}, ["image"]),
              summary="token grid, reconstruction and per-token codebook usage of one image")
    async def api_tokenize(request: Request) -> dict[str, Any]:
        return await _with_form(request, do_tokenize)

    @app.post("/api/fewshot", tags=["few-shot"],
              openapi_extra=_with_fields({"support": "binary[]", "labels": "string[]", "queries": "binary[]", "checkpoint": "string"},
                                         ["support", "labels", "queries"]),
              summary="CAML's class probabilities for the queries, given labelled support images")
    async def api_fewshot(request: Request) -> dict[str, Any]:
        return await _with_form(request, do_fewshot)

    _chat_fields = {"prompt": "string", "images": "binary[]", "draw": "boolean", "max_new_tokens": "integer", "seed": "integer",
                    "checkpoint": "string"}

    @app.post("/api/chat", tags=["chat"], openapi_extra=_with_fields(_chat_fields, ["prompt"]),
              summary="one chat turn with the multimodal decoder: text and generated images, all at once")
    async def api_chat(request: Request) -> dict[str, Any]:
        return await _with_form(request, do_chat)

    @app.post("/api/chat/stream", tags=["chat"], openapi_extra=_with_fields(_chat_fields, ["prompt"]),
              summary="one chat turn streamed as server-sent events (text pieces, images, done)")
    async def api_chat_stream(request: Request) -> Any:
        backend, req, name, ckpt = await _with_form(request, chat_request)  # the stream needs only the parsed request
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def produce() -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, {"type": "start", "backend": name, "checkpoint": ckpt})
                for ev in backend.stream(req):
                    loop.call_soon_threadsafe(queue.put_nowait, event_json(ev))
            except Exception as exc:  # noqa: BLE001 - reported to the client as an error event, the stream then ends
                loop.call_soon_threadsafe(queue.put_nowait, {"type": "error", "text": f"{type(exc).__name__}: {exc}"})
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=produce, name="tessera-chat", daemon=True).start()

        async def events() -> Any:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield f"event: {item['type']}\ndata: {json.dumps(item)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Any:
        return HTMLResponse("", status_code=204)

    app.add_middleware(_BodyLimit, limit=limits.max_request_bytes)  # outermost: the cap applies before any parsing
    return app


def _with_fields(fields: dict[str, str], required: list[str]) -> dict:
    """OpenAPI request body for a multipart form with the given fields (routes read the form themselves)."""
    props: dict[str, Any] = {}
    for name, kind in fields.items():
        many = kind.endswith("[]")
        kind = kind.removesuffix("[]")
        item = {"type": "string", "format": "binary"} if kind == "binary" else {"type": kind}
        props[name] = {"type": "array", "items": item} if many else item
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": props,
                                                                                              "required": required}}}}}
