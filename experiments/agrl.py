r"""TaoSR-AGRL: rule-aware reward shaping + adaptive guided replay, trainer `agrl`.

  python -m experiments.run --config=experiments/agrl.py              # tiny: builds runs/sft_think first
  python -m experiments.run --config=experiments/agrl.py --config.replay.mode=hint
  python -m experiments.run --config=experiments/agrl.py --config.shaping.gate=cap

Same RL driver, data and budget as experiments/grpo.py, so the two compare directly.
"""

from experiments.common import rl_config
from she_jax.rewards.shaping import shaping_config
from she_jax.rl.replay import replay_config


def get_config(arg=None):
    c = rl_config("agrl", "agrl", arg)
    c.shaping = shaping_config()
    c.replay = replay_config()
    c.replay.mode = "gold"
    c.rl.loss.off_policy_gamma = c.replay.importance_gamma
    return c
