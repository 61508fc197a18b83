"""AdamW with linear warm-up + cosine decay, global-norm clipping and a weight-decay mask.

Gradient accumulation is not an optax wrapper here: it happens inside the jitted train
step (she_jax.train.loop.make_train_step), where the micro-batch gradients are summed and
divided once by the global loss normalizer, so the update is the same for any number of
micro-batches.
"""

from collections.abc import Callable
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Parameters named like this are never weight-decayed: norm scales and biases carry no
# "size" that decay should shrink (decaying a norm scale towards 0 silences the layer).
NO_DECAY_NAMES = ("scale", "bias")


def make_lr_schedule(
    lr: float, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0
) -> Callable[[jax.Array], jax.Array]:
    """Learning rate at optimizer update `step` (0-based).

    Warm-up: lr * (step + 1) / warmup_steps for step < warmup_steps, so the first update
    already moves (optax's warm-up starts at exactly 0, wasting update 0), reaching lr at
    step warmup_steps - 1. Then cosine from lr at step warmup_steps to lr * end_lr_ratio at
    step total_steps, constant afterwards.
    """
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(f"optimizer: need 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                         f"({total_steps}) and total_steps > 0")
    end_lr = lr * end_lr_ratio
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = lr * (step + 1.0) / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools mirroring `params`: True where AdamW weight decay applies."""

    def decays(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt_config: Any) -> tuple[optax.GradientTransformation, Callable]:
    """Builds (tx, lr_schedule) from `config.optimizer` (keys in she_jax/train/config.py)."""
    schedule = make_lr_schedule(
        opt_config.lr, opt_config.warmup_steps, opt_config.total_steps,
        opt_config.get("end_lr_ratio", 0.0),
    )
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=opt_config.b1,
        b2=opt_config.b2,
        eps=opt_config.eps,
        weight_decay=opt_config.weight_decay,
        mask=weight_decay_mask,
    )
    if opt_config.clip_norm and opt_config.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt_config.clip_norm), adamw)
    else:
        tx = adamw
    return tx, schedule
