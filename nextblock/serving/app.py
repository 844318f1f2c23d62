"""The OpenAI-compatible HTTP server: routes, OpenAI-style errors, streaming (SSE).

    nextblock serve [--model M] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    app = create_app(nextblock.load())            # for uvicorn or tests

Routes: GET /health, GET /v1/models, GET /metrics, POST /v1/completions, POST
/v1/chat/completions. Decoding goes through serving.scheduler (continuous batching); a
streamed response sends a chunk as each block (AR: each token) commits. Client mistakes
get 400/401/404/413/429 with {"error": {"message", "type", "param", "code"}}; a server
error is logged with its request id and answered with 500 carrying the same id.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .. import text as textlib
from ..errors import NextBlockError
from .scheduler import QueueFull, Scheduler, ShuttingDown, TooLarge
from .schemas import ChatRequest, CompletionRequest

log = logging.getLogger("nextblock.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type_)
        self.headers = headers


def error_response(status: int, message: str, param=None, code=None,
                   type_: str = "invalid_request_error", headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _param_of(config_error: str) -> str | None:
    """'invalid block_size=0: ...' -> 'block_size' (DecodeSettings' error format)."""
    if config_error.startswith("invalid ") and "=" in config_error:
        return config_error[len("invalid "):].split("=", 1)[0]
    return None


def create_app(lm, *, served_name: str | None = None, api_key: str | None = None,
               max_batch: int = 8, max_queue: int = 64, max_tokens_limit: int = 4096,
               max_body_bytes: int = 1 << 20, reasoning=("<think>", "</think>"),
               shutdown_timeout: float = 30.0) -> FastAPI:
    name = served_name or Path(str(lm.name)).name  # never a filesystem path to clients
    sched = Scheduler(lm, max_batch=max_batch, max_queue=max_queue)
    api = Completions(lm, sched, name, max_tokens_limit, tuple(reasoning))

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, sched.close, shutdown_timeout)

    # no /docs or /redoc: their pages load assets from a CDN, which a local server cannot
    # reach; the schema stays at /openapi.json
    app = FastAPI(title="nextblock", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler = sched
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _install_guard(app, api_key)
    _install_error_handlers(app)
    created = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "queued": sched.queued(),
                "active": sched.active()}

    @app.get("/metrics")
    async def metrics():
        return sched.stats()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model",
                                            "created": created, "owned_by": "nextblock"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.text()} for m in req.messages]
        ids = _encode("messages", lm.encode, messages, True)
        return await api.respond(req, request, [ids], chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [_encode("prompt", lm.encode, p, False) for p in req.prompt]
        return await api.respond(req, request, prompts, chat=False)

    return app


def _install_guard(app: FastAPI, api_key: str | None) -> None:
    """A request id on every response; the API key (not for /health); any unexpected
    exception logged with that id and answered with 500."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        rid = uuid.uuid4().hex[:12]
        request.state.rid = rid
        headers = {"x-request-id": rid}
        if api_key and request.url.path != "/health":
            auth = request.headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or invalid API key (Authorization: "
                                      "Bearer KEY)", code="invalid_api_key", headers=headers)
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001
            log.exception("request %s failed", rid)
            return error_response(500, f"internal server error (request id {rid})",
                                  type_="server_error", headers=headers)
        response.headers["x-request-id"] = rid
        return response


def _install_error_handlers(app: FastAPI) -> None:
    """Validation errors, APIError and HTTP errors in the OpenAI error format."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        tags = {"body", "str", "int", "float", "bool"}  # union members, not fields
        loc = [str(x) for x in err.get("loc", ()) if x not in tags and "[" not in str(x)]
        if err.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {err.get('msg')}")
        param = ".".join(loc) or None
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            msg = "unrecognized request argument"
        elif err.get("type") == "missing":
            msg = "required field is missing"
        return error_response(400, f"{param}: {msg}" if param else msg, param=param,
                              code="invalid_value")

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.type,
                              headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), code="not_found"
                              if exc.status_code == 404 else None)


def _encode(param, fn, *args):
    """A prompt's token ids; a client mistake in it is a 400 naming `param`."""
    try:
        return fn(*args)
    except NextBlockError as e:
        code = "context_length_exceeded" if "context" in str(e) else "invalid_value"
        raise APIError(400, str(e), param, code) from None


class Completions:
    """The completion routes' work: check a request against the model and the server's
    limits, submit its rows to the scheduler, and answer whole or streamed (SSE)."""

    def __init__(self, lm, sched: Scheduler, name: str, max_tokens_limit: int,
                 reasoning_markers: tuple[str, str]):
        self.lm, self.sched, self.name = lm, sched, name
        self.max_tokens_limit, self.reasoning_markers = max_tokens_limit, reasoning_markers

    def prepare(self, req, prompts: list[list[int]]):
        """(settings, jobs, event queue) of a request, or an APIError naming its field."""
        lm = self.lm
        if req.model != self.name:
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves "
                           f"'{self.name}'", "model", "model_not_found")
        limit = min(self.max_tokens_limit, lm.context_length)
        budget = req.budget(min(lm.settings().max_new_tokens, limit))
        if budget > limit:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{field}={budget} is above this server's limit of {limit}",
                           field, "invalid_value")
        try:
            settings = lm.settings(max_new_tokens=budget, **req.settings())
        except NextBlockError as e:
            raise APIError(400, str(e), _param_of(str(e)), "invalid_value") from None
        for ids in prompts:
            if len(ids) >= lm.context_length:
                raise APIError(400, f"the prompt is {len(ids)} tokens long but the model's "
                               f"context is {lm.context_length} tokens", "messages"
                               if isinstance(req, ChatRequest) else "prompt",
                               "context_length_exceeded")
        return (settings, *self._submit(req, prompts, settings, budget))

    def _submit(self, req, prompts, settings, budget):
        try:
            return self.sched.submit(prompts, settings, budget, req.seed, req.n)
        except TooLarge as e:
            raise APIError(400, str(e), "n" if req.n > 1 else "prompt",
                           "invalid_value") from None
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", code="rate_limit_exceeded",
                           type_="rate_limit_error", headers={"Retry-After": "1"}) from None
        except ShuttingDown as e:
            raise APIError(503, str(e), code="shutting_down", type_="server_error") from None

    async def respond(self, req, request: Request, prompts, chat: bool):
        settings, jobs, queue = self.prepare(req, prompts)
        rid = ("chatcmpl-" if chat else "cmpl-") + request.state.rid
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.name}
        usage_in = sum(len(p) for p in prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self.stream(head, jobs, queue, settings, chat, usage_in, include_usage),
                media_type="text/event-stream", headers={"x-request-id": request.state.rid})
        done = await self._collect(request, jobs, queue)
        if isinstance(done, JSONResponse):
            return done
        out_tokens = sum(len(j.tokens) for j in jobs)
        return {**head, "choices": [self._choice(j, done, settings, chat) for j in jobs],
                "usage": {"prompt_tokens": usage_in, "completion_tokens": out_tokens,
                          "total_tokens": usage_in + out_tokens}}

    async def _collect(self, request: Request, jobs, queue):
        """Wait for every row's end (their finish reasons by index); a client that hangs
        up, checked while tokens flow too, frees its slots."""
        async def hang_up():  # the body is read: the next ASGI message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(hang_up())
        try:
            done: dict[int, str] = {}
            while len(done) < len(jobs):
                try:
                    index, kind, value = await asyncio.wait_for(queue.get(), 0.25)
                except asyncio.TimeoutError:
                    index = kind = None
                if watcher.done():
                    return error_response(400, "client disconnected")
                if kind == "error":
                    raise APIError(503, value, type_="server_error", code="unavailable")
                if kind == "done":
                    done[index] = value
            return done
        finally:
            watcher.cancel()
            self._release(jobs)

    def _release(self, jobs) -> None:
        for j in jobs:
            if not j.done:
                self.sched.cancel(j)

    def _choice(self, j, done: dict[int, str], settings, chat: bool) -> dict:
        text = textlib.final_text(self.lm.tokenizer, j.tokens, settings.stop)
        if not chat:
            return {"index": j.index, "text": text, "finish_reason": done[j.index],
                    "logprobs": None}
        reasoning, content = textlib.ReasoningSplitter(*self.reasoning_markers).split(text)
        msg = {"role": "assistant", "content": content}
        if reasoning:
            msg["reasoning_content"] = reasoning
        return {"index": j.index, "message": msg, "finish_reason": done[j.index],
                "logprobs": None}

    async def stream(self, head, jobs, queue, settings, chat, usage_in, include_usage):
        """Server-sent events: a chunk as each block commits, then [DONE]."""
        sse = _Chunks({**head, "object": "chat.completion.chunk" if chat else
                       "text_completion"}, jobs, self.lm.tokenizer, settings.stop, chat,
                      include_usage, self.reasoning_markers)
        try:
            if chat:
                for j in jobs:
                    yield sse.chunk(j.index, {"role": "assistant", "content": ""})
            finished = 0
            while finished < len(jobs):
                index, kind, value = await queue.get()
                if kind == "error":
                    err = {"error": {"message": value, "type": "server_error", "param": None,
                                     "code": "unavailable"}}
                    yield f"data: {json.dumps(err)}\n\n"
                    return
                for piece in sse.pieces(index, value if kind == "tokens" else [],
                                        kind == "done"):
                    yield piece
                if kind == "done":
                    yield sse.chunk(index, finish=value)
                    finished += 1
            if include_usage:
                out = sum(len(j.tokens) for j in jobs)
                usage = {"prompt_tokens": usage_in, "completion_tokens": out,
                         "total_tokens": usage_in + out}
                yield f"data: {json.dumps({**sse.head, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # finished, or the client went away: free every slot still held
            self._release(jobs)


class _Chunks:
    """The SSE chunks of one streamed response: text per row as tokens arrive, split
    into reasoning and content for chat."""

    def __init__(self, head, jobs, tokenizer, stop, chat, include_usage, markers):
        self.head, self.chat, self.include_usage = head, chat, include_usage
        self.texts = {j.index: textlib.TextStream(tokenizer, stop) for j in jobs}
        self.splits = {j.index: textlib.ReasoningSplitter(*markers) for j in jobs}

    def chunk(self, index, delta=None, text=None, finish=None) -> str:
        c = {"index": index, "finish_reason": finish}
        if self.chat:
            c["delta"] = delta or {}
        else:
            c["text"], c["logprobs"] = text or "", None
        body = {**self.head, "choices": [c]}
        if self.include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    def pieces(self, index, toks, final) -> list[str]:
        delta = self.texts[index].push(toks, final=final)
        if not self.chat:
            return [self.chunk(index, text=delta)] if delta else []
        key = {"reasoning": "reasoning_content", "content": "content"}
        return [self.chunk(index, {key[kind]: part})
                for kind, part in self.splits[index].push(delta, final=final) if part]


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 while it streams in
    (chunked bodies have no Content-Length to check up front), and a malformed
    Content-Length gets 400, both in the OpenAI error format. Memory stays bounded by
    max_bytes; the body is handed on to the app unchanged."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        size = headers.get(b"content-length")
        if size is not None and not size.strip().isdigit():
            return await error_response(400, "malformed Content-Length header",
                                        code="invalid_value")(scope, receive, send)
        too_big = error_response(413, f"request body larger than {self.max_bytes} bytes",
                                 code="request_too_large")
        if size is not None and int(size) > self.max_bytes:
            return await too_big(scope, receive, send)
        body, more, seen = [], True, 0
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                return await too_big(scope, receive, send)
            body.append(chunk)
            more = msg.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def _http_protocol():
    """uvicorn's h11 protocol, but the 400 its parser sends for a malformed request (a bad
    Content-Length, a broken request line) is in the OpenAI error format too."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class OpenAIErrorsH11(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            import h11
            body = json.dumps({"error": {
                "message": f"malformed HTTP request: {msg} (check the request line, the "
                           "headers and Content-Length)", "type": "invalid_request_error",
                "param": None, "code": "invalid_request"}}).encode()
            for event in (h11.Response(status_code=400, reason=b"Bad Request", headers=[
                    (b"content-type", b"application/json"), (b"connection", b"close"),
                    (b"content-length", str(len(body)).encode())]),
                    h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return OpenAIErrorsH11


def uvicorn_config(app, host: str, port: int, **kw):
    """The server's uvicorn settings (the CLI and BackgroundServer share them)."""
    import uvicorn
    return uvicorn.Config(app, host=host, port=port, http=_http_protocol(), **kw)


class BackgroundServer:
    """Serve an app with uvicorn in a background thread on a free loopback port (tests,
    benchmarks, notebooks): `s = BackgroundServer(app); s.url; s.stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **uvicorn_kw):
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.app, self.port = app, port
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning",
                                                    **uvicorn_kw))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.05)
        self.url = f"http://{host}:{port}"

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
