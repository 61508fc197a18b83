r"""SRPO curriculum stage 3 of 3, trainer `srpo`.

  python -m experiments.run --config=experiments/srpo_stage3.py
  python -m experiments.run --config=experiments/srpo_stage3.py --config.srpo.step_reward.source=verifier

Builds what it lacks first (SFT, the generative step reward model, the earlier stages) into
their own run directories. See experiments/srpo_common.py for what the stages share and
she_jax/train/srpo.py for the method.
"""

from experiments.srpo_common import srpo_stage_config


def get_config(arg=None):
    return srpo_stage_config(3, arg)
