"""Training infrastructure shared by every she_jax trainer (SFT, DPO, GRPO, SRPO, ...).

state       TrainState, create_train_state
optim       make_optimizer (AdamW + warm-up/cosine + clipping + decay mask)
loop        make_train_step (micro-batched, sharded, donated), train_loop (resume,
            checkpoints, metrics, eval, SIGTERM, NaN stop), IndexedBatches
checkpoint  TrainCheckpointer (orbax: state + data position)
metrics     MetricWriter (metrics.jsonl, TensorBoard, progress), write_config,
            read_metrics, plot_metrics
config      train_config (the shared config sections)
"""

from she_jax.train.checkpoint import TrainCheckpointer
from she_jax.train.config import train_config
from she_jax.train.loop import IndexedBatches, make_train_step, train_loop
from she_jax.train.metrics import MetricWriter, plot_metrics, read_metrics, write_config
from she_jax.train.optim import make_lr_schedule, make_optimizer, weight_decay_mask
from she_jax.train.state import TrainState, create_train_state, state_sharding
