r"""One causal-LM training step: she_jax (jit) vs transformers + PyTorch (eager), tokens/s.

    python -m bench.train_step [--configs=tiny,small] [--repeats=3] [--loss=chunked|full]
                               [--batch=64] [--precision=float32,bfloat16]

Both sides train the same weights (ours exported with `she_jax.models.hf.save_hf`, loaded
with `AutoModelForCausalLM.from_pretrained`) on the same batch: 64 sequences x 256 tokens,
next-token cross-entropy averaged over the 64 x 255 predicted tokens, AdamW (lr 1e-4,
betas (0.9, 0.999), eps 1e-8, weight decay 0.01), at each precision of `--precision`
(default both), each against the peer at the same precision:
  * float32: float32 throughout on both sides;
  * bfloat16: ours `ModelConfig(dtype='bfloat16')` (every matmul bf16 x bf16 with float32
    accumulation, forward and backward; params, gradients and AdamW state float32); the
    peer's forward under `torch.autocast('cpu', dtype=torch.bfloat16)` (float32 params,
    bf16 matmuls), backward and optimizer outside it, as PyTorch recommends.
  * ours: one `jax.jit` step with the train state (params, optimizer state) donated; the
    model is `she_jax.models.hidden_states` + `logits_from_hidden`; optax.adamw.
  * peer: `model(input_ids, labels=input_ids).loss.backward()`, `torch.optim.AdamW.step()`,
    `zero_grad()`: plain eager PyTorch with its default (SDPA) attention and
    torch.set_num_threads(cores), i.e. what a transformers user runs. torch.compile is not
    used: it is not a transformers training default, and on CPU it needs a C++ toolchain
    and minutes of compilation.
Each contender runs once untimed (our compile; both first-call costs are reported), the
first-step losses are checked to agree at each precision (same model, same batch), then all
contenders (ours and the peer at every precision, and a 2048^3 matmul probe per precision:
float32, and bf16 operands with float32 accumulation) alternate `--repeats` times and
medians are reported.

`--loss=chunked` (default) computes the loss and its gradient w.r.t. the output layer in
token chunks inside the forward pass (`chunked_cross_entropy`), so float32 [B, T, V]
logits never exist in memory; `--loss=full` materializes them as the peer does.

FLOPs per step = tokens * (6 * N + 12 * L * H * D * T)  (PaLM, Chowdhery et al. 2022, app. B):
N counts every weight that enters a matmul (all params, less the input embedding table when
it is not tied to the output layer; norm scales and biases are included, a <0.1% excess),
6 = 2 (multiply-add) x 3 (forward, two backward matmuls); the second term is the attention
score and value matmuls, QK^T and PV, over the full T x T square (causal masking is not
skipped). `mfu_fraction` = achieved FLOP/s / the median FLOP/s of the matmul probe at the
same precision.

Prints one JSON line per (config, precision): bench, config, precision, ours, peer, unit
('tokens/s'), ratio (ours / peer, > 1 is better), mfu_fraction, the timings behind them,
and, on bfloat16 lines when float32 also ran, each side's speed-up over its float32 step.
Expected runtime on 2 (shared) CPU cores with the defaults, per precision: about 2 minutes
for tiny and 12-15 for small, where one step takes 70-110 s on each side; `--batch=16` is
~4x quicker.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import common
from she_jax.models import hf, transformer

BATCH = 64
SEQ_LEN = 256
LEARNING_RATE = 1e-4
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.01
MATMUL_SIZE = 2048
# Tokens per loss chunk: [1024, V] float32 logits are 16 MiB (tiny) / 32 MiB (small).
LOSS_CHUNK = 1024
# First-step losses of the two sides must agree this closely (relative), per precision:
# bf16 rounds differently in XLA and in autocast (which also keeps some ops, e.g. the
# attention softmax, in its own choice of dtype).
LOSS_AGREEMENT = {"float32": 1e-4, "bfloat16": 1e-2}


def train_flops(config: transformer.ModelConfig, batch: int, seq_len: int) -> float:
    """FLOPs of one training step on [batch, seq_len] tokens (formula in the module doc)."""
    shapes = jax.eval_shape(lambda: transformer.init_params(config, jax.random.key(0)))
    num_params = sum(x.size for x in jax.tree.leaves(shapes))
    lookup_only = 0 if config.tie_embeddings else config.vocab_size * config.hidden_size
    matmul_params = num_params - lookup_only
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
    return batch * seq_len * (6 * matmul_params + attention)


def _output_layer(config: transformer.ModelConfig, params: dict) -> dict:
    """The part of `params` that `logits_from_hidden` reads (tied embedding or lm_head)."""
    name = "embed" if config.tie_embeddings else "lm_head"
    return {"params": {name: params["params"][name]}}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5))
def chunked_cross_entropy(config: transformer.ModelConfig, output_layer: dict,
                          hidden: jax.Array, targets: jax.Array, weights: jax.Array,
                          chunk: int) -> jax.Array:
    """sum_n weights[n] * CE(logits(hidden[n]), targets[n]), [chunk, V] logits at a time.

    hidden: [N, E]; targets: [N] int32; weights: [N] float32; N a multiple of chunk.
    The forward pass also computes the gradients (softmax - one_hot), which the backward
    pass only scales, so logits are computed once and [N, V] never exists.
    """
    return _chunked_cross_entropy_fwd(config, output_layer, hidden, targets, weights, chunk)[0]


def _chunked_cross_entropy_fwd(config, output_layer, hidden, targets, weights, chunk):
    n, e = hidden.shape
    if n % chunk:
        raise ValueError(f"{n} tokens are not a multiple of the loss chunk {chunk}")

    def one_chunk(grad_sum, xs):
        h, y, w = xs
        logits, logits_vjp = jax.vjp(
            lambda p, x: transformer.logits_from_hidden(config, p, x), output_layer, h)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logits = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        probs = jnp.exp(logits - log_z[:, None])
        one_hot = jax.nn.one_hot(y, logits.shape[-1], dtype=probs.dtype)
        grad_logits = (probs - one_hot) * w[:, None]
        grad_layer, grad_h = logits_vjp(grad_logits)
        return (jax.tree.map(jnp.add, grad_sum, grad_layer),
                (jnp.sum(w * (log_z - target_logits)), grad_h))

    chunks = (hidden.reshape(-1, chunk, e), targets.reshape(-1, chunk),
              weights.reshape(-1, chunk))
    grad_layer, (losses, grad_hidden) = jax.lax.scan(
        one_chunk, jax.tree.map(jnp.zeros_like, output_layer), chunks)
    return jnp.sum(losses), (grad_layer, grad_hidden.reshape(n, e))


def _chunked_cross_entropy_bwd(config, chunk, residuals, grad_loss):
    del config, chunk
    grad_layer, grad_hidden = residuals
    # targets are integers and weights are constants here: no cotangent for either.
    return jax.tree.map(lambda g: grad_loss * g, grad_layer), grad_loss * grad_hidden, None, None


chunked_cross_entropy.defvjp(_chunked_cross_entropy_fwd, _chunked_cross_entropy_bwd)


def next_token_loss(config: transformer.ModelConfig, params: dict, tokens: jax.Array,
                    chunk: int | None) -> jax.Array:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens [B, T] (HF `labels=` loss).

    chunk: tokens per `chunked_cross_entropy` chunk, or None for full [B, T, V] logits.
    """
    b, t = tokens.shape
    if chunk is None:
        logits = transformer.forward(config, params, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                               tokens[:, 1:]).mean()
    hidden = transformer.hidden_states(config, params, tokens)
    # Position t predicts token t + 1; the last position has no target (weight 0), which
    # keeps every array at length T instead of slicing (a copy) to T - 1.
    targets = jnp.roll(tokens, -1, axis=1).reshape(-1)
    weights = jnp.broadcast_to(jnp.arange(t) < t - 1, (b, t)).astype(jnp.float32).reshape(-1)
    total = chunked_cross_entropy(config, _output_layer(config, params),
                                  hidden.reshape(b * t, -1), targets, weights, chunk)
    return total / (b * (t - 1))


def make_train_step(config: transformer.ModelConfig, optimizer: optax.GradientTransformation,
                    chunk: int | None) -> Callable:
    """(state, tokens [B, T]) -> (state, loss); state = (params, opt_state), donated."""
    def train_step(state, tokens):
        params, opt_state = state
        loss, grads = jax.value_and_grad(
            lambda p: next_token_loss(config, p, tokens, chunk))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(train_step, donate_argnums=0)


def _ours(config, params, tokens: np.ndarray, chunk: int | None) -> Callable[[], float]:
    optimizer = optax.adamw(LEARNING_RATE, b1=BETAS[0], b2=BETAS[1], eps=ADAM_EPS,
                            weight_decay=WEIGHT_DECAY)
    step = make_train_step(config, optimizer, chunk)
    state = [(params, optimizer.init(params))]
    tokens = jnp.asarray(tokens)

    def run() -> float:
        state[0], loss = step(state[0], tokens)
        return float(loss)  # blocks until the step is done

    return run


def _peer(model_dir: str, tokens: np.ndarray, precision: str) -> Callable[[], float]:
    """The peer's step on its own copy of the float32 model in `model_dir`."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS,
                                  eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    input_ids = torch.as_tensor(tokens, dtype=torch.long)

    def run() -> float:
        with common.peer_autocast(precision):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return run


def _peer_name(precision: str) -> str:
    import torch
    import transformers

    compute = ("float32" if precision == "float32"
               else "torch.autocast('cpu', bfloat16) forward, float32 params")
    return (f"transformers {transformers.__version__} + torch {torch.__version__} eager CPU "
            f"{compute}, torch.optim.AdamW")


def bench_config(name: str, repeats: int, loss: str, batch: int,
                 precisions: Sequence[str] = common.PRECISIONS) -> list[dict]:
    """Times ours and the peer at each precision, all interleaved; emits and returns one
    record per precision."""
    import torch

    base = transformer.ModelConfig.preset(name)
    params = transformer.init_params(base, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, base.vocab_size, (batch, SEQ_LEN),
                                               dtype=np.int32)
    chunk = LOSS_CHUNK if loss == "chunked" else None
    contenders: dict[str, Callable[[], Any]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        hf.save_hf(base, params, workdir)
        for precision in precisions:
            contenders[f"ours_{precision}"] = _ours(
                dataclasses.replace(base, dtype=precision), jax.tree.map(jnp.copy, params),
                tokens, chunk)  # each of our steps donates its own copy
            contenders[f"peer_{precision}"] = _peer(workdir, tokens, precision)
    del params

    first_call, first_loss = {}, {}
    for key, run in contenders.items():
        common.log(f"[{name}] first step {key}" + (" (compiles)" if key[:4] == "ours" else ""))
        start = time.perf_counter()
        first_loss[key] = run()
        first_call[key] = time.perf_counter() - start
    for precision in precisions:
        ours, peer = first_loss[f"ours_{precision}"], first_loss[f"peer_{precision}"]
        if not abs(ours - peer) <= LOSS_AGREEMENT[precision] * abs(peer):
            raise RuntimeError(f"{precision} first-step losses differ: ours {ours}, peer "
                               f"{peer}: not the same model or batch")
        contenders[f"matmul_{precision}"] = common.matmul_probe(MATMUL_SIZE, precision)
    common.log(f"[{name}] timing {repeats} interleaved repeats of {list(contenders)}")
    times = common.interleaved_times(contenders, repeats)
    median = {key: common.median(t) for key, t in times.items()}
    tokens_per_step = batch * SEQ_LEN
    flops = train_flops(base, batch, SEQ_LEN)
    records = []
    for precision in precisions:
        ours_s, peer_s = median[f"ours_{precision}"], median[f"peer_{precision}"]
        matmul_rate = 2.0 * MATMUL_SIZE**3 / median[f"matmul_{precision}"]
        record = {
            "bench": "train_step", "config": name, "precision": precision,
            "ours": round(tokens_per_step / ours_s, 1),
            "peer": round(tokens_per_step / peer_s, 1), "unit": "tokens/s",
            "ratio": round(peer_s / ours_s, 3),
            "mfu_fraction": round(flops / ours_s / matmul_rate, 3),
            "peer_mfu_fraction": round(flops / peer_s / matmul_rate, 3),
            "ours_gflops": round(flops / ours_s / 1e9, 1),
            "matmul_gflops": round(matmul_rate / 1e9, 1),
            "flops_per_step": flops,
            "peer_name": _peer_name(precision),
            "ours_median_s": round(ours_s, 3), "peer_median_s": round(peer_s, 3),
            "ours_times_s": [round(t, 3) for t in times[f"ours_{precision}"]],
            "peer_times_s": [round(t, 3) for t in times[f"peer_{precision}"]],
            "matmul_times_s": [round(t, 4) for t in times[f"matmul_{precision}"]],
            "ours_compile_s": round(first_call[f"ours_{precision}"] - ours_s, 1),
            "peer_first_call_s": round(first_call[f"peer_{precision}"], 1),
            "first_loss_ours": first_loss[f"ours_{precision}"],
            "first_loss_peer": first_loss[f"peer_{precision}"],
            "loss": loss, "loss_chunk": chunk,
            "batch": batch, "seq_len": SEQ_LEN, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "cpu_count": common.cpu_count(),
        }
        if precision != "float32" and "float32" in precisions:
            record["ours_speedup_vs_float32"] = round(median["ours_float32"] / ours_s, 3)
            record["peer_speedup_vs_float32"] = round(median["peer_float32"] / peer_s, 3)
        common.emit(record)
        records.append(record)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small",
                        help="comma-separated ModelConfig presets")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per contender")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help="sequences per step (smaller for a quick run)")
    parser.add_argument("--loss", choices=("chunked", "full"), default="chunked",
                        help="our loss: chunked (no [B, T, V] logits) or full logits")
    parser.add_argument("--precision", default=",".join(common.PRECISIONS),
                        help="comma-separated precisions, each against the peer at it")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1")
    try:
        precisions = common.parse_precisions(args.precision)
    except ValueError as error:
        parser.error(str(error))
    import torch

    torch.set_num_threads(common.cpu_count())
    for name in args.configs.split(","):
        bench_config(name.strip(), args.repeats, args.loss, args.batch, precisions)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
