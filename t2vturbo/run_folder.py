"""A distillation run's folder: its paths, the checks before a run starts or resumes, ``metrics.jsonl``, the
checkpoints (written atomically, read back newest-usable-first), and the stop signals a run saves itself on.

Only the main process writes here (:class:`t2vturbo.distill.Distiller` decides who that is).
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

from .config import Recipe, dump_recipe
from .errors import CheckpointError, ConfigError
from .safeio import atomic_path
from .train_state import checkpoint_dir, list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint


class RunFolder:
    """``out/``: config.yaml, metrics.jsonl, checkpoints/step-NNNNNNN/, student/, samples/, curves.png."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.checkpoints = self.out / "checkpoints"
        self.metrics = self.out / "metrics.jsonl"

    def prepare(self, recipe: Recipe, resume: bool, explicit: tuple[str, ...] = ()) -> None:
        """Check the folder is writable and fits the request (a new run must not overwrite a run's checkpoints; a
        resume must keep the run's recipe but for ``explicit`` overrides such as train.max_steps), then write the
        resolved recipe as config.yaml."""
        self.out.mkdir(parents=True, exist_ok=True)
        probe = self.out / ".write-test"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"output folder {self.out} is not writable ({err.strerror}); choose another "
                              "--output-dir") from None
        if not resume and self.list():
            raise ConfigError(f"{self.out} already holds checkpoints of a run; pass --resume to continue it "
                              "or choose another --output-dir")
        saved = self.out / "config.yaml"
        if resume and saved.is_file() and self.list():
            import yaml

            from .config import recipe_changes

            changed = recipe_changes(yaml.safe_load(saved.read_text()) or {}, recipe, explicit)
            if changed:
                raise ConfigError(f"--resume with a recipe that differs from the run's config.yaml in "
                                  f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}; resume with the "
                                  f"same recipe and overrides (only train.max_steps and the like may change: pass "
                                  f"train.max_steps=N to extend), or start a new --output-dir")
        dump_recipe(recipe, saved)

    # ------------------------------------------------------------------ checkpoints
    def list(self) -> list[tuple[int, Path]]:
        return list_checkpoints(self.checkpoints)

    def save(self, step: int, state: dict[str, Any], keep: int) -> Path:
        folder = save_checkpoint(checkpoint_dir(self.checkpoints, step), state)
        prune_checkpoints(self.checkpoints, keep)
        return folder

    def load_newest(self, log) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads (a damaged newest one falls back to the one before); None if there is
        none; a CheckpointError if none loads."""
        found = self.list()
        if not found:
            return None
        for _step, folder in reversed(found):
            try:
                return load_checkpoint(folder), folder
            except CheckpointError as err:
                log(f"checkpoint {folder.name} is unusable ({err}); trying an earlier one")
        raise CheckpointError(f"no usable checkpoint under {self.checkpoints}; start again without --resume")

    def describe_newest(self) -> tuple[str | None, str]:
        """(the newest checkpoint's path, a phrase saying where the run can go on from)."""
        found = self.list()
        where = str(found[-1][1]) if found else None
        return where, (f"checkpoint {where} (step {found[-1][0]})" if found else "no checkpoint yet (step 0)")

    def write_rank_summary(self, rank: int, world: int, step: int, student: dict, data: dict) -> Path:
        """rank-<r>.json: the rank's step, data position and a hash of its student weights (``student``: name ->
        tensor), identical across ranks under DDP."""
        import hashlib

        h = hashlib.sha256()
        for name, tensor in sorted(student.items()):
            h.update(name.encode())
            h.update(tensor.float().numpy().tobytes())
        path = self.out / f"rank-{rank}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"rank": rank, "world_size": world, "step": step,
                                       "student_sha256": h.hexdigest(), "data": data}) + "\n")
        return path

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop the rows after ``step`` (a resumed run writes them again)."""
        if not self.metrics.is_file():
            return
        keep = [ln for ln in self.metrics.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with atomic_path(self.metrics) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep))


class StopSignals:
    """Within the block Ctrl-C / SIGTERM set :attr:`received` (the loop reads it between steps) instead of
    stopping; a second Ctrl-C stops at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.received: str | None = None
        self.saved: dict = {}

    def _handler(self, signum, frame):
        self.received = signal.Signals(signum).name
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        return False


def log_line(row: dict, max_steps: int, seconds: list[float]) -> str:
    """One plain progress line (no terminal needed): step, loss, rewards, s/step over the last 20, ETA."""
    per = sum(seconds[-20:]) / max(1, len(seconds[-20:]))
    eta = per * (max_steps - row["step"])
    rewards = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items() if k.startswith("reward/"))
    return (f"step {row['step']}/{max_steps} loss {row['loss']:.4f} loss_cd {row.get('loss_cd', 0):.4f}"
            + (f" {rewards}" if rewards else "") + f" {per:.2f} s/step ETA {int(eta // 60)}m{int(eta % 60):02d}s")


def progress_bar():
    """The rich progress bar a run shows on a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)
