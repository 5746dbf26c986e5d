from pathlib import Path

import pytest

from t2vturbo.config import Recipe, dump_recipe, load_recipe, parse_override
from t2vturbo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads(path):
    r = load_recipe(path, check=False)
    assert isinstance(r, Recipe)
    assert r.train.max_steps > 0 and r.train.learning_rate > 0
    for rw in r.rewards:
        assert rw.name and rw.weight > 0


def test_modelscope_recipe_has_paper_settings():
    r = load_recipe(REPO / "recipes" / "modelscope.yaml", check=False)
    assert (r.video.frames, r.video.height, r.video.width, r.video.fps) == (16, 256, 256, 8)
    assert r.lora.rank == 32 and r.train.learning_rate == 1e-5 and r.train.max_steps == 10000
    assert (r.distill.w_min, r.distill.w_max, r.distill.skip, r.distill.num_ddim_timesteps) == (5, 15, 20, 50)
    assert r.distill.loss == "huber" and r.distill.huber_c == 0.001
    assert [(x.name, x.weight, x.frames) for x in r.rewards] == [("hpsv2.1", 2.0, 6), ("viclip", 3.0, 8)]


def test_overrides_apply_with_yaml_types():
    r = load_recipe(None, ["train.max_steps=7", "train.learning_rate=3e-4", "rewards=[{name: toy-image, weight: 2}]",
                           "rewards.0.weight=0.5", "lora.target_modules=[to_q, to_v]"])
    assert r.train.max_steps == 7 and r.train.learning_rate == pytest.approx(3e-4)
    assert r.rewards[0].weight == 0.5
    assert r.lora.target_modules == ["to_q", "to_v"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_step=3", "unknown key 'train.max_step'"),
        ("trian.seed=1", "unknown key 'trian'"),
        ("train.max_steps=abc", "train.max_steps: expected an integer"),
        ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing: expected true/false"),
        ("distill.loss=l1", "distill.loss: 'l1' is not one of"),
        ("rewards=[{name: a, weight: heavy}]", "rewards[0].weight: expected a number"),
        ("rewards=[{name: a, bonus: 1}]", "unknown key 'rewards[0].bonus'"),
        ("data.source=folder", "data.path is required"),
        ("data.path=/nonexistent/dir", None),  # source stays tiny-world: path unused, no error
        ("model.teacher=/nonexistent/model", "model.teacher: /nonexistent/model does not exist"),
        ("rewards=[{name: hpsv2, checkpoint: /no/such.pt}]", "rewards[0].checkpoint: file not found"),
        ("video.frames=0", "video.frames must be at least 1"),
        ("distill.w_min=20", "distill.w_min (20.0) is above distill.w_max"),
        ("novalue", "must look like key.sub=value"),
    ],
)
def test_bad_recipes_name_the_dotted_key(override, message):
    if message is None:
        load_recipe(None, [override])
        return
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_invalid_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(listy)


def test_yaml_no_means_no_precision_and_round_trip(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  mixed_precision: no\n  max_steps: 5\n")
    r = load_recipe(p)
    assert r.train.mixed_precision == "no"
    dump_recipe(r, tmp_path / "out.yaml")
    again = load_recipe(tmp_path / "out.yaml")
    assert again == r


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=hello world") == (["a"], "hello world")
