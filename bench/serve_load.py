"""Load test of ``t2vturbo serve`` on loopback: concurrent clients each make videos through the API and wait for
them; every request must be answered (none lost). Prints p50 / p95 latency (request sent -> video received) and
videos per second.

Without ``--url`` it makes a tiny student (random LoRA, as the tests do), starts ``t2vturbo serve`` on it in a
subprocess on a free port, runs the load, stops the server with SIGTERM and checks that it exits 0.

    OMP_NUM_THREADS=1 python bench/serve_load.py                          # 32 clients, 64 videos, tiny student
    OMP_NUM_THREADS=1 python bench/serve_load.py --max-batch 1            # the same without batching
    python bench/serve_load.py --url http://127.0.0.1:8000 --clients 8 --requests 32 --api-key KEY

Clients use only the standard library (urllib), so the numbers are the server's, not an HTTP library's. A 429
(queue full) is retried after its Retry-After; it is counted, not lost. Exit status 1 if any request is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow ball bouncing", "a white dot moving down"]


def _call(url: str, method: str = "GET", body: dict | None = None, key: str | None = None,
          timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def make_video(base: str, body: dict, key: str | None = None, poll: float = 0.1, timeout: float = 300.0) -> dict:
    """One client request, start to end: POST (retrying a 429 after its Retry-After), poll, fetch the file.

    Returns ``{"outcome": "completed" | "failed" | "lost", "seconds", "retries", "video", "bytes", "why"}``.
    """
    start = time.perf_counter()
    retries = 0
    result = {"outcome": "lost", "seconds": None, "retries": 0, "video": None, "bytes": 0, "why": ""}
    try:
        while True:
            status, headers, raw = _call(f"{base}/v1/videos", "POST", body, key)
            if status != 429:
                break
            retries += 1
            time.sleep(float(headers.get("Retry-After") or headers.get("retry-after") or 1))
            if time.perf_counter() - start > timeout:
                result["why"] = "still refused (429) at the timeout"
                return result
        if status != 200:
            result["why"] = f"POST answered {status}: {raw[:200]!r}"
            return result
        video = json.loads(raw)
        while video["status"] in ("queued", "in_progress"):
            if time.perf_counter() - start > timeout:
                result["why"] = f"still {video['status']} at the timeout"
                return result
            time.sleep(poll)
            status, _, raw = _call(f"{base}/v1/videos/{video['id']}", key=key)
            if status != 200:
                result["why"] = f"GET answered {status}"
                return result
            video = json.loads(raw)
        result["video"] = video
        if video["status"] == "failed":
            result.update(outcome="failed", why=(video.get("error") or {}).get("message", ""))
            return result
        status, _, content = _call(f"{base}/v1/videos/{video['id']}/content", key=key)
        if status != 200 or not content:
            result["why"] = f"content answered {status} with {len(content)} bytes"
            return result
        result.update(outcome="completed", bytes=len(content))
        return result
    except (OSError, ValueError, KeyError) as err:  # connection refused / reset, bad JSON: the request is lost
        result["why"] = f"{type(err).__name__}: {err}"
        return result
    finally:
        result["seconds"], result["retries"] = time.perf_counter() - start, retries


def run_load(base: str, clients: int = 32, requests: int = 64, *, key: str | None = None, poll: float = 0.1,
             timeout: float = 300.0, options: dict | None = None) -> dict:
    """``requests`` videos made by ``clients`` concurrent clients (each takes the next request when done)."""
    todo = list(range(requests))
    lock = threading.Lock()
    results: list[dict] = []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, **(options or {})}
            r = make_video(base, body, key, poll, timeout)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 60)
    wall = time.perf_counter() - start
    done = [r for r in results if r["outcome"] == "completed"]
    latencies = sorted(r["seconds"] for r in done)
    batches = [r["video"]["batch_size"] for r in done if r["video"] and r["video"].get("batch_size")]
    return {
        "requests": requests, "clients": clients, "answered": len(results),
        "completed": len(done), "failed": sum(r["outcome"] == "failed" for r in results),
        "lost": requests - len(results) + sum(r["outcome"] == "lost" for r in results),
        "retries_429": sum(r["retries"] for r in results),
        "p50_s": statistics.median(latencies) if latencies else None,
        "p95_s": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))] if latencies else None,
        "max_s": latencies[-1] if latencies else None,
        "wall_s": wall, "videos_per_s": len(done) / wall if wall > 0 else 0.0,
        "mean_batch": statistics.mean(batches) if batches else None,
        "why_lost": sorted({r["why"] for r in results if r["outcome"] != "completed"})[:5],
    }


def make_tiny_student(folder: Path) -> Path:
    """The tiny base model with a random LoRA and guidance projection, saved as ``t2vturbo distill`` does."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    from t2vturbo.student import LoraSettings, make_student, save_student
    from t2vturbo.teachers import load_teacher

    parts = load_teacher("tiny")
    make_student(parts, LoraSettings(rank=4, alpha=8, dropout=0.0))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in parts.unet.named_parameters():
            if "lora_B" in name or "cond_proj" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return save_student(parts, folder, {"base_model": "tiny"})


@contextmanager
def serve_subprocess(args: list[str], wait: float = 180.0, env: dict | None = None):
    """``t2vturbo serve ARGS --port 0`` in a subprocess; yields ``(base_url, process)``; SIGTERM at exit (the
    process's exit status is then ``process.returncode``, its output ``process.output``)."""
    cmd = [sys.executable, "-m", "t2vturbo_cli", "serve", *args, "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r" at (http://\S+?)\s", line)
            if m and not found:
                found["url"] = m.group(1)
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(wait)
        if "url" not in found:
            raise RuntimeError(f"the server did not start:\n{''.join(lines)[-3000:]}")
        base = found["url"]
        for _ in range(int(wait * 10)):  # the socket listens before the app has started: wait for /health
            try:
                if _call(f"{base}/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.output = "".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server; default: start a tiny student's server here")
    ap.add_argument("--api-key", default=os.environ.get("T2VTURBO_API_KEY"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8, help="the started server's --max-batch")
    ap.add_argument("--max-queue", type=int, default=64, help="the started server's --max-queue")
    ap.add_argument("--steps", type=int, default=None, help="num_inference_steps of every request")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between a client's status polls")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take before it is lost")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    options = {} if args.steps is None else {"num_inference_steps": args.steps}

    def report(stats: dict, server: str) -> None:
        print(f"server: {server}")
        print(f"{stats['requests']} requests from {stats['clients']} clients: {stats['completed']} completed, "
              f"{stats['failed']} failed, {stats['lost']} lost, {stats['retries_429']} retries after 429")
        if stats["p50_s"] is not None:
            print(f"latency p50 {stats['p50_s']:.2f} s, p95 {stats['p95_s']:.2f} s, max {stats['max_s']:.2f} s; "
                  f"{stats['videos_per_s']:.2f} videos/s over {stats['wall_s']:.1f} s; mean batch "
                  f"{stats['mean_batch'] or 0:.2f}")
        for why in stats["why_lost"]:
            print(f"  not completed: {why}")

    if args.url:
        stats = run_load(args.url.rstrip("/"), args.clients, args.requests, key=args.api_key, poll=args.poll,
                         timeout=args.timeout, options=options)
        report(stats, args.url)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            student = make_tiny_student(Path(tmp) / "student")
            serve_args = ["--student", str(student), "--output-dir", str(Path(tmp) / "out"), "--device", "cpu",
                          "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
            with serve_subprocess(serve_args) as (base, proc):
                stats = run_load(base, args.clients, args.requests, poll=args.poll, timeout=args.timeout,
                                 options=options)
            stats["server_exit"] = proc.returncode
            report(stats, f"tiny student, t2vturbo serve --max-batch {args.max_batch} (CPU threads: "
                          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); exit after SIGTERM: "
                          f"{proc.returncode}")
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2) + "\n")
    return 1 if stats["lost"] or stats.get("server_exit", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
