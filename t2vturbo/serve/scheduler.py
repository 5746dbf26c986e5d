"""The scheduler: one worker thread owns the loaded model(s) and makes the videos; requests wait in a bounded
queue.

- ``submit`` queues a :class:`Job` or raises :class:`QueueFull` (the API's 429, with a retry estimate) or
  :class:`NotAccepting` (the server is stopping).
- The worker takes the oldest job and every queued job with the same model and settings (shape, steps,
  guidance, fps, motion), up to ``max_batch``, and samples them in one batch: one denoiser call per step. Each
  video has its own seeded generator, so a batched video equals the one made alone (up to float rounding).
- A failed batch is retried one job at a time, so a request's failure fails that job only.
- A job not finished ``job_timeout`` seconds after it was queued fails with code ``timeout``: a queued one is
  never started, a running one's video is discarded, and a batch whose every job is timed out or deleted stops
  at its next step.
- ``delete`` forgets a job: a queued one leaves the queue, a running one is discarded, a finished one's files are
  removed.
- ``close`` stops accepting, fails what is queued, and waits for the running batch.

Videos are written atomically as ``{output_dir}/{id}.{format}`` with the prompt sidecar ``{id}.txt`` that
``t2vturbo score`` reads; ids are made here (``video_`` + 32 hex digits), never taken from a request.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import T2VTurboError
from ..generate import LoadedModel, Settings, save_video

VIDEO_FORMATS = {"mp4": "video/mp4", "webm": "video/webm"}


class QueueFull(T2VTurboError):
    """The queue holds ``max_queue`` jobs; ``retry_after``: seconds until a place is likely free."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class NotAccepting(T2VTurboError):
    """The server is stopping."""


class _Abandoned(Exception):
    """Raised from the sampling callback: every job of the batch was deleted or timed out."""


@dataclass
class Job:
    """One requested video and where it stands."""

    id: str
    model: str
    prompt: str
    seed: int
    settings: Settings
    #: wall-clock time (seconds since the epoch) the request was accepted
    created_at: float
    #: the scheduler clock's time after which the job fails with ``timeout``
    deadline: float
    status: str = "queued"
    progress: int = 0
    completed_at: float | None = None
    #: ``{"code", "message"}`` once failed
    error: dict | None = None
    path: Path | None = None
    #: how many videos its batch made together
    batch_size: int | None = None
    #: seconds from its batch's start to its video written
    generation_seconds: float | None = None
    #: seconds it waited in the queue
    queued_seconds: float | None = None
    #: the client deleted it while it ran
    deleted: bool = False
    _queued_at: float = field(default=0.0, repr=False)

    def video_object(self) -> dict:
        """The job as the API shows it: OpenAI's video object, plus the options it was made with."""
        s = self.settings
        obj = {
            "id": self.id, "object": "video", "status": self.status, "created_at": int(self.created_at),
            "completed_at": None if self.completed_at is None else int(self.completed_at),
            "model": self.model, "progress": self.progress, "prompt": self.prompt,
            "size": f"{s.width}x{s.height}", "seconds": f"{s.frames / s.fps:g}",
            "seed": self.seed, "num_inference_steps": s.steps, "guidance_scale": s.guidance,
            "num_frames": s.frames, "fps": s.fps, "error": self.error, "batch_size": self.batch_size,
            "generation_seconds": None if self.generation_seconds is None else round(self.generation_seconds, 3),
            "queued_seconds": None if self.queued_seconds is None else round(self.queued_seconds, 3),
        }
        if s.motion is not None:
            obj["motion_guidance"], obj["motion_percentage"] = s.motion
        return obj


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if isinstance(err, T2VTurboError) and text else f"{type(err).__name__}: {text[0] if text else ''}"


class Scheduler:
    """Owns ``models`` (id -> loaded model; the first is the default) and the jobs.

    Args:
        output_dir: where videos and their prompt sidecars are written.
        max_queue: jobs that may wait (running ones not counted); beyond it ``submit`` raises QueueFull.
        max_batch: videos sampled together at most.
        job_timeout: seconds from queued to finished before a job fails with ``timeout``.
        keep: finished jobs (and their videos) kept; the oldest go first. 0: all.
        fmt: ``mp4`` (H.264) or ``webm`` (VP9).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, models: dict[str, LoadedModel], output_dir: str | Path, *, max_queue: int = 32,
                 max_batch: int = 4, job_timeout: float = 600.0, keep: int = 0, fmt: str = "mp4",
                 decode_chunk: int = 0, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda msg: None):
        if not models:
            raise ValueError("the scheduler needs at least one model")
        if fmt not in VIDEO_FORMATS:
            raise ValueError(f"unknown video format {fmt!r}; use one of {', '.join(VIDEO_FORMATS)}")
        if max_queue < 1 or max_batch < 1 or job_timeout <= 0 or keep < 0:
            raise ValueError("max_queue and max_batch must be at least 1, job_timeout above 0, keep 0 or more")
        self.models = dict(models)
        self.output_dir = Path(output_dir)
        self.max_queue, self.max_batch, self.job_timeout, self.keep = max_queue, max_batch, job_timeout, keep
        self.fmt, self.decode_chunk, self.clock, self.log = fmt, decode_chunk, clock, log
        self._jobs: dict[str, Job] = {}  # every job not deleted, in creation order
        self._queue: list[Job] = []
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._paused = False
        self._stopping = False
        self._abort = False  # stop the running batch at its next step (a second Ctrl-C)
        self._thread: threading.Thread | None = None
        self._batch_seconds: float | None = None  # a running mean, for Retry-After
        self.served = 0

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    @property
    def accepting(self) -> bool:
        return not self._stopping

    # ------------------------------------------------------------------------------------------ the API's side
    def start(self) -> None:
        """Start the worker (once)."""
        with self._cond:
            if self._thread is None:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self._thread = threading.Thread(target=self._work, name="t2vturbo-serve-worker", daemon=True)
                self._thread.start()

    def submit(self, model: str, prompt: str, seed: int, settings: Settings) -> Job:
        """Queue one video; the caller has checked the request (:func:`~.limits.settle_request`)."""
        with self._cond:
            if self._stopping:
                raise NotAccepting("the server is stopping and accepts no new videos")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({len(self._queue)} videos waiting); retry later",
                                self._retry_after())
            now = self.clock()
            job = Job(id=f"video_{uuid.uuid4().hex}", model=model, prompt=prompt, seed=int(seed), settings=settings,
                      created_at=time.time(), deadline=now + self.job_timeout, _queued_at=now)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> dict | None:
        """The job's video object (a snapshot), or None for an unknown (or deleted) id."""
        with self._cond:
            self._expire_queued()
            job = self._jobs.get(job_id)
            return None if job is None else job.video_object()

    def content(self, job_id: str) -> tuple[dict, Path | None] | None:
        """(video object, its file once completed) or None for an unknown id."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return job.video_object(), job.path if job.status == "completed" else None

    def recent(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` jobs, newest first."""
        with self._cond:
            self._expire_queued()
            return [j.video_object() for j in reversed(list(self._jobs.values())[-limit:])]

    def delete(self, job_id: str) -> dict | None:
        """Forget a job (see the module's docstring); its video object as it was, or None if unknown."""
        with self._cond:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return None
            obj = job.video_object()
            if job in self._queue:
                self._queue.remove(job)
            elif job.status == "in_progress":
                job.deleted = True
            paths = [job.path] if job.path is not None else []
        for path in paths:
            _remove_video(path)
        return obj

    def stats(self) -> dict:
        with self._cond:
            counts = {"queued": len(self._queue), "in_progress": len(self._running)}
            for j in self._jobs.values():
                if j.status in ("completed", "failed"):
                    counts[j.status] = counts.get(j.status, 0) + 1
            return {"completed": 0, "failed": 0, **counts, "served": self.served}

    def pause(self) -> None:
        """Hold the worker before its next batch (queued jobs wait; a running batch finishes)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def close(self, timeout: float | None = None, stop_now: Callable[[], bool] = lambda: False) -> None:
        """Stop accepting; fail every queued job (``shutdown``); wait up to ``timeout`` (default: the job
        timeout) for the running batch, then fail what still runs. ``stop_now()`` turning true (a second Ctrl-C)
        stops the running batch at its next step."""
        with self._cond:
            self._stopping = True
            for job in self._queue:
                self._fail(job, "shutdown", "the server stopped before this video was started")
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            end = time.monotonic() + (self.job_timeout if timeout is None else timeout)
            while thread.is_alive() and time.monotonic() < end:
                if stop_now():
                    self._abort = True
                thread.join(0.2)
        with self._cond:
            for job in self._running:
                self._fail(job, "shutdown", "the server stopped while this video was being made")

    # ------------------------------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._paused or not self._queue):
                    self._cond.wait(timeout=1.0)
                    self._expire_queued()
                if self._stopping:
                    return
                batch = self._take()
            if batch:
                self._run(batch)
                with self._cond:
                    self._running = []
                    self._prune()

    def _take(self) -> list[Job]:
        """The oldest job and the queued jobs that can share its batch (under the lock)."""
        self._expire_queued()
        if not self._queue:
            return []
        head = self._queue[0]
        batch = [j for j in self._queue if j.model == head.model and j.settings == head.settings][: self.max_batch]
        now = self.clock()
        for job in batch:
            self._queue.remove(job)
            job.status, job.queued_seconds = "in_progress", now - job._queued_at
        self._running = batch
        return batch

    def _run(self, batch: list[Job]) -> None:
        """Sample ``batch`` and write its videos; a failed batch of several is retried one job at a time."""
        model = self.models[batch[0].model]
        settings = batch[0].settings
        start = self.clock()

        def step(i: int, t, x0) -> None:
            with self._cond:
                if self._abort or all(j.deleted or self.clock() > j.deadline for j in batch):
                    raise _Abandoned
                for job in batch:
                    job.progress = max(job.progress, min(99, int(100 * (i + 1) / (settings.steps + 1))))

        try:
            out = model.sample([j.prompt for j in batch], [j.seed for j in batch], settings,
                               decode_chunk=self.decode_chunk, callback=step)
        except _Abandoned:
            with self._cond:
                for job in batch:
                    if self._abort:
                        self._fail(job, "shutdown", "the server was stopped at once while this video was being made")
                    else:
                        self._fail_if_late(job)
            return
        except Exception as err:  # a failure fails its own job only
            if len(batch) > 1:
                self.log(f"a batch of {len(batch)} failed ({_one_line(err)}); making its videos one at a time")
                for job in batch:
                    with self._cond:
                        self._running = [job]
                    self._run([job])
                return
            self.log(f"{batch[0].id} failed: {_one_line(err)}")
            with self._cond:
                self._fail(batch[0], "generation_failed", _one_line(err))
            return
        self._note_batch_time(self.clock() - start)
        for job, frames in zip(batch, out.videos, strict=True):
            with self._cond:
                if job.deleted or self._fail_if_late(job):
                    continue
            path = self.output_dir / f"{job.id}.{self.fmt}"
            try:
                save_video(frames, path, job.prompt, settings.fps)
            except Exception as err:
                self.log(f"{job.id}: writing the video failed: {_one_line(err)}")
                with self._cond:
                    self._fail(job, "write_failed", f"writing the video failed: {_one_line(err)}")
                continue
            with self._cond:
                if job.deleted:  # deleted while it was written
                    _remove_video(path)
                    continue
                job.status, job.progress, job.path = "completed", 100, path
                job.completed_at, job.batch_size = time.time(), len(batch)
                job.generation_seconds = self.clock() - start
                self.served += 1

    # ------------------------------------------------------------------------------------------ helpers (locked)
    def _fail(self, job: Job, code: str, message: str) -> None:
        if job.status in ("completed", "failed"):
            return
        job.status, job.error, job.completed_at = "failed", {"code": code, "message": message}, time.time()

    def _fail_if_late(self, job: Job) -> bool:
        if self.clock() <= job.deadline:
            return False
        self._fail(job, "timeout", f"not finished within the server's job timeout of {self.job_timeout:g} s")
        return True

    def _expire_queued(self) -> None:
        late = [j for j in self._queue if self.clock() > j.deadline]
        for job in late:
            self._queue.remove(job)
            self._fail_if_late(job)

    def _note_batch_time(self, seconds: float) -> None:
        self._batch_seconds = seconds if self._batch_seconds is None else 0.8 * self._batch_seconds + 0.2 * seconds

    def _retry_after(self) -> int:
        """Seconds until the worker likely takes its next batch from the queue (a batch's mean time; at least 1)."""
        return max(1, math.ceil(self._batch_seconds or 1.0))

    def _prune(self) -> None:
        """Keep at most ``keep`` finished jobs: the oldest go, with their files."""
        if not self.keep:
            return
        finished = [j for j in self._jobs.values() if j.status in ("completed", "failed")]
        for job in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]
            if job.path is not None:
                _remove_video(job.path)


def _remove_video(path: Path) -> None:
    """A video and its prompt sidecar."""
    for p in (path, path.with_suffix(".txt")):
        p.unlink(missing_ok=True)
