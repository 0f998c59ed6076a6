"""Micro-batching for `medlora serve`: requests that arrive within `batch_window_ms` of a batch's first one
(up to `max_batch_size`) are answered in one generation pass, whatever mix each routes to. The queue is
bounded (`max_queue`): a request that finds it full is refused at once (HTTP 429) instead of waiting
without limit. Each batch runs on the model that was current when it started, so a reload never touches
a batch in flight."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tasks.serve.engine import Answer, Ask, BatchTimings, ServedSystem

log = logging.getLogger("medlora.serve")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class QueueFull(Exception):
    pass


class ServeMetrics:
    """Prometheus metrics of one server (its own registry, served at /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("medlora_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.request_seconds = Histogram("medlora_request_seconds", "time from a request's arrival to its last token",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.first_token_seconds = Histogram("medlora_time_to_first_token_seconds", "time from arrival to the first token",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.router_seconds = Histogram("medlora_router_seconds", "routing time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.generation_seconds = Histogram("medlora_generation_seconds", "generation time per batch",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("medlora_batch_size", "requests per generation pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.queue_depth = Gauge("medlora_queue_depth", "requests waiting for a batch", registry=r)
        self.generated_tokens = Counter("medlora_generated_tokens", "tokens generated", registry=r)
        self.needs_review = Counter("medlora_needs_review", "answers flagged for review", registry=r)
        self.reloads = Counter("medlora_reloads", "times the served version changed", registry=r)
        self.model_version = Gauge("medlora_model_version", "the served version (1 on the current one)", ["model", "version"],
                                   registry=r)


@dataclass
class Job:
    """A request waiting for, or in, a batch. `on_token(text)` gets each piece of text as it is generated;
    `on_done(answer, error)` is called once. Both are called from the batching thread."""

    ask: Ask
    on_done: Callable[[Answer | None, Exception | None], None]
    on_token: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    _ids: list[int] = field(default_factory=list)
    _sent: str = ""
    _ended: bool = False


class Batcher:
    def __init__(self, current: Callable[[], ServedSystem], window_ms: float, max_batch_size: int, max_queue: int,
                 metrics: ServeMetrics):
        """`current()` gives the model a new batch runs on."""
        self.current, self.window, self.max_batch_size = current, window_ms / 1000, max_batch_size
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.metrics = metrics
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="medlora-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} requests are already waiting; retry shortly") from None
        self.metrics.queue_depth.set(self.queue.qsize())

    def _next_batch(self) -> list[Job]:
        try:
            batch = [self.queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.perf_counter() + self.window
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                batch.append(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        self.metrics.queue_depth.set(self.queue.qsize())
        return [job for job in batch if not job.cancelled.is_set()]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self.run(self.current(), batch)

    def run(self, served: ServedSystem, jobs: list[Job]) -> None:
        """Answer `jobs` together on `served`; every job's `on_done` is called, with an error if it failed."""
        valid = []
        for job in jobs:
            try:
                served.check(job.ask)  # the model may have changed since the request was accepted
                valid.append(job)
            except ValueError as error:
                job.on_done(None, error)
        if not valid:
            return
        tokenizer = served.system.tokenizer
        limits = [job.ask.max_new_tokens or served.budgets["max_new_tokens"] for job in valid]

        def on_step(tokens: list[int]) -> None:
            now = time.perf_counter()
            for job, token, limit in zip(valid, tokens, limits):
                if job._ended or len(job._ids) >= limit:
                    continue
                if token == tokenizer.eos_token_id:
                    job._ended = True
                    continue
                job._ids.append(token)
                if job.first_token is None:
                    job.first_token = now
                if job.on_token is not None:
                    text = tokenizer.decode(job._ids, skip_special_tokens=True).lstrip()
                    if not text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                        delta, job._sent = text[len(job._sent):], text
                        if delta:
                            job.on_token(delta)

        timings = BatchTimings()
        try:
            answers = served.answer([job.ask for job in valid], on_step, lambda row: valid[row].cancelled.is_set(), timings)
        except Exception as error:  # noqa: BLE001 - every waiting request must hear back
            log.error("a batch of %d failed: %s", len(valid), type(error).__name__)
            for job in valid:
                job.on_done(None, error)
            return
        self.metrics.batch_size.observe(len(valid))
        self.metrics.router_seconds.observe(timings.router_seconds)
        self.metrics.generation_seconds.observe(timings.generation_seconds)
        for job, answer in zip(valid, answers):
            if job.first_token is not None:
                self.metrics.first_token_seconds.observe(job.first_token - job.arrived)
            self.metrics.request_seconds.observe(time.perf_counter() - job.arrived)
            self.metrics.generated_tokens.inc(answer.completion_tokens)
            if answer.needs_review:
                self.metrics.needs_review.inc()
            job.on_done(answer, None)
