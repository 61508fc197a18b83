r"""The generative step reward model of SRPO (TaoSR-SHE), trainer `genrm`.

  python -m experiments.run --config=experiments/genrm.py        # tiny, ~2 min on 2 CPU cores
  python -m experiments.run --config=experiments/genrm.py:small  # small model + world

Starts from the finished SFT run (config.init_from = 'sft_think'; built first into runs/sft_think if
missing, ~5 min more at tiny). Trains the SFT model to write a 'yes'/'no' verdict after
every CoT step (she_jax.rewards.genrm) on gold CoTs, CoTs with injected errors and SFT
rollouts labelled by the offline verifier. Writes runs/genrm[_<variant>]/ (config.json,
metrics.jsonl, tb/, checkpoints/, model/, tokenizer/, genrm_examples.jsonl,
genrm_heldout.jsonl, plots/, genrm_eval.json = eval.json: held-out step verdict accuracy
and ROC AUC per step and per error kind) and prints that table.

Tiny budget: SFT rollouts (256 prompts x 4), 400 updates of 16 CoTs (80 verdict slots),
held-out scoring of ~850 CoTs. Measured with a weak 400-step SFT stand-in: 7.5 min wall on
2 cores shared at load average 6-9 (so ~1.5-2 min on 2 free cores), held-out step accuracy
0.67 and ROC AUC 0.69; 1000 updates or 3x more synthetic examples did not do better.
From the strong start (`--config.init_dir=runs/sft_think_wide`, lr 3e-4, balanced verdicts,
1024 rollout prompts): AUC 0.77 in 6.5 min, 0.78 with twice the data
(docs/results/genrm_strong).
"""

from experiments.common import base_config
from she_jax.train.genrm import genrm_section


def get_config(arg=None):
    c = base_config("genrm", "genrm", arg)
    c.init_from = "sft_think"
    c.genrm = genrm_section()
    c.batch.batch_size = 16
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.total_steps = 400
    c.optimizer.weight_decay = 0.01
    c.log_every = 25
    c.checkpoint.every = 200
    if c.variant in ("small", "pod"):
        c.optimizer.lr = 3e-4
        c.optimizer.total_steps = 1500
        c.batch.batch_size = 32
    if c.variant == "qwen":
        c.optimizer.lr = 1e-5
        c.optimizer.total_steps = 1000
        c.batch.batch_size = 16
        c.batch.accum_steps = 4
        c.genrm.buckets = (128, 192, 256)  # an HF tokenizer spends more tokens per step
        c.genrm.max_len = 384
    return c
