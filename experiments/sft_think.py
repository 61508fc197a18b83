r"""SFT with a think-first CoT (steps, then the label): the starting policy of the RL
methods (trainer `sft`).

  python -m experiments.run --config=experiments/sft_think.py

Same data as experiments/sft.py; config.sft.order differs, and at tiny scale so do the model
(the `tiny` preset, not sft.py's wider one), the optimizer and the schedule (800 updates, see
get_config): the RL stages run on this model, and their settings and timings were measured
on it. The RL
configs (dpo, grpo, agrl, srpo_stage*) start from it (config.init_from = 'sft_think'): with
the reasoning before the label, step-level rewards act on the steps the label is drawn
from. Pass --config.init_from=sft to an RL config to train the answer-first policy instead.
"""

from experiments import sft


def get_config(arg=None):
    c = sft.get_config(arg)
    c.name = "sft_think"
    c.sft.order = "think_first"
    if c.variant == "tiny":
        c.model.preset = "tiny"
        # The lexical-overlap task (as sft.py): 3 seeds, paired against the same runs
        # without it (docs/results/sft_think_overlap), test_head macro-F1 +13.5 [+9.0,
        # +18.4] (40-49 against 23-37), every split but knowledge up; ~12 % slower
        # updates. --config.sft.overlap_weight=0 gives the earlier start.
        c.sft.overlap_weight = 1.0
        c.optimizer.lr = 3e-3
        # The RL starting point, and the longest link of the SRPO chain: 800 updates keep
        # `experiments/srpo_stage3.py`'s whole chain within 20 minutes on 2 CPU cores.
        # (500 updates were too few: dev step accuracy on the query step 0.18, and the RL
        # stages then lost accuracy.)
        c.optimizer.total_steps = 800
        c.checkpoint.every = 400
    return c
