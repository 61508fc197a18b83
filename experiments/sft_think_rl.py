r"""The think-first start after a last SFT stage on the `rl` split's annotated records.

  python -m experiments.run --config=experiments/sft_think_rl.py   # builds sft_think_wide first
  python -m experiments.ladder --sft_dir=runs/sft_think_rl         # the ladder from it

ShopWorld's `sft` split has no rare phrasings and holds each hard type at 8 %; the `rl` split
has rare phrasings (35 %), wider leaf coverage, each hard type at 15 %, and step annotations
on `annotation_fraction` (30 %) of its records. `experiments/sft_think_wide.py` never sees
them, and its errors on the hard types sit where those records would teach (the query
step, docs/results/pass_at_k). This stage continues `sft_think_wide` on the annotated `rl`
records alone (`config.sft.require_cot` leaves the others out; the RL stages still sample
every `rl` prompt): at tiny, 150 updates of 32 (2 epochs of the 2,400 records) at lr 1e-4.

Measured at tiny (world seed 0, seed 0, every split in full, paired against
`sft_think_wide`; docs/results/rl_data): macro-F1 over the four hard-type splits +9.8
[+6.9, +12.7] (test_negation +15.6 [+9.4, +21.8], test_alternative +12.0 [+5.4, +18.5],
test_knowledge +7.0 [+1.4, +12.8]), dev +3.6 [+0.5, +7.2], test_head, test_longtail and
test_qa +2.3 to +4.5 (inside the noise); 60 such updates, 3 seeds: hard types +6.0 [+3.7,
+8.3]. ~4 min on 2 CPU cores after `sft_think_wide`.
"""

from experiments import sft_think_wide


def get_config(arg=None):
    c = sft_think_wide.get_config(arg)
    c.name = "sft_think_rl"
    c.init_from = "sft_think_wide"
    c.sft.train_split = "rl"
    c.sft.require_cot = True
    c.optimizer.lr = c.optimizer.lr / 5  # tiny: 1e-4
    c.optimizer.warmup_steps = 5
    # tiny: two epochs of the 2,400 annotated rl records; other variants (not measured): a
    # quarter of the previous stage's updates.
    c.optimizer.total_steps = 150 if c.variant == "tiny" else c.optimizer.total_steps // 4
    c.checkpoint.every = c.optimizer.total_steps
    return c
