"""Dynamic batching: the texts of concurrent requests go to the model in one call, as Triton and TorchServe do.

One asyncio task forms batches; one worker thread runs them, so model calls never overlap and the
event loop keeps reading requests while the model computes. A batch starts with the oldest waiting
request and takes every request already queued, up to `max_texts` texts; when requests are still being
read (their bodies arriving), it waits for them for at most `max_wait_s`. So a lone client pays no
wait, and under load each model call takes whatever queued up during the previous one.

`run_batch(texts)` runs in the worker thread and returns a result that can be cut per request
(`slice(start, stop)`); each request gets its own slice. A failing batch of several requests is run
again request by request, so one poisonous input fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("freshet.serve.batching")


class Sliceable(Protocol):
    def slice(self, start: int, stop: int) -> Any: ...


@dataclass(eq=False)
class Job:
    texts: list[str]
    future: asyncio.Future[Any]
    enqueued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, run_batch: Callable[[list[str]], Sliceable], *, max_texts: int, max_wait_s: float,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self._run_batch = run_batch
        self._max_texts = max_texts
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda texts, requests: None)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._arriving = 0  # requests whose body is being read: they will be queued in a moment
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freshet-model")
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------- request side

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around reading and parsing a request: a batch being formed waits (briefly) for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def enqueue(self, texts: list[str]) -> Job:
        job = Job(texts, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return job

    async def wait(self, job: Job, timeout_s: float) -> Any:
        """The job's slice of its batch's result; TimeoutError after `timeout_s` (the job is then dropped)."""
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except TimeoutError:
            job.future.cancel()  # not yet run: the batcher skips it; running: its result is discarded
            raise

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------------------- batching side

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="freshet-batcher")

    async def stop(self) -> None:
        """After the server stopped taking requests: finish what is queued, then end the loop."""
        while not self._queue.empty() and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[Job]:
        first = await self._queue.get()
        batch, size = [first], len(first.texts)
        deadline = time.perf_counter() + self._max_wait_s
        while size < self._max_texts:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            elif self._arriving > 0 and (remaining := deadline - time.perf_counter()) > 0:
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                break
            if size + len(job.texts) > self._max_texts:
                self._queue_front(job)
                break
            batch.append(job)
            size += len(job.texts)
        return [job for job in batch if not job.future.done()]  # timed out while waiting: nobody listens

    def _queue_front(self, job: Job) -> None:
        """Put back a job that did not fit, ahead of the rest (asyncio.Queue has no push-front)."""
        rest = [job]
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        for item in rest:
            self._queue.put_nowait(item)

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for job in batch for text in job.texts]
        self._on_batch(len(texts), len(batch))
        try:
            # Never on the event loop: a slow or stuck model call must not stop /health or the timeouts.
            result = await loop.run_in_executor(self._executor, self._run_batch, texts)
        except Exception as error:  # noqa: BLE001 - the waiting requests answer with it (a 500)
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            log.warning("a batch of %d requests failed (%s: %s); running them one by one", len(batch),
                        type(error).__name__, error)
            for job in batch:
                await self._run([job])
            return
        start = 0
        for job in batch:
            _settle(job, result=result.slice(start, start + len(job.texts)))
            start += len(job.texts)


def _settle(job: Job, *, result: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
