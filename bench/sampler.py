r"""Sampler throughput: she_jax `Sampler` vs transformers' `generate` (PyTorch CPU).

    python -m bench.sampler [--configs=tiny,small] [--repeats=5] [--copy_prefix]
                            [--precision=float32,bfloat16]

Same weights (exported with `she_jax.models.hf.save_hf`, loaded with `from_pretrained`),
same batch and lengths, same sampling settings: 8 prompts x 8 samples (HF:
`num_return_sequences=8`), 128 prompt tokens, 128 new tokens, temperature 1.0, top_k 50,
top_p 1.0, and every sample runs to full length (ours: `stop_at_eos=False`; HF:
`min_new_tokens=max_new_tokens`), at each precision of `--precision` (default both):
float32 on both sides, or bfloat16: ours `ModelConfig(dtype='bfloat16')` (bf16 matmul
operands with float32 accumulation, bf16 KV caches), HF `generate` under
`torch.autocast('cpu', dtype=torch.bfloat16)` (float32 weights, bf16 matmuls).
Every contender is warmed up first (compile time is reported separately); then all of
them alternate, `--repeats` calls each, and medians are reported. `--copy_prefix` adds our
sampler with `share_prefix=False` (G prefilled copies of each prompt, as HF does) to show
what sharing the prefix buys.

Prints one JSON line per (config, precision): bench, config, precision, ours, peer, unit
('tokens/s'), ratio (ours / peer), the per-call times, our compile time, the machine's
matmul rate at that precision and, on bfloat16 lines when float32 also ran, each side's
speed-up over its float32 run.
Expected runtime on 2 CPU cores with the default flags: about 5 minutes per precision
(mostly HF at small).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Sequence

import jax
import numpy as np

from bench import common
from she_jax import sampling
from she_jax.models import hf, transformer

BATCH = 8
SAMPLES = 8
PROMPT_LEN = 128
NEW_TOKENS = 128
TEMPERATURE = 1.0
TOP_K = 50
TOP_P = 1.0


def _peer_model(config: transformer.ModelConfig, params, workdir: str):
    """The same weights as an HF PyTorch model, float32, eval mode."""
    import torch
    import transformers

    hf.save_hf(config, params, workdir)
    model = transformers.AutoModelForCausalLM.from_pretrained(workdir, dtype=torch.float32)
    return model.eval()


def _check_same_model(config, params, peer, prompts: np.ndarray) -> float:
    """Max |logit difference| on one prompt; guards against benchmarking different models."""
    import torch

    ours = np.asarray(transformer.forward(config, params, prompts[:1]))
    with torch.no_grad():
        theirs = peer(torch.as_tensor(prompts[:1], dtype=torch.long)).logits.numpy()
    diff = float(np.abs(ours - theirs).max())
    if diff > 1e-3:
        raise RuntimeError(f"she_jax and transformers logits differ by {diff}: not the same model")
    return diff


def _peer_generate(peer, prompts: np.ndarray, precision: str):
    import torch

    input_ids = torch.as_tensor(prompts, dtype=torch.long)

    def run():
        with torch.no_grad(), common.peer_autocast(precision):
            out = peer.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                do_sample=True, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
                num_return_sequences=SAMPLES, max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)
        assert out.shape == (BATCH * SAMPLES, PROMPT_LEN + NEW_TOKENS), out.shape
        return out

    return run


def _our_generate(sampler: sampling.Sampler, params, prompts: np.ndarray):
    calls = iter(range(1 << 30))

    def run():
        out = sampler(params, prompts, jax.random.key(next(calls)), num_samples=SAMPLES,
                      max_new_tokens=NEW_TOKENS)
        out.tokens.block_until_ready()
        assert out.tokens.shape == (BATCH, SAMPLES, NEW_TOKENS), out.tokens.shape
        return out

    return run


def bench_config(name: str, repeats: int, copy_prefix: bool,
                 precisions: Sequence[str] = common.PRECISIONS) -> list[dict]:
    """Times ours and `generate` at each precision, all interleaved; emits and returns one
    record per precision."""
    import torch
    import transformers

    base = transformer.ModelConfig.preset(name)
    params = transformer.init_params(base, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(0, base.vocab_size, (BATCH, PROMPT_LEN),
                                                dtype=np.int32)
    settings = dict(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, stop_at_eos=False)
    with tempfile.TemporaryDirectory() as workdir:
        peer = _peer_model(base, params, workdir)
    logit_diff = _check_same_model(base, params, peer, prompts)
    contenders = {}
    for precision in precisions:
        config = dataclasses.replace(base, dtype=precision)
        contenders[f"ours_{precision}"] = _our_generate(
            sampling.Sampler(config, sampling.SamplingConfig(**settings)), params, prompts)
        if copy_prefix:
            contenders[f"ours_copy_prefix_{precision}"] = _our_generate(
                sampling.Sampler(config, sampling.SamplingConfig(share_prefix=False,
                                                                 **settings)),
                params, prompts)
        contenders[f"peer_{precision}"] = _peer_generate(peer, prompts, precision)

    first_call = {}
    for key, run in contenders.items():
        common.log(f"[{name}] warm-up {key}")
        first_call[key] = common.timed(run)
    common.log(f"[{name}] timing {repeats} interleaved repeats of {list(contenders)}")
    times = common.interleaved_times(contenders, repeats)
    tokens = BATCH * SAMPLES * NEW_TOKENS
    median = {key: common.median(t) for key, t in times.items()}
    rate = {key: tokens / seconds for key, seconds in median.items()}
    records = []
    for precision in precisions:
        ours, peer_key = f"ours_{precision}", f"peer_{precision}"
        compute = ("float32" if precision == "float32"
                   else "torch.autocast('cpu', bfloat16), float32 weights")
        record = {
            "bench": "sampler", "config": name, "precision": precision,
            "ours": round(rate[ours], 1), "peer": round(rate[peer_key], 1),
            "unit": "tokens/s", "ratio": round(rate[ours] / rate[peer_key], 2),
            "peer_name": f"transformers {transformers.__version__} generate, "
                         f"torch {torch.__version__} CPU {compute}",
            "ours_median_s": round(median[ours], 4),
            "peer_median_s": round(median[peer_key], 4),
            "ours_times_s": [round(t, 4) for t in times[ours]],
            "peer_times_s": [round(t, 4) for t in times[peer_key]],
            # First call = compile + one run; the compile share is what exceeds a warm run.
            "ours_compile_s": round(first_call[ours] - median[ours], 2),
            "peer_first_call_s": round(first_call[peer_key], 2),
            "batch": BATCH, "samples": SAMPLES, "prompt_len": PROMPT_LEN,
            "new_tokens": NEW_TOKENS, "temperature": TEMPERATURE, "top_k": TOP_K,
            "top_p": TOP_P, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "cpu_count": common.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "jax_matmul_gflops": round(common.matmul_gflops(precision=precision), 1),
            "same_model_max_logit_diff": logit_diff,
        }
        if precision != "float32" and "float32" in precisions:
            record["ours_speedup_vs_float32"] = round(median["ours_float32"] / median[ours], 3)
            record["peer_speedup_vs_float32"] = round(
                median["peer_float32"] / median[peer_key], 3)
        if copy_prefix:
            key = f"ours_copy_prefix_{precision}"
            record["ours_copy_prefix"] = round(rate[key], 1)
            record["ours_copy_prefix_times_s"] = [round(t, 4) for t in times[key]]
        common.emit(record)
        records.append(record)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small",
                        help="comma-separated ModelConfig presets")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per contender")
    parser.add_argument("--copy_prefix", action="store_true",
                        help="also time our sampler with share_prefix=False")
    parser.add_argument("--precision", default=",".join(common.PRECISIONS),
                        help="comma-separated precisions, each against the peer at it")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:
        precisions = common.parse_precisions(args.precision)
    except ValueError as error:
        parser.error(str(error))
    import torch

    torch.set_num_threads(common.cpu_count())
    for name in args.configs.split(","):
        bench_config(name.strip(), args.repeats, args.copy_prefix, precisions)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PyTorch's OpenMP threads spin while waiting by default; on a machine shared with other
    # jobs that makes `generate` several times slower (measured 3-7x on 2 busy cores), so
    # the peer gets passive waiting unless the caller chose otherwise. Must precede the
    # torch import (bench_config imports it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
