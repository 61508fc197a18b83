r"""pass@N DPO (TaoSR1 stage 2), trainer `dpo`.

  python -m experiments.run --config=experiments/dpo.py                 # tiny: builds runs/sft_think first
  python -m experiments.run --config=experiments/dpo.py --config.dpo.beta=0.3 \
      --config.dpo.label_smoothing=0.1

Samples N answers per prompt from the SFT policy, prints pass@1..N (also in
pass_at_n.json), builds self-correction and oracle-guidance pairs and trains sigmoid DPO
against the frozen SFT policy. Writes runs/dpo[_<variant>]/ and prints the eval table.
"""

from experiments.common import base_config
from she_jax.train.dpo import dpo_section


def get_config(arg=None):
    c = base_config("dpo", "dpo", arg)
    c.init_from = "sft_think"
    c.dpo = dpo_section()
    c.batch.batch_size = 16  # pairs per update
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.total_steps = 150
    c.log_every = 10
    c.checkpoint.every = 50
    if c.variant in ("small", "pod"):
        c.optimizer.lr = 2e-5
        c.dpo.num_prompts = 4096
    if c.variant == "qwen":
        c.optimizer.lr = 5e-7
        c.dpo.max_new_tokens = 192
        c.model.dtype = "bfloat16"
    return c
