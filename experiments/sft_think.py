r"""SFT with a think-first CoT (steps, then the label): the starting policy of the RL
methods (trainer `sft`).

  python -m experiments.run --config=experiments/sft_think.py

Same data, model and schedule as experiments/sft.py; only config.sft.order differs. The RL
configs (dpo, grpo, agrl, srpo_stage*) start from it (config.init_from = 'sft_think'): with
the reasoning before the label, step-level rewards act on the steps the label is drawn
from. Pass --config.init_from=sft to an RL config to train the answer-first policy instead.
"""

from experiments import sft


def get_config(arg=None):
    c = sft.get_config(arg)
    c.name = "sft_think"
    c.sft.order = "think_first"
    return c
