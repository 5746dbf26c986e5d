"""``t2vturbo prepare`` and ``data.source: latents`` (issue 28, part 5): a folder encoded once into shards, resumed
after a kill, and training from it with the same step-1 loss as from the videos, with no text encoder built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder
from typer.testing import CliRunner

from t2vturbo import latents as L
from t2vturbo.config import load_recipe
from t2vturbo.data import Encoded
from t2vturbo.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"), n=5, frames=12)


def recipe(clips, **extra):
    return load_recipe(TINY, small_distill_overrides(clips, **{"train.batch_size": 2, **extra}))


def latent_recipe(clips, prepared, **extra):
    return recipe(clips, **{"data.source": "latents", "data.path": str(prepared), **extra})


@pytest.fixture(scope="module")
def prepared(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    index = L.prepare_dataset(recipe(clips), out, windows=2, shard_clips=2, **QUIET)
    return out, index


@pytest.mark.parametrize("spec,shape", [("tiny", (2, 4, 3, 32, 32)), ("tiny-wan", (2, 5, 3, 32, 32))])
def test_stored_moments_draw_what_encode_video_draws(spec, shape):
    from t2vturbo.teachers import load_teacher

    teacher = load_teacher(spec)
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.manual_seed(5)
        direct = teacher.encode_video(pixels)
        mean, std = teacher.encode_moments(pixels)
        torch.manual_seed(5)
        again = teacher.sample_latents(mean, std)
    assert again.shape == direct.shape
    torch.testing.assert_close(again, direct, atol=1e-5, rtol=1e-5)
    assert float(std.min()) > 0


def test_prepare_writes_shards_index_and_lists_bad_clips(prepared):
    out, index = prepared
    assert index is not None
    assert sorted(p.name for p in out.iterdir()) == [L.INDEX_FILE, L.SETTINGS_FILE, L.shard_name(0),
                                                     L.shard_name(1), L.shard_name(2), L.EXTRA_TEXT_FILE]
    assert index["clips"] == 5 and index["samples"] == 10  # 5 readable clips x 2 windows
    assert [b["path"].rsplit("/", 1)[-1] for b in index["bad"]] == ["broken.mp4"]
    assert index["latent_shape"] == [4, 4, 16, 16]  # tiny: 4 channels, 4 frames, 32 / 2
    meta = L.read_meta(out / L.shard_name(0))
    starts = {(s["clip"], s["window"]): s["start"] for s in meta["samples"]}
    assert len(starts) == 4 and starts[(0, 0)] != starts[(0, 1)]  # two different windows of a clip


def test_prepare_resumes_after_a_kill_and_matches_a_straight_run(clips, prepared, tmp_path, monkeypatch):
    out = tmp_path / "data"
    real = L.write_shard
    calls = []

    def dies_after_one(teacher, plan, shard, log=print):
        if calls:
            raise KeyboardInterrupt  # killed while the second shard was being encoded
        calls.append(shard)
        return real(teacher, plan, shard, log)

    monkeypatch.setattr(L, "write_shard", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        L.prepare_dataset(recipe(clips), out, windows=2, shard_clips=2, **QUIET)
    assert sorted(p.name for p in out.iterdir()) == [L.SETTINGS_FILE, L.shard_name(0)]  # whole shards only
    first = (out / L.shard_name(0)).stat().st_mtime_ns
    monkeypatch.setattr(L, "write_shard", real)
    written = []
    L.prepare_dataset(recipe(clips), out, windows=2, shard_clips=2,
                      log=lambda m: written.append(m) if m.startswith("shard") else None)
    assert [w.split()[1] for w in written] == ["1", "2"]  # shard 0 was kept
    assert (out / L.shard_name(0)).stat().st_mtime_ns == first
    from safetensors.torch import load_file

    for s in range(3):
        a, b = load_file(out / L.shard_name(s)), load_file(prepared[0] / L.shard_name(s))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_prepare_split_across_processes(clips, prepared, tmp_path):
    out = tmp_path / "data"
    assert L.prepare_dataset(recipe(clips), out, windows=2, shard_clips=2, rank=0, world_size=2, **QUIET) is None
    assert not (out / L.INDEX_FILE).exists()  # rank 1's shard is missing: no index yet
    index = L.prepare_dataset(recipe(clips), out, windows=2, shard_clips=2, rank=1, world_size=2, **QUIET)
    assert index["samples"] == prepared[1]["samples"] and (out / L.INDEX_FILE).is_file()


def test_prepare_refuses_other_settings_and_other_folders(clips, prepared, tmp_path):
    with pytest.raises(ConfigError, match=r"prepared with windows=2, not 3"):
        L.plan_prepare(recipe(clips), prepared[0], windows=3, shard_clips=2)
    with pytest.raises(ConfigError, match=r"prepared with window_start='random', not 'keyframe'"):
        L.plan_prepare(recipe(clips, **{"data.window_start": "keyframe"}), prepared[0], windows=2, shard_clips=2)
    import json

    old = tmp_path / "old"  # prepared before data.window_start existed: its windows started anywhere (random)
    old.mkdir()
    settings = json.loads((prepared[0] / L.SETTINGS_FILE).read_text())
    del settings["window_start"]
    (old / L.SETTINGS_FILE).write_text(json.dumps(settings))
    assert L.plan_prepare(recipe(clips), old, windows=2, shard_clips=2).settings["window_start"] == "random"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a prepared dataset"):
        L.plan_prepare(recipe(clips), tmp_path / "x")
    with pytest.raises(ConfigError, match="reads data.source folder"):
        L.plan_prepare(load_recipe(TINY, ["model.device=cpu"]), tmp_path / "y")


def test_latent_stream_is_deterministic_and_resumes(clips, prepared):
    out, _ = prepared
    r = latent_recipe(clips, out)
    straight = L.LatentStream(str(out), 2, seed=1, recipe=r, **QUIET)
    batches = [straight.next_batch() for _ in range(4)]
    assert isinstance(batches[0][0], Encoded) and batches[0][0].mean.shape == (2, 4, 4, 16, 16)
    assert batches[0][0].text.shape[0] == 2 and straight.batch_fps == [8.0, 8.0]
    resumed = L.LatentStream(str(out), 2, seed=1, recipe=r, **QUIET)
    resumed.next_batch()
    state = resumed.state_dict()
    again = L.LatentStream(str(out), 2, seed=1, recipe=r, **QUIET)
    again.load_state_dict(state)
    for want in batches[1:]:
        got = again.next_batch()
        assert got[1] == want[1]
        torch.testing.assert_close(got[0].mean, want[0].mean)
    # an epoch covers every prepared clip once per rank split
    seen = [c for b in batches[:3] for c in b[1]][:5]
    assert len(set(seen)) == len(set(straight.captions()))


def test_a_recipe_that_trains_something_else_is_refused(clips, prepared):
    with pytest.raises(ConfigError, match=r"video.frames is 8 but the prepared dataset was made with 4"):
        L.LatentStream(str(prepared[0]), 2, recipe=latent_recipe(clips, prepared[0], **{"video.frames": 8}), **QUIET)
    with pytest.raises(ConfigError, match="has no index.json; write it with `t2vturbo prepare"):
        L.LatentStream(str(prepared[0].parent), 2, **QUIET)


def test_padding_rows_are_dropped_and_restored():
    states = torch.randn(10, 6)
    states[7:] = 0
    kept = L._strip_padding(states)
    assert kept.shape == (7, 6)
    torch.testing.assert_close(L._pad(kept, 10), states)
    dense = torch.randn(10, 6)
    assert L._strip_padding(dense).shape == (10, 6)


def _step_one(d, batch, captions, fps):
    loss, metrics = d.training_step(batch, captions, fps)
    return float(loss.detach()), metrics


def test_step_one_from_latents_equals_the_pixel_path(clips, prepared, tmp_path):
    """The same clips, the same windows, the same noise: the loss and rewards agree."""
    from t2vturbo.distill import Distiller
    from t2vturbo.video import read_window

    out, _ = prepared
    lat = Distiller(latent_recipe(clips, out), tmp_path / "lat", progress=False, **QUIET)
    lat.setup()
    assert lat.teacher.text_encoder is None  # never built: the step reads the stored states
    with pytest.raises(ConfigError, match="freed"):
        lat.teacher.encode_video(torch.rand(1, 4, 3, 32, 32))
    batch, captions = lat.stream.next_batch()

    pix = Distiller(recipe(clips), tmp_path / "pix", progress=False, **QUIET)
    pix.setup()
    rows = [s for shard in lat.stream.index["shards"] for s in L.read_meta(out / shard["file"])["samples"]]
    pixels = []
    for k in range(2):  # the windows the latent batch holds, read from the videos again
        windows, w = lat.stream.locate(k)
        sample = windows[w][2]
        assert sample in rows
        where = L.window_start(0, sample["clip"], sample["window"])
        pixels.append(read_window(sample["path"], 4, 8.0, 32, 32, start=lambda latest, w=where: w * latest).pixels)
    loss_l, m_l = _step_one(lat, batch, captions, lat.stream.batch_fps)
    loss_p, m_p = _step_one(pix, torch.stack(pixels), captions, lat.stream.batch_fps)
    assert loss_l == pytest.approx(loss_p, rel=1e-4, abs=1e-6)
    for key in ("loss_cd", "reward/toy-image", "reward/toy-video"):
        assert m_l[key] == pytest.approx(m_p[key], rel=1e-4, abs=1e-6), key


def test_sample_prompts_must_have_been_prepared(clips, prepared, tmp_path):
    from t2vturbo.distill import Distiller

    d = Distiller(latent_recipe(clips, prepared[0], **{"sample.prompts": "[a blue whale]"}), tmp_path / "r",
                  progress=False, **QUIET)
    with pytest.raises(ConfigError, match="'a blue whale' was not encoded when data.path was prepared"):
        d.setup()


def test_cli_prepare_dry_run_then_distill_from_latents(clips, tmp_path):
    from t2vturbo_cli.main import app

    runner = CliRunner()
    ov = small_distill_overrides(clips, steps=2)
    out = tmp_path / "data"
    res = runner.invoke(app, ["prepare", str(TINY), *ov, "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "6 clips" in res.output and "will skip 1 clip(s)" in res.output and "broken.mp4" in res.output
    assert not out.exists()
    res = runner.invoke(app, ["prepare", str(TINY), *ov, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "data.source=latents" in res.output
    res = runner.invoke(app, ["distill", str(TINY), *ov, "data.source=latents", f"data.path={out}",
                              "-o", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "student" / "student.json").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    res = runner.invoke(app, ["distill", str(TINY), *ov, "data.source=latents", f"data.path={tmp_path}",
                              "-o", str(tmp_path / "run2"), "--no-progress"])
    assert res.exit_code != 0 and "has no index.json" in res.output
