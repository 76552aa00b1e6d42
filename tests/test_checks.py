"""`vitdist check`: each planted bug FAILs its check, the correct model PASSes them all."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from accelerate.utils import set_seed

from vitdist.checklist.checks import (check_gradients, check_overfit, check_overfit_seeds, check_shapes, fixed_batch,
                                      main, run_checks)
from vitdist.config import ModelConfig
from vitdist.data.sources import _synthetic
from vitdist.model import VisionTransformer
from vitdist.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


CFG = ModelConfig(embed_dim=32, num_layers=2, num_heads=2, dim_feedforward=64, dropout=0.0)
STEPS = 100  # the correct tiny model needs about 10 on this data; the bugs get the same budget and still fail


def make(cls=VisionTransformer):
    def factory():
        set_seed(0)
        model = cls.from_config(CFG, num_classes=10)
        return model
    return factory


def data(n=32):
    ds = _synthetic(320, 32)
    idx = torch.cat([torch.nonzero(ds.labels == c).squeeze(1)[:4] for c in range(10)])[:n]  # 3-4 per class
    return (ds.images[idx].float() / 255 - 0.5) / 0.5, ds.labels[idx]


# --- planted bugs, each a real mistake in a ViT's forward

class NoPosEmbed(VisionTransformer):
    """Forgets to add the position embedding."""

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class NoClassToken(VisionTransformer):
    """Never prepends the class token: pools the patch tokens (and slices the position embedding to fit)."""

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


class DetachedHead(VisionTransformer):
    """Detaches the features before the head: only the head learns."""

    def forward(self, x):
        return self.head(self.forward_features(x)[:, 0].detach())


class WrongStride(VisionTransformer):
    """Patch embedding with stride p/2 (overlapping patches), position embedding sized to match, so the
    forward runs: only the token count betrays it (49 tokens instead of 16 on 32px with p=8)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p, d = self.patch_embed.proj.kernel_size[0], self.pos_embed.shape[-1]
        self.patch_embed.proj = nn.Conv2d(3, d, kernel_size=p, stride=p // 2)
        n = ((32 - p) // (p // 2) + 1) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)


def test_correct_model_passes_every_check():
    x, y = data()
    shapes = check_shapes(make(), x, 10, CFG.patch_size, CFG.embed_dim)
    grads = check_gradients(make(), x, y)
    overfit = check_overfit(make(), fixed_batch(x, y), max_steps=STEPS)
    assert shapes.passed, shapes.line()
    assert shapes.numbers["tokens"] == [32, 16, 32] and shapes.numbers["output"] == [32, 10]
    assert grads.passed, grads.line()
    assert 0.1 <= grads.numbers["total_norm"] <= 10 and not grads.numbers["no_grad"]
    assert overfit.passed, overfit.line()
    assert overfit.numbers["steps_to_100"] <= STEPS and overfit.numbers["final_loss"] < overfit.numbers["first_loss"]
    assert "100%" in overfit.line() and overfit.line().startswith("PASS")


def test_unused_position_embedding_fails_gradients():
    x, y = data()
    r = check_gradients(make(NoPosEmbed), x, y)
    assert not r.passed and r.numbers["no_grad"] == ["pos_embed"], r.line()
    assert r.line().startswith("FAIL gradients") and "pos_embed" in r.line() and "never used" in r.hint


def test_unused_class_token_fails_gradients():
    x, y = data()
    r = check_gradients(make(NoClassToken), x, y)
    assert not r.passed and r.numbers["no_grad"] == ["cls_token"], r.line()


def test_detached_head_fails_gradients():
    x, y = data()
    r = check_gradients(make(DetachedHead), x, y)
    assert not r.passed, r.line()
    # everything before the head is cut off; the head itself still learns
    assert "head.weight" not in r.numbers["no_grad"] and "patch_embed.proj.weight" in r.numbers["no_grad"]
    assert len(r.numbers["no_grad"]) == r.numbers["num_params"] - 2


def test_wrong_patch_stride_fails_shapes():
    x, _ = data()
    r = check_shapes(make(WrongStride), x, 10, CFG.patch_size, CFG.embed_dim)
    assert not r.passed and r.numbers["tokens"] == [32, 49, 32], r.line()
    assert "expected (32, 16, 32)" in r.line()


def test_gradient_norm_out_of_range_fails():
    x, y = data()
    r = check_gradients(make(), x, y, norm_range=(100.0, 1000.0))  # the same model, an impossible range
    assert not r.passed and "OUTSIDE" in r.detail and r.hint


def test_labels_reshuffled_every_step_cannot_overfit():
    # A ViT *can* memorise one fixed random labelling of 32 images, so a fixed permutation is not a bug the
    # check could see. A loader that shuffles labels independently of images on every batch is: no function
    # of the image predicts a label that changes at random each step.
    x, y = data()
    g = torch.Generator().manual_seed(0)
    r = check_overfit(make(), lambda step: (x, y[torch.randperm(len(y), generator=g)]), max_steps=STEPS)
    assert not r.passed and r.numbers["best_acc"] < 0.6, r.line()
    assert "reached only" in r.line() and "this usually means a bug" in r.line()


def test_same_image_with_two_labels_cannot_overfit():
    # 16 images each appear twice with different labels: at most 50% of the batch can be right.
    x, y = data()
    x2, y2 = torch.cat([x[:16], x[:16]]), torch.cat([y[:16], (y[:16] + 1) % 10])
    r = check_overfit(make(), fixed_batch(x2, y2), max_steps=STEPS)
    assert not r.passed and r.numbers["best_acc"] <= 0.5, r.line()


def test_cli_passes_on_synthetic_data(capsys):
    rc = main(["--model.embed-dim", "32", "--model.num-layers", "2", "--model.num-heads", "2",
               "--model.dim-feedforward", "64", "--data.name", "synthetic", "--data.synthetic-size", "320"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(":")[0] for line in lines] == ["PASS shapes", "PASS gradients", "PASS overfit"], out
    assert "3/3 checks passed" in out


def test_cli_fail_exits_nonzero(capsys):
    # An overfit budget of 1 step cannot reach 100%: the check FAILs, says why, and the exit status is 1.
    rc = main(["--model.embed-dim", "32", "--model.num-layers", "2", "--model.num-heads", "2",
               "--model.dim-feedforward", "64", "--data.name", "synthetic", "--data.synthetic-size", "320",
               "--overfit-steps", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL overfit" in out and "usually means a bug" in out, out


def test_cli_bad_input_exits_2_with_one_line(capsys):
    for argv, flag in ((["--overfit-steps", "0"], "--overfit-steps"),
                       (["--model.embed-dim", "30", "--model.num-heads", "4"], "--model.embed-dim"),
                       (["--preset", "nope"], "--preset")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and flag in err, (argv, err)


# --- issue 16: a seed that falls short is not a bug

class BlindToClass0(VisionTransformer):
    """Can never predict class 0 (its logit is a constant far below): at most 28 of the 32 samples (4 of class 0)
    come out right, a near miss that no start can close."""

    def forward(self, x):
        return super().forward(x).index_fill(1, torch.tensor([0]), -100.0)


def make_for_seed(blind_seeds):
    def factory(seed):
        set_seed(seed)
        return (BlindToClass0 if seed in blind_seeds else VisionTransformer).from_config(CFG, num_classes=10)
    return factory


def test_a_start_that_falls_short_is_retried_and_the_pass_says_which_seed():
    x, y = data()
    r = check_overfit_seeds(make_for_seed({0}), fixed_batch(x, y), seeds=(0, 1, 2), max_steps=STEPS)
    assert r.passed and r.numbers["seed"] == 1, r.line()
    assert r.numbers["best_acc_by_seed"][0] == 28 / 32, r.numbers["best_acc_by_seed"]
    assert "with seed 1" in r.detail and "seed 0 reached 87.5%" in r.detail, r.detail


def test_a_fail_says_what_was_seen_from_every_start():
    x, y = data()
    r = check_overfit_seeds(make_for_seed({0, 1, 2}), fixed_batch(x, y), seeds=(0, 1, 2), max_steps=50)
    assert not r.passed and list(r.numbers["best_acc_by_seed"]) == [0, 1, 2], r.line()
    assert r.line().startswith("FAIL overfit: did not reach 100% on 32 samples in 50 steps with seeds 0, 1, 2 "
                               "(best 87.5%, 87.5%, 87.5%"), r.line()
    assert "this usually means a bug" in r.hint and "there is a bug" not in r.line()
    # Far from 100% (an image with two labels: at most 50%) is no unlucky start: no other seed is tried.
    x2, y2 = torch.cat([x[:16], x[:16]]), torch.cat([y[:16], (y[:16] + 1) % 10])
    r = check_overfit_seeds(make_for_seed(set()), fixed_batch(x2, y2), seeds=(0, 1, 2), max_steps=50)
    assert not r.passed and list(r.numbers["best_acc_by_seed"]) == [0], r.line()
    assert "with seed 0 (best " in r.detail and "no other seed tried" in r.detail, r.detail


def test_the_demo_presets_check_passes(capsys):
    """`vitdist check --preset demo`: the project's own data and model pass, whichever start (seed) happens to fall
    short on this machine's numerics (a user's seed 0 did; here seed 20, on one thread, reaches 93.8% in 200
    steps: `replace(..., seed=20)` shows the retry on real data, at 4x this test's time)."""
    results = run_checks(get_preset("demo"))
    out = capsys.readouterr().out
    assert [r.passed for r in results] == [True, True, True], out
