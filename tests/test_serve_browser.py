"""The page of ``t2vturbo serve`` in a real browser: headless Chromium (the system's, driven by Playwright) types a
prompt, clicks Generate, and finds the student's and the teacher's videos side by side, playing, and the gallery.

Skipped, with the reason, where Playwright or a Chromium is not installed (``apt-get install chromium``;
``T2VTURBO_CHROMIUM`` names another binary); a browser that is found but fails is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the server needs its extra: pip install "t2vturbo[serve]"')
pytest.importorskip("uvicorn", reason='the server needs its extra: pip install "t2vturbo[serve]"')
pytest.importorskip("playwright", reason="the browser test drives Chromium with Playwright: pip install playwright")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def chromium() -> str:
    """The browser binary (looked for before the server is built, so a skip costs nothing)."""
    named = os.environ.get("T2VTURBO_CHROMIUM")
    if named:
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium to drive: apt-get install chromium (or set T2VTURBO_CHROMIUM to a Chromium/Chrome "
                "binary); the page is not checked in a browser here")


@pytest.fixture
def server(tmp_path, chromium):
    """The app on a free loopback port, a tiny student and the teacher loaded, in a thread of this process."""
    import uvicorn

    from t2vturbo.generate import load_model
    from t2vturbo.serve.app import LOOPBACK_NAMES, bind, create_app
    from t2vturbo.serve.scheduler import Scheduler

    sys.path.insert(0, str(BENCH))
    try:
        from serve_load import make_tiny_student
    finally:
        sys.path.remove(str(BENCH))
    student_dir = make_tiny_student(tmp_path / "student")
    models = {"student": load_model(student=student_dir), "teacher": load_model("tiny", teacher=True)}
    sched = Scheduler(models, tmp_path / "out")
    sock = bind("127.0.0.1", 0)
    app = create_app(sched, allowed_hosts=LOOPBACK_NAMES)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):
        if srv.started:
            break
        threading.Event().wait(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(60)
    sock.close()


def test_the_page_generates_and_plays_student_and_teacher_side_by_side(chromium, server):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(server)
            page.wait_for_selector("#models input[type=checkbox]", state="attached")
            # the codec the server writes (H.264 in an mp4) must be one this browser plays
            assert page.evaluate("""() => document.createElement('video')
                                       .canPlayType('video/mp4; codecs="avc1.64000a"')""") in ("probably", "maybe")
            page.fill("#prompt", "a red circle moving left")
            page.fill("#steps", "3")
            page.fill("#seed", "5")
            page.click("#generate")
            page.wait_for_function("""() => {
                const vs = [...document.querySelectorAll('#results video')];
                return vs.length === 2 && vs.every((v) => !v.paused && v.currentTime > 0 && v.readyState >= 2);
            }""", timeout=120_000)
            videos = page.evaluate("""() => [...document.querySelectorAll('#results video')].map((v) => ({
                model: v.dataset.model, error: v.error && v.error.code, width: v.videoWidth, height: v.videoHeight,
                paused: v.paused, time: v.currentTime }))""")
            assert sorted(v["model"] for v in videos) == ["student", "teacher"]
            assert all(v["error"] is None and (v["width"], v["height"]) == (24, 24) and not v["paused"]
                       and v["time"] > 0 for v in videos), videos
            took = page.locator("#results .took").all_inner_texts()
            assert len(took) == 2 and all("made in" in t and "seed 5, 3 steps" in t for t in took), took
            page.wait_for_function("() => document.querySelectorAll('#gallery figure video').length === 2",
                                   timeout=30_000)
            captions = page.locator("#gallery figcaption").all_inner_texts()
            assert all(c.startswith("a red circle moving left") for c in captions), captions
        finally:
            browser.close()
