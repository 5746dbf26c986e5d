"""Memory and time measurement shared by the benchmarks (bench/device_report.py, bench/distill_memory.py): one
measurement per fresh process (so peaks do not mix), resident memory from /proc, the CUDA allocator's peak,
random clips and a timed loop of training steps.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator

import torch

#: how a child process hands its measurement back: one stdout line, this prefix and a JSON object
RESULT = "RESULT "


def print_result(result: dict) -> None:
    """In the child: hand ``result`` back to :func:`run_child`."""
    print(RESULT + json.dumps(result), flush=True)


def run_child(cmd: list[str]) -> tuple[dict | None, subprocess.CompletedProcess]:
    """Run one measurement in a fresh process; (its result, or None when it failed, and the finished process)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        return None, proc
    return json.loads(lines[-1][len(RESULT):]), proc


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Resident peak since the process started or since the last :meth:`Meter.reset_peak`."""
    peak = _status_mb("VmHWM")
    return peak if math.isfinite(peak) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    """Peak memory of this process above the baseline taken after the imports: the CUDA allocator's peak, else
    resident memory (VmHWM). ``reset_peak`` after setup makes the peak that of what follows alone (on Linux,
    ``/proc/self/clear_refs``), so building the models does not count as the training step's peak."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = current_rss_mb()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> bool:
        """Forget the peak so far; False where the platform cannot (the peak then includes setup)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return True
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else peak_rss_mb() - self.base


def random_clips(captions: Iterable[list[str]], frames: int, height: int, width: int
                 ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(pixels (B, F, 3, H, W) uniform in [0, 1], captions) per entry of ``captions`` (B = its length), all drawn
    from one generator seeded 1."""
    g = torch.Generator().manual_seed(1)
    for caps in captions:
        yield torch.rand(len(caps), frames, 3, height, width, generator=g), caps


def timed_steps(step: Callable[[torch.Tensor, list[str]], torch.Tensor], clips: Iterable, warmup: int,
                sync: Callable[[], None]) -> dict[str, list[float]]:
    """Run ``step(pixels, captions)`` (it returns the loss) on every clip; wall and process-CPU seconds of all but
    the first ``warmup`` steps, and every loss (a non-finite one is an error)."""
    seconds, cpu_seconds, losses = [], [], []
    for i, (pixels, captions) in enumerate(clips):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = float(step(pixels, captions))
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
            cpu_seconds.append(time.process_time() - c0)
        losses.append(loss)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite loss in the bench: {losses}")
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses}
