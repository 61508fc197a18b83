r"""One causal-LM training step: she_jax (jit) vs transformers + PyTorch (eager), tokens/s.

    python -m bench.train_step [--configs=tiny,small] [--repeats=3] [--loss=chunked|full]
                               [--batch=64]

Both sides train the same weights (ours exported with `she_jax.models.hf.save_hf`, loaded
with `AutoModelForCausalLM.from_pretrained`) on the same batch: 64 sequences x 256 tokens,
next-token cross-entropy averaged over the 64 x 255 predicted tokens, AdamW (lr 1e-4,
betas (0.9, 0.999), eps 1e-8, weight decay 0.01), float32 throughout.
  * ours: one `jax.jit` step with the train state (params, optimizer state) donated; the
    model is `she_jax.models.hidden_states` + `logits_from_hidden`; optax.adamw.
  * peer: `model(input_ids, labels=input_ids).loss.backward()`, `torch.optim.AdamW.step()`,
    `zero_grad()`: plain eager PyTorch with its default (SDPA) attention and
    torch.set_num_threads(cores), i.e. what a transformers user runs. torch.compile is not
    used: it is not a transformers training default, and on CPU it needs a C++ toolchain
    and minutes of compilation.
Each side runs once untimed (our compile; both first-call costs are reported), the two
first-step losses are checked to agree (same model, same batch), then ours, the peer and a
2048^3 float32 matmul probe alternate `--repeats` times and medians are reported.

`--loss=chunked` (default) computes the loss and its gradient w.r.t. the output layer in
token chunks inside the forward pass (`chunked_cross_entropy`), so float32 [B, T, V]
logits never exist in memory; `--loss=full` materializes them as the peer does.

FLOPs per step = tokens * (6 * N + 12 * L * H * D * T)  (PaLM, Chowdhery et al. 2022, app. B):
N counts every weight that enters a matmul (all params, less the input embedding table when
it is not tied to the output layer; norm scales and biases are included, a <0.1% excess),
6 = 2 (multiply-add) x 3 (forward, two backward matmuls); the second term is the attention
score and value matmuls, QK^T and PV, over the full T x T square (causal masking is not
skipped). `mfu_fraction` = achieved FLOP/s / the matmul probe's median FLOP/s.

Prints one JSON line per config: bench, config, ours, peer, unit ('tokens/s'), ratio (ours /
peer, > 1 is better), mfu_fraction, and the timings behind them.
Expected runtime on 2 (shared) CPU cores with the defaults: about 2 minutes for tiny and
12-15 for small, where one step takes 70-110 s on each side; `--batch=16` is ~4x quicker.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable
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


def _peer(config, params, tokens: np.ndarray, workdir: str) -> Callable[[], float]:
    import torch
    import transformers

    hf.save_hf(config, params, workdir)
    model = transformers.AutoModelForCausalLM.from_pretrained(workdir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS,
                                  eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    input_ids = torch.as_tensor(tokens, dtype=torch.long)

    def run() -> float:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return run


def _matmul_probe() -> tuple[Callable[[], Any], float]:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((MATMUL_SIZE, MATMUL_SIZE)),
                    jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    return lambda: matmul(a).block_until_ready(), 2.0 * MATMUL_SIZE**3


def bench_config(name: str, repeats: int, loss: str, batch: int) -> None:
    import torch
    import transformers

    config = transformer.ModelConfig.preset(name)
    params = transformer.init_params(config, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch, SEQ_LEN),
                                               dtype=np.int32)
    with tempfile.TemporaryDirectory() as workdir:
        peer = _peer(config, params, tokens, workdir)
    ours = _ours(config, params, tokens, LOSS_CHUNK if loss == "chunked" else None)
    del params  # donated to our first step

    common.log(f"[{name}] first steps (ours compiles)")
    first_call, first_loss = {}, {}
    for key, run in (("ours", ours), ("peer", peer)):
        start = time.perf_counter()
        first_loss[key] = run()
        first_call[key] = time.perf_counter() - start
    loss_diff = abs(first_loss["ours"] - first_loss["peer"])
    if not loss_diff <= 1e-4 * abs(first_loss["peer"]):
        raise RuntimeError(f"first-step losses differ: ours {first_loss['ours']}, peer "
                           f"{first_loss['peer']}: not the same model or batch")
    matmul, matmul_flops = _matmul_probe()
    common.log(f"[{name}] timing {repeats} interleaved repeats")
    times = common.interleaved_times({"ours": ours, "peer": peer, "matmul": matmul}, repeats)
    median = {key: common.median(t) for key, t in times.items()}
    tokens_per_step = batch * SEQ_LEN
    flops = train_flops(config, batch, SEQ_LEN)
    matmul_rate = matmul_flops / median["matmul"]
    ours_rate, peer_rate = tokens_per_step / median["ours"], tokens_per_step / median["peer"]
    common.emit({
        "bench": "train_step", "config": name, "ours": round(ours_rate, 1),
        "peer": round(peer_rate, 1), "unit": "tokens/s", "ratio": round(ours_rate / peer_rate, 3),
        "mfu_fraction": round(flops / median["ours"] / matmul_rate, 3),
        "peer_mfu_fraction": round(flops / median["peer"] / matmul_rate, 3),
        "ours_gflops": round(flops / median["ours"] / 1e9, 1),
        "matmul_gflops": round(matmul_rate / 1e9, 1),
        "flops_per_step": flops,
        "peer_name": f"transformers {transformers.__version__} + torch {torch.__version__} "
                     f"eager CPU float32, torch.optim.AdamW",
        "ours_median_s": round(median["ours"], 3), "peer_median_s": round(median["peer"], 3),
        "ours_times_s": [round(t, 3) for t in times["ours"]],
        "peer_times_s": [round(t, 3) for t in times["peer"]],
        "matmul_times_s": [round(t, 4) for t in times["matmul"]],
        "ours_compile_s": round(first_call["ours"] - median["ours"], 1),
        "peer_first_call_s": round(first_call["peer"], 1),
        "first_loss_ours": first_loss["ours"], "first_loss_peer": first_loss["peer"],
        "loss": loss, "loss_chunk": LOSS_CHUNK if loss == "chunked" else None,
        "batch": batch, "seq_len": SEQ_LEN, "repeats": repeats,
        "torch_threads": torch.get_num_threads(), "cpu_count": common.cpu_count(),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small",
                        help="comma-separated ModelConfig presets")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per contender")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help="sequences per step (smaller for a quick run)")
    parser.add_argument("--loss", choices=("chunked", "full"), default="chunked",
                        help="our loss: chunked (no [B, T, V] logits) or full logits")
    args = parser.parse_args()
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1")
    import torch

    torch.set_num_threads(common.cpu_count())
    for name in args.configs.split(","):
        bench_config(name.strip(), args.repeats, args.loss, args.batch)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
