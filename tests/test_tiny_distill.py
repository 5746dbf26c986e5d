"""A few distillation steps on the SHIPPED tiny teacher move each tiny reward the right way."""

import pytest
import torch
from conftest import REPO

from t2vturbo.config import load_recipe
from t2vturbo.distill import Distiller


# tiny-video starts at 0.878 on this batch (real clips: ~0.89): at weight 1 the consistency loss outweighs its small
# gradient there, so the test weighs it 10x to see that its gradient points uphill
@pytest.mark.parametrize(("name", "options", "steps"), [("tiny-image", "weight: 1.0, frames: 6", 6),
                                                       ("tiny-video", "weight: 10.0", 8)])
def test_a_few_steps_on_the_shipped_teacher_raise_each_reward(tmp_path, name, options, steps):
    """Each reward's gradient, with the consistency loss, raises that reward. (Both at once need not both rise on
    one batch: near the data's scores the two trade off.)"""
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml",
                         ["train.learning_rate=3e-3", "train.batch_size=2", "sample.prompts=[]", "lora.rank=4",
                          f"rewards=[{{name: {name}, {options}}}]"])
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    assert d.teacher.name == "tiny" and d.teacher.vae_scale != 1.0  # the shipped, trained teacher
    pixels, captions = d.stream.next_batch()
    key = f"reward/{name}"

    def score():
        d.step = 0  # same noise, timestep and w draw every time: only the weights change
        with torch.no_grad():
            _, m = d.training_step(pixels, captions)
        return m[key]

    before = score()
    params = [p for p in d.network.parameters() if p.requires_grad]
    for _ in range(steps):
        d.step = 0
        loss, _ = d.training_step(pixels, captions)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        d.optimizer.step()
        d.optimizer.zero_grad(set_to_none=True)
    after = score()
    assert after > before, (key, before, after)


def test_reward_memory_options_give_the_same_loss_and_gradients(tmp_path):
    """Decoding the reward frames in chunks under checkpointing, and taking the rewards' gradient before the
    student's graph (split_reward_backward), change memory, not the maths."""
    out = {}
    variants = {"kept": ["train.reward_checkpointing=false"],
                "checkpointed": ["train.reward_checkpointing=true", "train.decode_chunk=3"],
                "decode-only": ["train.reward_checkpointing=false", "train.decode_checkpointing=true"],
                "split": ["train.reward_checkpointing=false", "train.split_reward_backward=true", "lora.dropout=0.3"],
                "joint": ["train.reward_checkpointing=false", "lora.dropout=0.3"]}
    for name, extra in variants.items():
        recipe = load_recipe(REPO / "recipes" / "tiny.yaml",
                             ["train.batch_size=2", "sample.prompts=[]", "lora.rank=4", *extra])
        d = Distiller(recipe, tmp_path / name, progress=False, log=lambda m: None)
        d.setup()
        pixels, captions = d.stream.next_batch()
        calls = []
        decode = d.teacher.decode_video
        d.teacher.decode_video = lambda *a, calls=calls, decode=decode, **k: calls.append(1) or decode(*a, **k)
        torch.manual_seed(5)  # the LoRA dropout masks
        loss, metrics = d.training_step(pixels, captions)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for _, p in sorted(d.network.named_parameters()) if p.grad is not None])
        out[name] = (loss.detach(), metrics["reward/tiny-image"], grads, len(calls))
    for a, b in (("checkpointed", "kept"), ("decode-only", "kept"), ("split", "joint")):
        torch.testing.assert_close(out[a][0], out[b][0], atol=1e-6, rtol=1e-5)
        assert abs(out[a][1] - out[b][1]) < 1e-6
        torch.testing.assert_close(out[a][2], out[b][2], atol=1e-7, rtol=1e-4)
    assert not torch.allclose(out["joint"][2], out["kept"][2])  # dropout 0.3 vs 0.1: the masks matter
    assert out["kept"][3] == 1 and out["checkpointed"][3] > 2  # chunks decoded again in the backward
    assert out["decode-only"][3] > 2


def test_rewards_in_bfloat16_train_and_a_bad_dtype_is_one_line(tmp_path):
    """rewards[].dtype: the frozen reward weights in bfloat16, the gradient still reaches the float32 LoRA."""
    import pytest

    from t2vturbo.errors import ConfigError

    scores = {}
    for dtype in ("float32", "bfloat16"):
        recipe = load_recipe(REPO / "recipes" / "tiny.yaml",
                             ["train.batch_size=2", "sample.prompts=[]", "lora.rank=4", "train.learning_rate=3e-3"])
        for rc in recipe.rewards:
            rc.dtype = dtype
        d = Distiller(recipe, tmp_path / dtype, progress=False, log=lambda m: None)
        d.setup()
        assert {next(m.parameters()).dtype for _, m in d.rewards} == {getattr(torch, dtype)}
        pixels, captions = d.stream.next_batch()
        for _ in range(2):  # the LoRA B starts at zero: a second step sees the reward's gradient on A too
            d.step = 0
            loss, metrics = d.training_step(pixels, captions)
            loss.backward()
            d.optimizer.step()
            d.optimizer.zero_grad(set_to_none=True)
        trained = [p for p in d.network.parameters() if p.requires_grad]
        assert torch.isfinite(loss) and all(p.dtype == torch.float32 for p in trained)
        scores[dtype] = metrics["reward/tiny-image"], metrics["reward/tiny-video"]
    for a, b in zip(scores["float32"], scores["bfloat16"], strict=True):
        assert abs(a - b) < 0.03, scores  # the same reward to bfloat16's precision
    with pytest.raises(ConfigError, match=r"rewards\[tiny-image\]\.dtype must be one of"):
        load_recipe(REPO / "recipes" / "tiny.yaml", ["rewards=[{name: tiny-image, dtype: float8}]"])
