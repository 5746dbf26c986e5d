"""``t2vturbo serve``: the API through an in-process client (each status, each error naming its field, 404, 429,
cancel, a failing request, timeouts, shutdown, keys), batching against one-by-one, the same frames as
``t2vturbo sample``, and the command itself on loopback under a small load (none lost, SIGTERM exits 0)."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason='the server needs its extra: pip install "t2vturbo[serve]"')
pytest.importorskip("httpx", reason='the in-process client needs httpx: pip install "t2vturbo[serve]"')

from fastapi.testclient import TestClient  # noqa: E402

import t2vturbo.generate as generate_module  # noqa: E402
from t2vturbo.errors import ConfigError  # noqa: E402
from t2vturbo.generate import generate_videos, load_model  # noqa: E402
from t2vturbo.serve import scheduler as scheduler_module  # noqa: E402
from t2vturbo.serve.app import LOOPBACK_NAMES, check_exposure, create_app  # noqa: E402
from t2vturbo.serve.limits import Limits  # noqa: E402
from t2vturbo.serve.scheduler import Scheduler  # noqa: E402
from t2vturbo.video import read_video  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"
PROMPT = "a red circle moving left"


def _bench():
    sys.path.insert(0, str(BENCH))
    try:
        import serve_load
    finally:
        sys.path.remove(str(BENCH))
    return serve_load


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A tiny student (random LoRA and guidance projection) saved as ``t2vturbo distill`` does."""
    return _bench().make_tiny_student(tmp_path_factory.mktemp("student") / "student")


@pytest.fixture(scope="module")
def student(student_dir):
    return load_model(student=student_dir)


@pytest.fixture(scope="module")
def teacher():
    return load_model("tiny", teacher=True)


@contextmanager
def serving(tmp_path, models, *, api_key=None, limits=None, **options):
    sched = Scheduler(models, tmp_path / "out", **options)
    with TestClient(create_app(sched, api_key=api_key, limits=limits)) as client:
        yield client, sched


def wait_done(client, video_id: str, headers=None) -> dict:
    """Poll until completed or failed (bounded so a broken server fails the test instead of hanging it)."""
    for _ in range(1200):
        obj = client.get(f"/v1/videos/{video_id}", headers=headers).json()
        if obj["status"] in ("completed", "failed"):
            return obj
        time.sleep(0.05)
    raise AssertionError(f"{video_id} never finished: {obj}")


def post(client, **body):
    return client.post("/v1/videos", json={"prompt": PROMPT, **body})


class Gated:
    """A loaded model whose ``sample`` waits until released (a test sees its job in progress) and that can be
    told to fail for a prompt."""

    def __init__(self, model, fail_on: str | None = None, gate: bool = True):
        self.model, self.fail_on = model, fail_on
        self.entered, self.release = threading.Event(), threading.Event()
        if not gate:
            self.release.set()
        self.batches: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def sample(self, prompts, seeds, settings, **kwargs):
        self.batches.append(list(prompts))
        self.entered.set()
        assert self.release.wait(60)
        if self.fail_on and any(self.fail_on in p for p in prompts):
            raise RuntimeError(f"cannot make {self.fail_on!r}")
        return self.model.sample(prompts, seeds, settings, **kwargs)


# ---------------------------------------------------------------------------------------------- statuses, files
def test_a_video_goes_queued_in_progress_completed_and_is_served(tmp_path, student):
    gated = Gated(student)
    with serving(tmp_path, {"student": gated}) as (client, sched):
        sched.pause()
        res = post(client, seed=7)
        assert res.status_code == 200
        obj = res.json()
        vid = obj["id"]
        assert obj["object"] == "video" and obj["status"] == "queued" and obj["model"] == "student"
        assert obj["seed"] == 7 and obj["size"] == "24x24" and obj["num_frames"] == 8 and obj["prompt"] == PROMPT
        assert obj["num_inference_steps"] == 4 and isinstance(obj["created_at"], int)
        assert client.get(f"/v1/videos/{vid}").json()["status"] == "queued"
        early = client.get(f"/v1/videos/{vid}/content")
        assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready"
        sched.resume()
        assert gated.entered.wait(30)
        assert client.get(f"/v1/videos/{vid}").json()["status"] == "in_progress"
        gated.release.set()
        done = wait_done(client, vid)
        assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
        assert done["batch_size"] == 1 and done["generation_seconds"] > 0 and done["completed_at"] is not None
        content = client.get(f"/v1/videos/{vid}/content")
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
        # the file is named by the server's id, written under the output dir with the sidecar score reads
        path = tmp_path / "out" / f"{vid}.mp4"
        assert path.read_bytes() == content.content
        assert (tmp_path / "out" / f"{vid}.txt").read_text() == PROMPT + "\n"
        assert read_video(path).shape == (8, 3, 24, 24)
        listed = client.get("/v1/videos").json()
        assert listed["object"] == "list" and [v["id"] for v in listed["data"]] == [vid]
        assert client.get("/health").json()["completed"] == 1


def test_a_video_is_the_same_as_t2vturbo_sample_makes(tmp_path, student, student_dir, monkeypatch):
    """The server and ``sample`` share one core: the same prompt, seed and options give the same frames (compared
    as handed to the video writer: libx264's bytes can vary between encodes in a process that has decoded videos
    with frame threads, as the tests do)."""
    made: list[torch.Tensor] = []
    for module in (scheduler_module, generate_module):
        real = module.save_video
        monkeypatch.setattr(module, "save_video", lambda f, *a, real=real: made.append(f.clone()) or real(f, *a))
    with serving(tmp_path, {"student": student}) as (client, _):
        obj = wait_done(client, post(client, seed=11).json()["id"])
        assert client.get(f"/v1/videos/{obj['id']}/content").status_code == 200
    sampled = generate_videos([PROMPT], [tmp_path / "sampled.mp4"], student=student_dir, seed=11)[0]
    assert sampled.steps == obj["num_inference_steps"] and len(made) == 2
    assert torch.equal(made[0], made[1]), (made[0] - made[1]).abs().max()


def test_compatible_requests_are_batched_and_give_the_frames_made_one_by_one(tmp_path, student, monkeypatch):
    """Three queued requests with the same settings are one batch (one denoiser call per step); a fourth with other
    steps is not. Each video has its own seeded generator: batched frames equal the one-by-one frames up to float
    rounding (before the lossy encoding)."""
    written: dict[str, torch.Tensor] = {}
    real_save = scheduler_module.save_video

    def recording_save(frames, path, prompt, fps):
        written[Path(path).stem] = frames.clone()
        return real_save(frames, path, prompt, fps)

    monkeypatch.setattr(scheduler_module, "save_video", recording_save)
    prompts = ["a red circle moving left", "a blue square moving up", "a green dot moving right"]

    def make(folder, max_batch, extra=False):
        with serving(folder, {"student": student}, max_batch=max_batch) as (client, sched):
            sched.pause()
            ids = [post(client, prompt=p, seed=20 + i).json()["id"] for i, p in enumerate(prompts)]
            other = post(client, prompt=prompts[0], seed=20, num_inference_steps=2).json()["id"] if extra else None
            sched.resume()
            objs = [wait_done(client, i) for i in ids]
            return objs, wait_done(client, other) if other else None

    batched, other = make(tmp_path / "a", max_batch=8, extra=True)
    alone, _ = make(tmp_path / "b", max_batch=1)
    assert [o["batch_size"] for o in batched] == [3, 3, 3] and other["batch_size"] == 1
    assert [o["batch_size"] for o in alone] == [1, 1, 1]
    for b, a in zip(batched, alone, strict=True):
        assert b["status"] == a["status"] == "completed" and b["seed"] == a["seed"]
        torch.testing.assert_close(written[b["id"]], written[a["id"]], atol=1e-4, rtol=0)
    assert (written[batched[0]["id"]] - written[other["id"]]).abs().max() > 1e-3  # 2 steps is another video


def test_both_models_side_by_side(tmp_path, student, teacher):
    with serving(tmp_path, {"student": student, "teacher": teacher}) as (client, _):
        listed = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["student", "teacher"]
        assert [m["mode"] for m in listed] == ["student", "teacher"] and listed[0]["base_model"] == "tiny"
        assert listed[0]["defaults"] == {"num_inference_steps": 4, "guidance_scale": 7.5, "num_frames": 8,
                                         "size": "24x24", "fps": 8}
        assert listed[1]["defaults"]["num_inference_steps"] == 50
        assert listed[0]["limits"]["size"] == "48x48" and listed[0]["limits"]["num_inference_steps"] == 50
        s = post(client, seed=3).json()
        t = post(client, seed=3, model="teacher", num_inference_steps=2).json()
        assert (wait_done(client, s["id"])["model"], wait_done(client, t["id"])["model"]) == ("student", "teacher")
        a = client.get(f"/v1/videos/{s['id']}/content").content
        b = client.get(f"/v1/videos/{t['id']}/content").content
        assert a and b and a != b


def test_a_v2_student_takes_the_motion_options_as_sample_does(tmp_path, monkeypatch):
    """A T2V-Turbo-v2 motion-guided student (the reference fixture; skipped without ../shared): the motion options
    reach the UNet, are shown on the video, and give the frames `sample --motion-guidance` gives."""
    from conftest import shared_path
    from test_teacher_contract import _vc2_folder

    student_file = shared_path("fixtures", "vc2v2_small_student", "unet_mg.pt")
    made: list[torch.Tensor] = []
    for module in (scheduler_module, generate_module):
        real = module.save_video
        monkeypatch.setattr(module, "save_video", lambda f, *a, real=real: made.append(f.clone()) or real(f, *a))
    folder = _vc2_folder(tmp_path)
    v2 = load_model(folder, student=student_file)
    shape = {"num_frames": 4, "size": "32x32", "seed": 3}
    with serving(tmp_path, {"student": v2}) as (client, _):
        assert client.get("/v1/models").json()["data"][0]["defaults"]["motion_guidance"] == 0.05
        plain = wait_done(client, post(client, prompt="a dog running", **shape).json()["id"])
        strong = wait_done(client, post(client, prompt="a dog running", motion_guidance=0.5, **shape).json()["id"])
        assert (plain["motion_guidance"], strong["motion_guidance"]) == (0.05, 0.5)
        assert (plain["status"], strong["status"]) == ("completed", "completed")
        assert post(client, prompt="x", motion_percentage=2).json()["error"]["param"] == "motion_percentage"
    generate_videos(["a dog running"], [tmp_path / "sampled.mp4"], model=folder, student=student_file, frames=4,
                    height=32, width=32, seed=3, motion_guidance=0.5)
    assert len(made) == 3
    assert (made[0] - made[1]).abs().mean() > 1e-3  # the motion scale reaches the UNet
    assert torch.equal(made[1], made[2])


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": None}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"prompt": "two\nlines"}, "prompt"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 51}, "num_inference_steps"),  # the student's solver grid is 50
    ({"num_inference_steps": "many"}, "num_inference_steps"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"guidance_scale": 1e9}, "guidance_scale"),
    ({"num_frames": 0}, "num_frames"),
    ({"num_frames": 17}, "num_frames"),  # twice the student's 8
    ({"size": "big"}, "size"),
    ({"size": "96x96"}, "size"),
    ({"size": "25x24"}, "size"),  # the VAE's factor is 2
    ({"fps": 0}, "fps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**31}, "seed"),
    ({"model": "nope"}, "model"),
    ({"motion_guidance": 0.1}, "motion_guidance"),  # not a motion-guided (v2) student
    ({"colour": "red"}, "colour"),
])
def test_each_bad_field_is_a_400_naming_it(tmp_path, student, body, param):
    with serving(tmp_path, {"student": student}) as (client, sched):
        sched.pause()
        res = client.post("/v1/videos", json={"prompt": PROMPT, **body})
        assert res.status_code == 400, res.text
        err = res.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
        assert "\n" not in err["message"] and sched.stats()["queued"] == 0


def test_bodies_that_are_not_a_request_are_400(tmp_path, student):
    with serving(tmp_path, {"student": student}) as (client, _):
        bad = client.post("/v1/videos", content=b"not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
        assert client.post("/v1/videos", json=["a list"]).status_code == 400
        huge = client.post("/v1/videos", json={"prompt": "x" * 100_000})
        assert huge.status_code == 413 and "KiB" in huge.json()["error"]["message"]


def test_unknown_ids_are_404_and_never_reach_the_file_system(tmp_path, student):
    (tmp_path / "secret.txt").write_text("not for clients")
    with serving(tmp_path, {"student": student}) as (client, _):
        for vid in ("video_0123456789abcdef0123456789abcdef", "..%2Fsecret.txt", "..", "secret"):
            for method, path in (("GET", f"/v1/videos/{vid}"), ("GET", f"/v1/videos/{vid}/content"),
                                 ("DELETE", f"/v1/videos/{vid}")):
                res = client.request(method, path)
                assert res.status_code == 404, (method, path, res.text)
                assert "error" in res.json()
    assert (tmp_path / "secret.txt").read_text() == "not for clients"


def test_a_full_queue_is_429_with_retry_after_and_none_is_lost(tmp_path, student):
    with serving(tmp_path, {"student": student}, max_queue=2) as (client, sched):
        sched.pause()
        ids = [post(client, seed=i).json()["id"] for i in range(2)]
        full = post(client, seed=9)
        assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
        assert full.json()["error"]["code"] == "queue_full"
        sched.resume()
        assert [wait_done(client, i)["status"] for i in ids] == ["completed", "completed"]
        assert post(client, seed=9).status_code == 200  # room again


# ---------------------------------------------------------------------------------------------- cancel, failure
def test_delete_cancels_a_queued_or_running_video_and_removes_a_finished_one(tmp_path, student):
    gated = Gated(student)
    with serving(tmp_path, {"student": gated}, max_batch=1) as (client, sched):
        sched.pause()
        queued, running = post(client, seed=1).json()["id"], post(client, seed=2, num_frames=4).json()["id"]
        gone = client.delete(f"/v1/videos/{queued}")
        assert gone.status_code == 200 and gone.json()["deleted"] is True and gone.json()["status"] == "queued"
        assert client.get(f"/v1/videos/{queued}").status_code == 404
        sched.resume()
        assert gated.entered.wait(30)
        assert client.get(f"/v1/videos/{running}").json()["status"] == "in_progress"
        assert client.delete(f"/v1/videos/{running}").json()["status"] == "in_progress"
        gated.release.set()
        kept = wait_done(client, post(client, seed=3).json()["id"])
        assert kept["status"] == "completed" and len(gated.batches) == 2  # the deleted queued one never ran
        assert client.get(f"/v1/videos/{running}").status_code == 404
        assert not (tmp_path / "out" / f"{queued}.mp4").exists() and not (tmp_path / "out" / f"{running}.mp4").exists()
        done = tmp_path / "out" / f"{kept['id']}.mp4"
        assert done.is_file()
        assert client.delete(f"/v1/videos/{kept['id']}").status_code == 200
        assert not done.exists() and not done.with_suffix(".txt").exists()
        assert client.get(f"/v1/videos/{kept['id']}/content").status_code == 404


def test_a_failing_request_fails_only_its_own_job(tmp_path, student):
    gated = Gated(student, fail_on="explode", gate=False)
    with serving(tmp_path, {"student": gated}) as (client, sched):
        sched.pause()
        ids = [post(client, prompt=p, seed=i).json()["id"]
               for i, p in enumerate(["a red ball", "a ball that will explode", "a blue ball"])]
        sched.resume()
        objs = [wait_done(client, i) for i in ids]
    assert [o["status"] for o in objs] == ["completed", "failed", "completed"]
    assert objs[1]["error"]["code"] == "generation_failed" and "explode" in objs[1]["error"]["message"]
    assert [o["batch_size"] for o in (objs[0], objs[2])] == [1, 1]  # the batch failed; each was retried alone
    assert len(gated.batches[0]) == 3


def test_a_job_past_its_timeout_fails_queued_or_running(tmp_path, student):
    now = [0.0]
    with serving(tmp_path, {"student": student}, job_timeout=10, clock=lambda: now[0]) as (client, sched):
        sched.pause()
        vid = post(client, seed=1).json()["id"]
        now[0] = 11.0
        obj = client.get(f"/v1/videos/{vid}").json()
        assert obj["status"] == "failed" and obj["error"]["code"] == "timeout"
        sched.resume()
        assert wait_done(client, vid)["status"] == "failed"  # never started
        # running: the clock passes the deadline during sampling; the batch stops at its next step
        late = Gated(student, gate=False)
        original = late.sample

        def slow(*args, **kwargs):
            now[0] += 100.0
            return original(*args, **kwargs)

        late.sample = slow
        sched.models["student"] = late
        obj = wait_done(client, post(client, seed=2).json()["id"])
        assert obj["status"] == "failed" and obj["error"]["code"] == "timeout"
    assert list((tmp_path / "out").glob("*.mp4")) == []


def test_retention_keeps_the_newest_videos(tmp_path, student):
    with serving(tmp_path, {"student": student}, keep=2, max_batch=1) as (client, _):
        ids = [wait_done(client, post(client, seed=i, num_frames=2).json()["id"])["id"] for i in range(3)]
        assert client.get(f"/v1/videos/{ids[0]}").status_code == 404
        assert [client.get(f"/v1/videos/{i}/content").status_code for i in ids[1:]] == [200, 200]
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.mp4")) == sorted(ids[1:])


def test_shutdown_fails_the_queued_and_refuses_new_videos(tmp_path, student):
    sched = Scheduler({"student": student}, tmp_path / "out")
    app = create_app(sched)
    with TestClient(app) as client:
        sched.pause()
        ids = [post(client, seed=i).json()["id"] for i in range(2)]
    for vid in ids:  # the app's shutdown closed the scheduler
        obj = sched.get(vid)
        assert obj["status"] == "failed" and obj["error"]["code"] == "shutdown"
    res = TestClient(app).post("/v1/videos", json={"prompt": PROMPT})
    assert res.status_code == 503 and res.json()["error"]["code"] == "shutting_down"


@pytest.mark.parametrize("at_once", [False, True])
def test_close_finishes_the_running_batch_or_stops_it_at_once(tmp_path, student, at_once):
    """Ctrl-C / SIGTERM: the running video is finished (a second Ctrl-C: stopped at its next step), the queued
    one fails."""
    from t2vturbo.generate import Settings

    gated = Gated(student)
    sched = Scheduler({"student": gated}, tmp_path / "out", max_batch=1)
    sched.start()
    settings: Settings = student.settle()
    running, queued = (sched.submit("student", PROMPT, i, settings) for i in range(2))
    assert gated.entered.wait(30)
    asked = []

    def stop_now() -> bool:
        asked.append(1)
        return at_once

    closing = threading.Thread(target=sched.close, kwargs={"timeout": 60, "stop_now": stop_now})
    closing.start()
    while len(asked) < 2 and closing.is_alive():  # close() has taken its answer and waits for the batch
        time.sleep(0.01)
    gated.release.set()
    closing.join(60)
    assert not closing.is_alive()
    assert sched.get(queued.id)["error"]["code"] == "shutdown"
    if at_once:
        assert sched.get(running.id)["error"]["code"] == "shutdown"
        assert not (tmp_path / "out" / f"{running.id}.mp4").exists()
    else:
        assert sched.get(running.id)["status"] == "completed"
        assert (tmp_path / "out" / f"{running.id}.mp4").is_file()


# ---------------------------------------------------------------------------------------------- safety, page
def test_an_api_key_guards_the_api_but_not_the_page(tmp_path, student):
    with serving(tmp_path, {"student": student}, api_key="s3cret") as (client, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            res = client.get("/v1/models", headers=headers)
            assert res.status_code == 401 and res.headers["WWW-Authenticate"] == "Bearer"
            assert res.json()["error"]["type"] == "authentication_error"
            assert client.post("/v1/videos", json={"prompt": PROMPT}, headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=ok).status_code == 200
        assert client.get("/health").json()["auth"] is True and client.get("/").status_code == 200
        vid = client.post("/v1/videos", json={"prompt": PROMPT, "num_frames": 2}, headers=ok).json()["id"]
        assert wait_done(client, vid, headers=ok)["status"] == "completed"
        assert client.get(f"/v1/videos/{vid}/content").status_code == 401


def test_a_keyless_loopback_server_answers_only_to_loopback_names(tmp_path, student):
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as the Host."""
    app = create_app(Scheduler({"student": student}, tmp_path / "out"), allowed_hosts=LOOPBACK_NAMES)
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/v1/models").status_code == 200
    res = TestClient(app, base_url="http://attacker.example:8000").get("/v1/models")
    assert res.status_code == 400 and "localhost" in res.json()["error"]["message"]


def test_only_loopback_is_served_without_a_key():
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, None, False)
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org"):
        with pytest.raises(ConfigError, match="--api-key"):
            check_exposure(host, None, False)
        check_exposure(host, "key", False)
        check_exposure(host, None, True)
    with pytest.raises(ConfigError, match="empty"):
        check_exposure("127.0.0.1", " ", False)


def test_the_command_refuses_an_open_host_before_loading_anything():
    from t2vturbo_cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--model", "tiny"])
    assert res.exit_code == 2 and "--api-key" in res.output and "Traceback" not in res.output


def test_without_the_extra_the_command_says_what_to_install(monkeypatch):
    import importlib.util

    from t2vturbo_cli.main import app
    from typer.testing import CliRunner

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    res = CliRunner().invoke(app, ["serve", "--model", "tiny"])
    assert res.exit_code == 2 and 'pip install "t2vturbo[serve]"' in res.output and "uvicorn" in res.output


def test_the_page_and_the_docs_are_served(tmp_path, student):
    with serving(tmp_path, {"student": student}, limits=Limits(prompt_chars=20)) as (client, _):
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for needle in ('id="prompt"', 'id="steps"', 'id="guidance"', 'id="seed"', 'id="generate"', 'id="gallery"'):
            assert needle in page.text
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/v1/models",
                "/health"} <= set(spec["paths"])
        assert client.get("/v1/models").json()["data"][0]["limits"]["prompt_chars"] == 20
        assert post(client, prompt="x" * 21).json()["error"]["param"] == "prompt"


def test_the_page_ships_in_the_wheel():
    """The page is package data: pyproject's package-data globs take every non-Python file of t2vturbo/serve."""
    import ast
    import fnmatch

    root = Path(__file__).resolve().parents[1]
    lines = (root / "pyproject.toml").read_text().splitlines()
    section = lines.index("[tool.setuptools.package-data]")
    line = next(x for x in lines[section:] if x.startswith('"*" = ['))  # the globs for every package
    globs = ast.literal_eval(line.split("=", 1)[1].strip())
    data = [p.name for p in (root / "t2vturbo" / "serve").iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert "page.html" in data
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in data), (data, globs)


# ---------------------------------------------------------------------------------------------- the command, loaded
def test_the_command_under_load_on_loopback_loses_nothing_and_sigterm_exits_0(tmp_path, student_dir):
    """A small bench/serve_load.py run: 8 concurrent clients, 12 videos through `t2vturbo serve` in a subprocess
    on a free loopback port; every request is answered (no timing is asserted); SIGTERM then exits 0."""
    bench = _bench()
    out = tmp_path / "out"
    args = ["--student", str(student_dir), "--output-dir", str(out), "--device", "cpu", "--max-batch", "4",
            "--max-queue", "4"]
    with bench.serve_subprocess(args, env={"OMP_NUM_THREADS": "1"}) as (base, proc):
        stats = bench.run_load(base, clients=8, requests=12, poll=0.05, timeout=240,
                               options={"num_frames": 2})
    assert stats["answered"] == 12 and stats["lost"] == 0 and stats["completed"] == 12, stats
    assert proc.returncode == 0, proc.output[-2000:]
    assert "serving student" in proc.output and "stopped: 12 videos served" in proc.output
    assert len(list(out.glob("video_*.mp4"))) == 12 and len(list(out.glob("video_*.txt"))) == 12
