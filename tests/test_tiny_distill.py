"""A few distillation steps on the SHIPPED tiny teacher move both tiny rewards the right way."""

import torch
from conftest import REPO

from t2vturbo.config import load_recipe
from t2vturbo.distill import Distiller


def test_a_few_steps_on_the_shipped_teacher_raise_both_rewards(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml",
                         ["train.learning_rate=3e-3", "train.batch_size=2", "sample.prompts=[]", "lora.rank=4"])
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    assert d.parts.name == "tiny" and d.parts.vae_scale != 1.0  # the shipped, trained teacher
    pixels, captions = d.stream.next_batch()

    def rewards():
        d.step = 0  # same noise, timestep and w draw every time: only the weights change
        with torch.no_grad():
            _, m = d.training_step(pixels, captions)
        return m["reward/tiny-image"], m["reward/tiny-video"]

    before = rewards()
    params = [p for p in d.unet.parameters() if p.requires_grad]
    for _ in range(6):
        d.step = 0
        loss, _ = d.training_step(pixels, captions)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        d.optimizer.step()
        d.optimizer.zero_grad(set_to_none=True)
    after = rewards()
    assert after[0] > before[0] and after[1] > before[1], (before, after)
