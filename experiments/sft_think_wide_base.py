r"""The first half of the strong think-first SFT start (`experiments/sft_think_wide.py`).

  python -m experiments.run --config=experiments/sft_think_wide_base.py

At tiny: `sft_think.py` on the `tiny_wide` model with the lexical-overlap task (what made
the answer-first `sft.py` learn the task), 800 updates at lr 1e-3. Other variants: as
`sft_think.py`.
"""

from experiments import sft_think


def get_config(arg=None):
    c = sft_think.get_config(arg)
    c.name = "sft_think_wide_base"
    if c.variant == "tiny":
        c.model.preset = "tiny_wide"
        c.sft.overlap_weight = 1.0
        c.optimizer.lr = 1e-3
        c.optimizer.total_steps = 800
    return c
