"""Learning-rate schedule values, weight-decay mask, clipping and AdamW wiring."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from she_jax.train import optim
from she_jax.train.config import train_config


def test_schedule_at_hand_computed_steps():
    schedule = optim.make_lr_schedule(1.0, warmup_steps=4, total_steps=14, end_lr_ratio=0.1)
    expected = {
        0: 0.25, 1: 0.5, 3: 1.0,  # warm-up: (step + 1) / 4
        4: 1.0,  # cosine starts at the peak
        9: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)),  # half-way: 0.55
        14: 0.1, 20: 0.1,  # end value, then constant
    }
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, abs=1e-6), step


def test_schedule_without_warmup_and_bad_args():
    schedule = optim.make_lr_schedule(2.0, warmup_steps=0, total_steps=10)
    assert float(schedule(0)) == pytest.approx(2.0)
    assert float(schedule(5)) == pytest.approx(1.0)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_lr_schedule(1.0, warmup_steps=11, total_steps=10)


def test_weight_decay_mask_skips_norms_and_biases():
    params = {"params": {"embed": {"embedding": 0}, "norm": {"scale": 0},
                         "q_proj": {"kernel": 0, "bias": 0}}}
    assert optim.weight_decay_mask(params) == {
        "params": {"embed": {"embedding": True}, "norm": {"scale": False},
                   "q_proj": {"kernel": True, "bias": False}}}


def _opt_config(**overrides):
    config = train_config().optimizer
    config.update(dict(lr=0.1, warmup_steps=0, total_steps=10, b1=0.9, b2=0.99, eps=1e-8),
                  **overrides)
    return config


def test_weight_decay_applies_to_kernels_only():
    # Zero gradients: the only change AdamW makes is the decoupled decay lr * wd * param.
    tx, _ = optim.make_optimizer(_opt_config(weight_decay=0.5, clip_norm=0.0))
    params = {"layer": {"kernel": jnp.full((2, 2), 2.0), "scale": jnp.full((2,), 2.0)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["layer"]["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["layer"]["scale"], 0.0)


def test_clipping_rescales_gradients_by_global_norm():
    tx, _ = optim.make_optimizer(_opt_config(clip_norm=1.0))
    params = {"a": jnp.zeros((2,)), "b": jnp.zeros((1,))}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # global norm 5
    _, state = tx.update(grads, tx.init(params), params)
    adam_state = state[1][0]
    # First moment after one update = (1 - b1) * clipped grad = 0.1 * grad / 5.
    np.testing.assert_allclose(adam_state.mu["a"], [0.1 * 3 / 5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(adam_state.mu["b"], [0.1 * 4 / 5], rtol=1e-6)


def test_first_update_follows_schedule():
    # Adam's first step is lr * sign(g) (bias-corrected m / sqrt(v)); warm-up gives lr(0).
    tx, schedule = optim.make_optimizer(_opt_config(warmup_steps=5, clip_norm=0.0))
    params = {"w": jnp.zeros((3,))}
    updates, _ = tx.update({"w": jnp.array([1.0, -2.0, 0.5])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -float(schedule(0)) * np.array([1, -1, 1]), rtol=1e-5)
    assert float(schedule(0)) == pytest.approx(0.1 / 5)
