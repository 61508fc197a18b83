r"""The think-first start's last SFT stage with rejection-sampled chains (RFT) added.

  python -m experiments.run --config=experiments/sft_think_rft.py   # builds sft_think_wide
                                                                    # and sft_think_rl first
  python -m experiments.ladder --sft_config=experiments/sft_think_rft.py --methods=grpo

`experiments/sft_think_rl.py` trains its stage on the `rl` split's 2,400 annotated records
alone; the other 5,600 carry a gold label but no CoT. Here 8 chains are sampled (T = 1)
from `sft_think_rl`'s policy for each of those; of the format-valid ones with the right
label, the one whose steps agree most with the others' is kept as the record's CoT
(she_jax.rl.rejection; the label is the only supervision), and the stage trains on the
gold records and the kept chains together, from the same start (`sft_think_wide`) at the
same rate: at tiny 450 updates of 32, two epochs of about 7,700 records, as `sft_think_rl`
makes two of its 2,400.

Measured at tiny (world seed 0, seeds 0-2, every split in full, paired; docs/results/rft):
95 % of the 5,600 records keep a chain (6 min of sampling a seed); against `sft_think_rl`
test_longtail +3.1 [+0.5, +6.0], dev +2.2 [+0.1, +4.4], every test split +1.1 [-0.1, +2.4]
— but against the same stage on the gold records alone for the same 450 updates, within
noise on every split (+0.1 [-1.6, +1.7]) and step accuracy -1.7 [-2.6, -0.8]: about half
the kept chains state a wrong fact. The gain is the longer stage's, not the chains'.
"""

from experiments import sft_think_rl


def get_config(arg=None):
    c = sft_think_rl.get_config(arg)
    c.name = "sft_think_rft"
    c.sft.rft.samples = 8
    c.prerequisites = {"sft_think_rl": "sft.rft.policy_dir"}
    # tiny: two epochs of the gold records and the kept chains (~7,400); other variants
    # (not measured): three times sft_think_rl's updates.
    c.optimizer.total_steps = 450 if c.variant == "tiny" else 3 * c.optimizer.total_steps
    c.checkpoint.every = c.optimizer.total_steps
    return c
