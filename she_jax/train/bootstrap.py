"""The pieces every trainer builds first: records, tokenizer, model config and parameters.

Run directories hand their model on in Hugging Face form: a finished run writes
`<workdir>/tokenizer/` and `<workdir>/model/` (config.json + model.safetensors, the tokenizer
and its fingerprint: `she_jax.run_dir.export_model`). A later stage (`config.init_from`), the
standalone evaluator and the scorer load those through `she_jax.run_dir`, and so can
transformers, with no she_jax code.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections

from she_jax import run_dir, tokenizer as tokenizer_lib
from she_jax.data import sources
from she_jax.models import hf, precision, transformer

MODEL_DIR = run_dir.MODEL_DIR
TOKENIZER_DIR = run_dir.TOKENIZER_DIR
# Finished runs' artifacts (eval and score import run_dir directly, not this module).
load_run_model = run_dir.load_model
export_model = run_dir.export_model
run_order = run_dir.run_order


def model_config_section(preset: str = "tiny") -> ml_collections.ConfigDict:
    """The `model` section (each key documented)."""
    c = ml_collections.ConfigDict()
    # ModelConfig preset for a from-scratch model: 'tiny' | 'tiny_wide' | 'small'.
    c.preset = preset
    c.hf_path = ""  # a local Hugging Face model directory to start from (overrides preset)
    # Compute dtype: 'float32' | 'bfloat16' (params stay float32) | 'auto': bfloat16 where
    # bf16 matmuls are fast (TPU, GPU, AMX-BF16 CPU), else float32; config.json records
    # the resolved one (resolve_compute_dtype).
    c.dtype = "float32"
    c.vocab_size = 4096  # from-scratch models: SentencePiece vocab trained to this size
    # From-scratch models: ModelConfig fields replacing the preset's, e.g. {'num_layers': 6}.
    c.overrides = ml_collections.ConfigDict()
    return c


def resolve_compute_dtype(config: ml_collections.ConfigDict) -> str:
    """config.model.dtype with 'auto' replaced, in place, by the dtype it means on this
    machine (`precision.resolve_dtype`: bfloat16 on TPU, GPU and AMX-BF16 CPUs, else
    float32), so that config.json records the dtype the run computed in. Touches the JAX
    backend only for 'auto' (call it after `parallel.initialize_distributed`)."""
    dtype = precision.resolve_dtype(config.model.dtype)
    if dtype != config.model.dtype:
        logging.info("model.dtype 'auto' -> %s on backend %s", dtype, jax.default_backend())
        config.model.dtype = dtype
    return dtype


def init_dir(config: ml_collections.ConfigDict) -> str:
    """The finished prerequisite run this config starts from ('' when none)."""
    return config.get("init_dir", "") or ""


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                  splits: dict[str, list[dict]]) -> tokenizer_lib.Tokenizer:
    """Loads (HF path, prerequisite run, this run's earlier attempt) or trains the tokenizer.

    A from-scratch tokenizer is SentencePiece trained on the world's texts, to exactly
    config.model.vocab_size pieces. It is saved to <workdir>/tokenizer in every case.
    Multi-process, process 0 alone builds and saves it; every process then loads that copy.
    """
    if jax.process_count() == 1:
        return _load_or_build_tokenizer(config, workdir, splits)
    from she_jax import parallel

    parallel.on_main_process(lambda: _load_or_build_tokenizer(config, workdir, splits),
                             "she_jax: tokenizer saved")
    return tokenizer_lib.load_tokenizer(os.path.join(workdir, TOKENIZER_DIR))


def _load_or_build_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                             splits: dict[str, list[dict]]) -> tokenizer_lib.Tokenizer:
    own = os.path.join(workdir, TOKENIZER_DIR)
    if config.model.hf_path:
        tokenizer = tokenizer_lib.load_tokenizer(config.model.hf_path)
    elif init_dir(config):
        tokenizer = tokenizer_lib.load_tokenizer(os.path.join(init_dir(config), TOKENIZER_DIR))
    elif os.path.exists(own):
        tokenizer = tokenizer_lib.load_tokenizer(own)  # a resumed run keeps its vocabulary
    else:
        from she_jax.data.shopworld import tokenizer_corpus

        logging.info("training a SentencePiece tokenizer (vocab %d)", config.model.vocab_size)
        return tokenizer_lib.train_sentencepiece(
            tokenizer_corpus(splits), config.model.vocab_size, own)
    if not os.path.exists(own):
        tokenizer.save(own)
    return tokenizer


def init_model(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
               rng: jax.Array) -> tuple[transformer.ModelConfig, Any]:
    """(ModelConfig, params): from config.model.hf_path, the prerequisite run, or fresh."""
    if config.model.hf_path:
        model_config, params = hf.load_hf(config.model.hf_path)
        model_config = dataclasses.replace(model_config, dtype=config.model.dtype)
    elif init_dir(config):
        model_config, params = load_run_model(init_dir(config), config.model.dtype)
    else:
        model_config = transformer.ModelConfig.preset(
            config.model.preset, **{**dict(config.model.overrides),
                                    "vocab_size": tokenizer.vocab_size,
                                    "dtype": config.model.dtype})
        params = transformer.init_params(model_config, rng)
    tokenizer.check_model_vocab(model_config.vocab_size)
    return model_config, params


def start_run(config: ml_collections.ConfigDict, workdir: str
              ) -> tuple[dict[str, list[dict]], tokenizer_lib.Tokenizer,
                         transformer.ModelConfig, Any]:
    """What every trainer does first: joins the distributed run, locks the workdir, checks a
    resume's config and writes config.json (`she_jax.train.workdir.open_run`), loads
    the splits and the tokenizer, and builds the starting model. Returns (splits,
    tokenizer, model_config, params)."""
    from she_jax import parallel
    from she_jax.train import workdir as workdir_lib

    parallel.initialize_distributed(config.distributed)
    resolve_compute_dtype(config)
    # The workdir lock, the resume's config check against config.json, then config.json.
    workdir_lib.open_run(config, workdir)
    splits = load_data(config)
    tokenizer = get_tokenizer(config, workdir, splits)
    # A resume refuses a tokenizer/ other than the one its checkpoints trained with.
    run_dir.check_checkpoint_tokenizer(workdir)
    model_config, params = init_model(config, tokenizer, jax.random.PRNGKey(config.seed))
    # Every split the run uses, against its buckets and the model's length, before step 1.
    from she_jax.data import checks as data_check
    splits = data_check.check_lengths(config, splits, tokenizer, model_config.max_seq_len)
    return splits, tokenizer, model_config, params


def shard_model(config: ml_collections.ConfigDict, model_config: transformer.ModelConfig,
                params: Any) -> tuple[Any, Any, tuple]:
    """(params laid out on the config's mesh by the logical-axis rules, mesh, rules)."""
    from she_jax import parallel

    mesh = parallel.make_mesh(config.mesh)
    rules = tuple(config.axis_rules)
    params = parallel.shard_params(params, transformer.param_logical_axes(model_config), mesh,
                                   rules)
    return params, mesh, rules


def train_state_and_step(config: ml_collections.ConfigDict, params: Any, loss_fn: Any,
                         mesh: Any, rules: tuple) -> tuple[Any, Any]:
    """(the initial TrainState, the jitted sharded train step) for `loss_fn`, with the
    config's optimizer and micro-batching."""
    from she_jax.train import loop, optim
    from she_jax.train.state import create_train_state, state_sharding

    tx, lr_fn = optim.make_optimizer(config.optimizer)
    state = create_train_state(params, tx, jax.random.PRNGKey(config.seed + 1))
    step_fn = loop.make_train_step(loss_fn, tx, config.batch.accum_steps, mesh=mesh,
                                   rules=rules, state_sharding=state_sharding(state),
                                   learning_rate_fn=lr_fn)
    return state, step_fn


def finish_training(config: ml_collections.ConfigDict, workdir: str,
                    model_config: transformer.ModelConfig, state: Any) -> bool:
    """After `loop.train_loop`: False, with a warning, when the run stopped early (SIGTERM,
    SIGINT: rerunning the command resumes it); else exports <workdir>/model, plots the
    training curves and returns True, so the trainer goes on to evaluate."""
    from she_jax.train import metrics as metrics_lib

    from she_jax import parallel

    step = int(jax.device_get(state.step))
    if step < config.optimizer.total_steps:
        logging.warning("%s stopped early at step %d; rerun the same command to resume",
                        config.get("trainer", "training"), step)
        return False
    params = parallel.host_copy(state.params)  # every process takes part in the gather
    if parallel.is_main_process():
        export_model(workdir, model_config, params)
        metrics_lib.plot_metrics(workdir)
    return True


def evaluate_on_main_process(params: Any, evaluate: Callable[[Any], dict]) -> dict:
    """`evaluate(params)` on one process: single-process, with `params` as they are;
    multi-process, process 0 evaluates a host copy gathered from every process (so no
    other process has to join its computations) while the others wait for it, and they
    return {}. Call on every process."""
    from she_jax import parallel

    if jax.process_count() == 1:
        return evaluate(params)
    params = parallel.host_copy(params)
    result = parallel.on_main_process(lambda: evaluate(params), "she_jax: evaluation done")
    return {} if result is None else result


def load_data(config: ml_collections.ConfigDict) -> dict[str, list[dict]]:
    return sources.load_splits(config.data)
