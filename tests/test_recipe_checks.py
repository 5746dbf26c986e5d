"""Every recipe value is checked before anything loads, the dry run included (t2vturbo.recipe_checks)."""

from pathlib import Path

import pytest

from t2vturbo.config import Recipe, RewardConfig, check_files, load_recipe, missing_files
from t2vturbo.errors import ConfigError
from t2vturbo.recipe_checks import BOUNDS, Bound, check_number, numbers

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"

BAD = [
    # (override, the key the message must name, words it must also say)
    ("distill.num_ddim_timesteps=0", "distill.num_ddim_timesteps", "at least 1"),  # was a ZeroDivisionError
    ("distill.num_ddim_timesteps=7", "distill.num_ddim_timesteps", "must divide"),
    ("distill.num_ddim_timesteps=-5", "distill.num_ddim_timesteps", "at least 1"),
    ("train.learning_rate=nan", "train.learning_rate", "finite"),  # nan <= 0 is False: it got through
    ("train.learning_rate=inf", "train.learning_rate", "finite"),
    ("train.learning_rate=0", "train.learning_rate", "> 0"),
    ("rewards.0.weight=inf", "rewards[0].weight", "finite"),
    ("rewards.1.weight=nan", "rewards[1].weight", "finite"),
    ("rewards.0.frames=0", "rewards[0].frames", "leave it out"),
    ("distill.huber_c=-1", "distill.huber_c", "> 0"),
    ("distill.huber_c=0", "distill.huber_c", "e.g. 0.001"),
    ("distill.skip=0", "distill.skip", "at least 1"),
    ("distill.skip=1000", "distill.skip", "below distill.num_train_timesteps"),
    ("distill.w_min=-1", "distill.w_min", "at least 0"),
    ("distill.w_max=nan", "distill.w_max", "finite"),
    ("distill.w_min=20", "distill.w_min", "swap"),
    ("distill.ema_decay=1", "distill.ema_decay", "in (0, 1)"),
    ("distill.ema_decay=0", "distill.ema_decay", "in (0, 1)"),
    ("distill.guidance_embed_dim=2", "distill.guidance_embed_dim", "at least 4"),
    ("distill.num_train_timesteps=0", "distill.num_train_timesteps", "at least 1"),
    ("distill.motion.scale=nan", "distill.motion.scale", "0 turns motion guidance off"),
    ("distill.motion.percentage=0", "distill.motion.percentage", "in (0, 1]"),
    ("distill.motion.loss_scale=inf", "distill.motion.loss_scale", "finite"),
    ("lora.rank=0", "lora.rank", "at least 1"),
    ("lora.alpha=0", "lora.alpha", "leave it out"),
    ("lora.dropout=1", "lora.dropout", "in [0, 1)"),
    ("lora.dropout=nan", "lora.dropout", "finite"),
    ("lora.target_modules=[]", "lora.target_modules", "use all"),
    ("video.height=0", "video.height", "at least 1"),
    ("video.fps=-8", "video.fps", "at least 1"),
    ("train.weight_decay=-0.1", "train.weight_decay", "at least 0"),
    ("train.weight_decay=inf", "train.weight_decay", "finite"),
    ("train.adam_eps=0", "train.adam_eps", "> 0"),
    ("train.grad_clip=-1", "train.grad_clip", "0 turns clipping off"),
    ("train.grad_clip=inf", "train.grad_clip", "0 turns clipping off"),
    ("train.decode_chunk=-1", "train.decode_chunk", "0 decodes all"),
    ("train.num_threads=-1", "train.num_threads", "torch's default"),
    ("train.lr_warmup_steps=-10", "train.lr_warmup_steps", "no warm-up"),
    ("train.max_steps=0", "train.max_steps", "at least 1"),
    ("train.batch_size=0", "train.batch_size", "at least 1"),
    ("train.seed=-1", "train.seed", "32-bit"),
    ("train.seed=4294967296", "train.seed", "32-bit"),
    ("train.max_nonfinite=0", "train.max_nonfinite", "at least 1"),
    ("data.num_workers=-2", "data.num_workers", "at least 0"),
    ("sample.steps=0", "sample.steps", "at least 1"),
    ("sample.steps=51", "sample.steps", "1-50"),
    ("sample.guidance=nan", "sample.guidance", "finite"),
    ("sample.guidance=-1", "sample.guidance", "at least 0"),
    ("sample.seed=-3", "sample.seed", "32-bit"),
    ("model.device=gpu", "model.device", "auto, cpu, cuda, mps"),
    ("model.device=cuda:1", "model.device", "CUDA_VISIBLE_DEVICES=1"),
    ("model.teacher=''", "model.teacher", "name a teacher"),
    ("model.dtype=bfloat16", "model.dtype", "train.mixed_precision bf16"),  # refused by the run after the dry run
    ("rewards.0.name=''", "rewards[0].name", "is required"),
    ("data.source=folder", "data.path", "is required"),
    ("data.source=folder data.path=/tmp data.captions=/tmp/c.txt", "data.captions", ".csv, .tsv or .jsonl"),
]


@pytest.mark.parametrize("overrides, key, words", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("check", [True, False], ids=["run", "dry-run"])
def test_bad_values_are_one_line_errors_naming_the_key(overrides, key, words, check):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, overrides.split(" "), check=check)  # check=False is what --dry-run loads with
    msg = str(err.value)
    assert msg.startswith(key) and words in msg and "\n" not in msg, msg


def test_every_numeric_field_has_a_bound():
    """A number added to a recipe dataclass must say where it may lie (BOUNDS), and no bound is left over."""
    recipe = Recipe(rewards=[RewardConfig(name="tiny-image", frames=2)])
    recipe.lora.alpha = 8.0  # the optional numbers, set, so the walk sees them
    recipe.data.sample_fps = 8.0
    recipe.data.num_workers = 1
    found = {rule for _, rule, _, _ in numbers(recipe)}
    assert found == set(BOUNDS)


def test_recipe_defaults_and_edges_pass():
    load_recipe(TINY, ["rewards.0.weight=-0.5", "rewards.1.weight=0", "sample.guidance=0", "distill.w_min=0",
                       "lora.alpha=1", "distill.motion.percentage=1", "distill.guidance_embed_dim=5",
                       "model.device=mps", "train.grad_clip=0", "train.seed=4294967295"])
    load_recipe(TINY, ["model.dtype=bfloat16", "train.mixed_precision=bf16"])
    load_recipe(TINY, ["data.path=/nonexistent", "data.captions=notes.txt"])  # unused by the tiny world


def test_check_number_wording():
    with pytest.raises(ConfigError, match=r"^a\.b must be finite and in \(0, 1\] \(got nan\); e\.g\. 0\.5"):
        check_number("a.b", float("nan"), Bound(0, 1, low_open=True), 0.5)
    with pytest.raises(ConfigError, match=r"^a\.n must be at least 1 \(got 0\)$"):
        check_number("a.n", 0, Bound(1))
    check_number("a.n", 10**400, Bound(1))  # a big int is finite (no float overflow)
    check_number("a.x", None, Bound(1))  # an optional number left out


def _folder_recipe(path: Path, *more: str):
    return load_recipe(TINY, ["data.source=folder", f"data.path={path}", *more], check=False)


def test_dry_run_files_report_a_folder_without_captions(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    problems = missing_files(_folder_recipe(tmp_path))
    assert len(problems) == 1 and problems[0].startswith(f"data.path {tmp_path} has no captions.csv")
    assert "data.captions=FILE" in problems[0]
    with pytest.raises(ConfigError, match="has no captions.csv"):  # the real run refuses it at load
        check_files(_folder_recipe(tmp_path))
    (tmp_path / "captions.jsonl").write_text('{"path": "clip.mp4", "caption": "a clip"}\n')
    assert missing_files(_folder_recipe(tmp_path)) == []


def test_a_folder_of_videos_with_caption_sidecars_needs_no_table(tmp_path):
    (tmp_path / "00000").mkdir()
    (tmp_path / "00000" / "000000001.mp4").write_bytes(b"")  # video2dataset's files output
    assert "no video with a caption beside it" in missing_files(_folder_recipe(tmp_path))[0]
    (tmp_path / "00000" / "000000001.txt").write_text("a dog running on a beach\n")
    assert missing_files(_folder_recipe(tmp_path)) == []


def test_dry_run_files_report_every_missing_file_by_key(tmp_path):
    r = _folder_recipe(tmp_path / "nope", f"data.captions={tmp_path / 'c.csv'}", "model.teacher=./no/model",
                       "rewards=[{name: hpsv2, checkpoint: /no/such.pt}]")
    assert [p.split(" ")[0] for p in missing_files(r)] == ["model.teacher:", "rewards[0].checkpoint:",
                                                           "data.path:", "data.captions:"]
    (tmp_path / "c.csv").write_text("path,caption\n")
    assert missing_files(_folder_recipe(tmp_path, f"data.captions={tmp_path / 'c.csv'}")) == []
