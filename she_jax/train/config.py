"""The config sections every she_jax trainer shares (optimizer, batch, checkpoint, mesh, ...).

Experiment configs start from `train_config()` and add their method's own sections
(model, data, loss, ...). Each key below is read by exactly one piece of infrastructure,
named in its comment, so a key can be traced to the code it changes.
"""

import ml_collections

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated). The model
# tags every parameter and main activation with these names; this table alone decides how
# they are laid out on the mesh (Flax-examples / MaxText style: sharding is data, not code).
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),  # examples: split over every data-parallel device
    ("length", None),  # sequence positions stay whole on a device
    ("embed", "fsdp"),  # ZeRO-3 style: weights split on the model dim over fsdp
    ("vocab", "tensor"),  # Megatron-style tensor parallelism on the wide dims
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)


def train_config() -> ml_collections.ConfigDict:
    """Returns the shared training sections with their defaults (tiny, single CPU device)."""
    config = ml_collections.ConfigDict()

    # Seed of the parameter init and of the per-step rng in the train state (dropout,
    # sampling inside the loss). Data order has its own seed in the data section.
    config.seed = 0

    # she_jax.train.workdir.check_resume_config: a rerun on a workdir with a checkpoint
    # resumes it; 'error' stops when the config differs from its config.json outside
    # workdir.RESUME_MAY_CHANGE (total steps, eval, logging, ...), 'allow' resumes anyway
    # and records the change in config_changes.jsonl.
    config.resume_mismatch = "error"

    # she_jax.train.optim.make_optimizer / make_lr_schedule.
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 1e-3  # peak learning rate, reached at the end of warm-up
    config.optimizer.warmup_steps = 10  # linear warm-up length in optimizer updates
    config.optimizer.total_steps = 100  # number of optimizer updates; cosine reaches its end here
    config.optimizer.end_lr_ratio = 0.0  # final lr of the cosine decay, as a fraction of lr
    config.optimizer.weight_decay = 0.0  # AdamW decoupled decay (never on norm scales, biases)
    config.optimizer.b1 = 0.9  # Adam first-moment decay
    config.optimizer.b2 = 0.95  # Adam second-moment decay
    config.optimizer.eps = 1e-8  # Adam denominator epsilon
    config.optimizer.clip_norm = 1.0  # global gradient-norm clip; <= 0 disables clipping

    # she_jax.train.loop.make_train_step and the trainers' data loaders.
    config.batch = ml_collections.ConfigDict()
    config.batch.batch_size = 8  # examples per optimizer update (global, over all hosts)
    config.batch.accum_steps = 1  # micro-batches per update (must divide batch_size)

    # she_jax.train.checkpoint.TrainCheckpointer (directory: <workdir>/checkpoints).
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 50  # save every N updates (plus a forced save at the end)
    config.checkpoint.keep = 2  # keep the N most recent checkpoints

    # she_jax.train.loop.train_loop: write metrics every N updates (NaN is checked every
    # update regardless), and run the eval callback every N updates (0 = only at the end).
    config.log_every = 10
    config.eval_every = 0

    # she_jax.parallel.make_mesh: devices per mesh axis; -1 fills the remaining devices.
    # The default is a 1-device mesh; data=-1 is plain data parallelism over all devices.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    # she_jax.parallel: logical axis name -> mesh axes (see DEFAULT_AXIS_RULES).
    config.axis_rules = DEFAULT_AXIS_RULES

    # she_jax.parallel.initialize_distributed: multi-host (TPU pod, GPU cluster) start-up.
    # None values come from $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID,
    # else jax.distributed.initialize auto-detects them (TPU, SLURM, MPI, ...).
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False  # call jax.distributed.initialize() at start-up
    config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
    config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
    config.distributed.process_id = ml_collections.config_dict.placeholder(int)
    config.distributed.initialization_timeout = 300  # s for every process to join
    config.distributed.heartbeat_timeout = 100  # s of silence before a dead process stops all
    config.distributed.shutdown_timeout = 300  # s the processes wait for each other at exit
    return config
