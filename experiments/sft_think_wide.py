r"""The strong think-first SFT start: 800 more updates at half the rate on top of
`experiments/sft_think_wide_base.py` (which experiments.run builds first).

  python -m experiments.run --config=experiments/sft_think_wide.py     # ~30 min on 2 CPU cores
  python -m experiments.ladder --sft_dir=runs/sft_think_wide            # the ladder from it
  python -m experiments.run --config=experiments/grpo.py --config.init_from=sft_think_wide

At tiny (world seed 0, seed 0, every split in full): test_head macro-F1 79.6, test_longtail
43.4, dev 51.9 (the base alone after its 800 updates: 51.1, 31.6, 35.2; `sft_think.py`, 3
seeds: 40.2-48.8, 26.7-29.9, 31.5-34.7). It takes ~3x `sft_think.py`'s time, so the main command keeps `sft_think.py`.
Other variants: as `sft_think.py` (no base run).
"""

from experiments import sft_think_wide_base


def get_config(arg=None):
    c = sft_think_wide_base.get_config(arg)  # at tiny: tiny_wide + the overlap task
    c.name = "sft_think_wide"
    if c.variant == "tiny":
        c.init_from = "sft_think_wide_base"
        c.optimizer.lr = 5e-4
        c.optimizer.warmup_steps = 20
    return c
