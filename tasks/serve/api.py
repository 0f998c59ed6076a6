"""`medlora serve`: the champion bundle behind an OpenAI-compatible API (FastAPI on uvicorn).

- POST /v1/chat/completions and /v1/completions: `model` names an expert, `base`, or `auto` (the
  router's mix; the bundle's registered name means the same). Greedy by default (temperature 0).
  A `context` field (an extension) turns the prompt, or the last user message, into a question
  about that context, answered yes / no / maybe first. `stream: true` sends tokens as server-sent
  events. Each answer carries a `medlora` object: experts and weights, safety flags, needs_review.
- GET /v1/models, /health (the process is up), /ready (a model is loaded), /metrics (Prometheus).

Errors are short JSON in OpenAI's shape, with no stack trace and none of the request's text: 400 for
a malformed or invalid request, 404 for an unknown model, 413 for a prompt over the size limit, 429
when the queue is full, 503 before a model is loaded, 500 for anything else (logged by type only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.finetune.examples import Request, chat_messages
from tasks.serve.batching import Batcher, Job, QueueFull, ServeMetrics
from tasks.serve.engine import AUTO, Answer, Ask
from tasks.serve.reload import ModelHolder

log = logging.getLogger("medlora.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationFields(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we neither need nor refuse (user, seed, ...)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    logprobs: bool | int | None = None
    context: str | None = None  # medlora: the prompt becomes a question about this context
    ignore_eos: bool = False    # as vLLM: generate the whole budget (benchmarks)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def unsupported(self) -> None:
        if self.stop:
            raise ApiError(400, "stop sequences are not supported", param="stop")
        if self.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")


class ChatRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(GenerationFields):
    prompt: str | list[str]


def _short_validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """The first problem, by field and reason only: pydantic's own messages quote the input."""
    problems = error.errors()
    if not problems:
        return "the request is not valid", None
    first = problems[0]
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    reason = first.get("msg", "is not valid").removeprefix("Value error, ")
    field = ".".join(location) or "body"
    return f"{field}: {reason}", field


def create_app(holder: ModelHolder, batcher: Batcher, metrics: ServeMetrics, max_request_chars: int, lifespan=None) -> FastAPI:
    app = FastAPI(title="medlora", docs_url=None, redoc_url=None, lifespan=lifespan)

    def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                       headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HttpRequest, error: RequestValidationError):
        message, param = _short_validation_message(error)
        return error_response(400, message, param=param)

    @app.exception_handler(ApiError)
    async def _api_error(request: HttpRequest, error: ApiError):
        headers = {"Retry-After": "1"} if error.status == 429 else None
        return error_response(error.status, error.message, error.kind, error.param, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: HttpRequest, error: Exception):
        log.error("%s %s failed: %s", request.method, request.url.path, type(error).__name__)
        return error_response(500, "internal error", "server_error")

    @app.middleware("http")
    async def _count(request: HttpRequest, call_next):
        response = await call_next(request)
        path = request.url.path if request.url.path in ENDPOINTS else "other"  # bounded label values
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    def served():
        if holder.current is None:
            raise ApiError(503, "no model is loaded yet", "server_error")
        return holder.current

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        system = served()
        return {"status": "ready", "model": system.name, "version": system.version}

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models():
        system = served()
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "medlora", "created": 0,
                                             "version": system.version} for m in system.models]}

    def ask_for(body: GenerationFields, request: Request) -> Ask:
        body.unsupported()
        system = served()
        model = AUTO if body.model == system.name else body.model
        if model not in system.models:
            raise ApiError(404, f"model {body.model!r} is not served; GET /v1/models lists what is", param="model")
        ask = Ask(request, model, body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p, body.ignore_eos)
        try:
            system.check(ask)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        return ask

    def checked_length(*texts: str) -> None:
        size = sum(len(t) for t in texts)
        if size > max_request_chars:
            raise ApiError(413, f"the prompt is {size} characters; the limit is {max_request_chars}")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        checked_length(*(m.content for m in body.messages), body.context or "")
        try:
            messages = chat_messages([m.model_dump() for m in body.messages], "request")
        except ValueError as error:
            raise ApiError(400, str(error), param="messages") from None
        if body.context is not None:
            question = next(c for r, c in reversed(messages) if r == "user" and c.strip())
            request = _question(question, body.context)
        else:
            request = Request(messages=messages)
        return await answer(body, ask_for(body, request), http, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request (they are batched on the server)", param="prompt")
        prompt = prompts[0]
        checked_length(prompt, body.context or "")
        if not prompt.strip():
            raise ApiError(400, "prompt is empty", param="prompt")
        request = _question(prompt, body.context) if body.context is not None else Request(text=prompt)
        return await answer(body, ask_for(body, request), http, chat=False)

    async def answer(body: GenerationFields, ask: Ask, http: HttpRequest, chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(ask, on_done=lambda a, e: loop.call_soon_threadsafe(events.put_nowait, ("done", a, e)),
                  on_token=(lambda text: loop.call_soon_threadsafe(events.put_nowait, ("token", text, None))) if body.stream else None)
        try:
            batcher.submit(job)
        except QueueFull as error:
            raise ApiError(429, str(error), "rate_limit_error") from None
        identifier = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.stream:
            try:
                _, result, error = await _until_done(events)
            except asyncio.CancelledError:
                job.cancelled.set()
                raise
            _raise_for(error)
            return _response(identifier, created, body.model, result, chat, holder.source.name)

        async def stream():
            try:
                while True:
                    kind, value, error = await events.get()
                    if kind == "token":
                        yield _sse(_chunk(identifier, created, body.model, chat, text=value))
                        continue
                    if error is not None:
                        status, message = _error_of(error)
                        yield _sse({"error": {"message": message, "type": "server_error" if status >= 500 else
                                              "invalid_request_error", "code": status}})
                    else:
                        yield _sse(_chunk(identifier, created, body.model, chat, finished=value.finished,
                                          extension=_extension(value, holder.source.name)) | {"usage": _usage(value)})
                    yield "data: [DONE]\n\n"
                    return
            finally:
                job.cancelled.set()  # a client gone before the end: its row stops at the next step

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _question(question: str, context: str) -> Request:
    if not context.strip():
        raise ApiError(400, "context is empty", param="context")
    return Request(question=question, context=context)


async def _until_done(events: asyncio.Queue):
    while True:
        event = await events.get()
        if event[0] == "done":
            return event


def _error_of(error: Exception) -> tuple[int, str]:
    if isinstance(error, ValueError):
        return 400, str(error)
    log.error("a request failed: %s", type(error).__name__)
    return 500, "internal error"


def _raise_for(error: Exception | None) -> None:
    if error is not None:
        status, message = _error_of(error)
        raise ApiError(status, message, "server_error" if status >= 500 else "invalid_request_error")


def _extension(answer: Answer, name: str) -> dict:
    extension = {"expert": answer.expert, "weights": answer.weights, "flags": answer.flags,
                 "needs_review": answer.needs_review, "answered_by": answer.model,
                 "router_ms": round(1000 * answer.router_seconds, 2),
                 "bundle": {"name": name, "version": answer.version}}
    if answer.answer is not None:
        extension |= {"answer": answer.answer, "answer_probabilities": answer.answer_probabilities}
    return extension


def _response(identifier: str, created: int, model: str, answer: Answer, chat: bool, name: str) -> dict:
    choice = {"index": 0, "finish_reason": answer.finished}
    choice |= {"message": {"role": "assistant", "content": answer.text}} if chat else {"text": answer.text, "logprobs": None}
    return {"id": identifier, "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": _usage(answer), "medlora": _extension(answer, name)}


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _chunk(identifier: str, created: int, model: str, chat: bool, text: str = "", finished: str | None = None,
           extension: dict | None = None) -> dict:
    choice = {"index": 0, "finish_reason": finished}
    choice |= {"delta": {"content": text} if text else {}} if chat else {"text": text, "logprobs": None}
    chunk = {"id": identifier, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
             "model": model, "choices": [choice]}
    if extension is not None:
        chunk["medlora"] = extension
    return chunk


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
