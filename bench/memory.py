r"""Memory plans for real model sizes without the hardware: per-device bytes of the SFT step,
the RL update and the sampler, compiled ahead of time for Qwen2.5 shapes on a fake mesh.

    python -m bench.memory [--models=qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-7b]
                           [--programs=sft,rl_update,sampler] [--meshes=fsdp8,fsdp4_tensor2]
                           [--dtype=bfloat16] [--logprob_chunks=128,0] [--layers=full]
                           [--prompts=8] [--group=16] [--prompt_len=256] [--new_tokens=256]
                           [--sft_batch=64] [--sft_len=512] [--accum_steps=1]
                           [--share_prompt=1]

Nothing is allocated: parameters, optimizer state and batches are `jax.ShapeDtypeStruct`s
carrying the shardings the trainers give them (`parallel.logical_to_sharding` of the
model's logical axes under the default axis rules; the optimizer moments laid out like
their parameters, as `train.state.create_train_state` does), and each program is
`jax.jit(...).lower(...).compile()`d for 8 host CPU devices arranged as the mesh
(`fsdp8`: fsdp = 8; `fsdp4_tensor2`: fsdp = 4 x tensor = 2). The programs are the ones the
trainers run:
  * sft: `loop.make_train_step` over `train.sft.sft_loss_fn` (AdamW, the default
    optimizer), a batch of `--sft_batch` x `--sft_len` tokens;
  * rl_update: `loop.make_train_step` over `rl.losses.make_policy_loss_fn` configured as
    `train.rl.train_rl` does (`rl.policy_loss_config`: the completion's targets only, each
    group's prompt run once, the k3 KL against reference log-probs, the entropy metric),
    `--prompts` x `--group` rows of `--prompt_len` + `--new_tokens` tokens, in
    `--accum_steps` micro-batches, each group's prompt run once unless `--share_prompt=0`;
    one line per `--logprob_chunks` value (0 = the unchunked vocabulary projection: the
    "before"). With shared prompts, a micro-batch of fewer groups than the mesh's batch
    devices cannot split its prompt forward evenly and XLA replicates part of it (an
    "involuntary full rematerialization" warning, and more memory per layer, not less):
    micro-batch with `--share_prompt=0`, or keep >= one group per batch device;
  * sampler: `sampling`'s compiled group sampler (prefill once per prompt, `--group`
    samples of `--new_tokens` tokens), params sharded, prompts replicated as `RLFeed`
    passes them (host arrays).
`compiled.memory_analysis()` gives, per device: argument, output, alias (outputs written
into donated arguments: the train state) and temporary bytes, and `total_bytes` = argument + output - alias + temp, the
plan's footprint (XLA:CPU's own `peak_memory_in_bytes` counts the arguments only, so it is
not used). `largest_buffer` is the largest array an unfused instruction of the per-device
program produces (shape, bytes, op) — the vocabulary-sized logits show up here when they
are materialised.

Layers. The decoder's layers are unrolled, so compile time grows with the layer count; the
real depth (`--layers=full`, the default) compiles in 1-2 minutes for the 7B RL update on
2 busy CPU cores. `--layers=a,b` compiles two shallower copies instead and extrapolates
every byte count linearly to the real depth (bytes(L) = bytes(b) + (L - b) * (bytes(b) -
bytes(a)) / (b - a)); the line says so (`extrapolated_from`). That is exact for arguments,
outputs and aliases (per-layer params and optimizer state) but only a rough guide for
temporaries: where the peak falls moves with the depth (the 7B RL update, 4 micro-batches:
the unchunked loss's temporaries extrapolate from 2 and 4 layers to 82.7 GiB, a full
compile gives 66.7; the chunked one's to 63.9 against 65.6).

What this is and is not: XLA:CPU's buffer assignment for the partitioned program. GPU
and TPU compilers fuse differently and can rematerialise under memory pressure, so their
numbers differ (usually lower); treat these as a plan, not a measurement.
Prints one JSON line per (model, program, mesh, chunk): bench 'memory', model, program,
mesh, dtype, shape, logprob_chunk, layers, per-device byte counts and GiB, fits_80gb,
largest_buffer, compile_s, extrapolated_from.
Expected runtime on 2 busy CPU cores: 0.5-2 minutes per line at full depth (the 7B RL
update the longest); the default 24 lines take about 30 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import common

GIB = 2**30
BUDGET_BYTES = 80 * 10**9  # the target: 80 GB per device
NUM_DEVICES = 8
MESHES = {
    "fsdp8": {"data": 1, "fsdp": 8, "tensor": 1},
    "fsdp4_tensor2": {"data": 1, "fsdp": 4, "tensor": 2},
}
PROGRAMS = ("sft", "rl_update", "sampler")
# Qwen2.5 base models' config.json values (hidden, layers, heads, kv heads, MLP, vocab,
# tied embeddings). The 7B's vocabulary is 152,064 (padded), the smaller ones' 151,936.
_QWEN2 = dict(head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, qkv_bias=True, family="qwen2",
              max_seq_len=32768)
MODELS = {
    "qwen2.5-0.5b": dict(_QWEN2, vocab_size=151936, hidden_size=896, num_layers=24,
                         num_heads=14, num_kv_heads=2, head_dim=64, mlp_dim=4864,
                         tie_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN2, vocab_size=151936, hidden_size=1536, num_layers=28,
                         num_heads=12, num_kv_heads=2, mlp_dim=8960, tie_embeddings=True),
    "qwen2.5-7b": dict(_QWEN2, vocab_size=152064, hidden_size=3584, num_layers=28,
                       num_heads=28, num_kv_heads=4, mlp_dim=18944, tie_embeddings=False),
}
BYTE_KEYS = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "total_bytes")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The batch shapes of the three programs."""

    prompts: int = 8  # RL / sampler: prompts per batch
    group: int = 16  # samples per prompt
    prompt_len: int = 256
    new_tokens: int = 256
    sft_batch: int = 64
    sft_len: int = 512
    accum_steps: int = 1  # micro-batches of the SFT step and the RL update
    share_prompt: int = 1  # RL update: each group's prompt run once (config.rl.share_prompt)


def model_config(name: str, dtype: str, num_layers: int | None = None) -> Any:
    """The ModelConfig of a `MODELS` entry at compute `dtype` (optionally fewer layers)."""
    from she_jax.models import transformer

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    values = dict(MODELS[name], dtype=dtype)
    if num_layers is not None:
        values["num_layers"] = num_layers
    return transformer.ModelConfig(**values)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def abstract_params(config: Any, mesh: Any, rules: Sequence) -> Any:
    """The params as ShapeDtypeStructs laid out on `mesh` by the logical-axis rules (what
    `train.bootstrap.shard_model` does to real params)."""
    from she_jax import parallel
    from she_jax.models import transformer

    shapes = jax.eval_shape(functools.partial(transformer.init_params, config),
                            jax.random.key(0))
    shardings = parallel.logical_to_sharding(transformer.param_logical_axes(config), mesh,
                                             rules, shapes=shapes)
    return _abstract(shapes, shardings)


def abstract_train_state(params: Any, tx: optax.GradientTransformation, mesh: Any) -> Any:
    """A TrainState of ShapeDtypeStructs: optimizer moments sharded like their params,
    scalars replicated (the layout `train.state.create_train_state` builds)."""
    from she_jax import parallel
    from she_jax.train.state import TrainState

    replicated = parallel.replicated(mesh)
    opt_shapes = jax.eval_shape(tx.init, params)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, sharding: sharding, opt_shapes, param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=params,
        opt_state=_abstract(opt_shapes, opt_shardings),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))


def _batch(mesh: Any, **arrays: tuple[tuple[int, ...], Any]) -> dict[str, jax.ShapeDtypeStruct]:
    from she_jax import parallel

    sharding = parallel.batch_sharding(mesh)
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for name, (shape, dtype) in arrays.items()}


def _train_step_lowered(config: Any, mesh: Any, rules: Sequence, loss_fn: Any,
                        batch: dict[str, jax.ShapeDtypeStruct], accum_steps: int) -> Any:
    from she_jax.train import config as config_lib
    from she_jax.train import loop, optim
    from she_jax.train.state import state_sharding

    tx, lr_fn = optim.make_optimizer(config_lib.train_config().optimizer)
    state = abstract_train_state(abstract_params(config, mesh, rules), tx, mesh)
    step = loop.make_train_step(loss_fn, tx, accum_steps, mesh=mesh, rules=rules,
                                state_sharding=state_sharding(state), learning_rate_fn=lr_fn)
    return step.lower(state, batch)


def lower_sft(config: Any, mesh: Any, rules: Sequence, shapes: Shapes) -> Any:
    """The SFT train step (`train.sft.sft_loss_fn`, answer-first label ids) lowered."""
    from she_jax.train import sft

    label_ids = tuple(range(config.vocab_size - 4, config.vocab_size))
    loss_fn = sft.sft_loss_fn(config, label_ids)
    shape = (shapes.sft_batch, shapes.sft_len)
    batch = _batch(mesh, tokens=(shape, jnp.int32), loss_mask=(shape, jnp.bool_),
                   attention_mask=(shape, jnp.bool_))
    return _train_step_lowered(config, mesh, rules, loss_fn, batch, shapes.accum_steps)


def lower_rl_update(config: Any, mesh: Any, rules: Sequence, shapes: Shapes,
                    logprob_chunk: int) -> Any:
    """One RL update (the `rl` section's GRPO defaults, KL on) lowered, the loss set up as
    `train.rl.train_rl` sets it up, with `logprob_chunk` positions per vocab chunk."""
    from she_jax.rl import losses
    from she_jax.train import rl as rl_lib

    section = rl_lib.rl_section()
    section.loss.logprob_chunk = logprob_chunk
    section.group_size = shapes.group
    section.share_prompt = bool(shapes.share_prompt)
    loss_fn = losses.make_policy_loss_fn(config, rl_lib.policy_loss_config(
        section.loss, shapes.new_tokens, shapes.prompt_len, rl_lib.shared_group_size(section)))
    rows, length = shapes.prompts * shapes.group, shapes.prompt_len + shapes.new_tokens
    targets = (rows, length - 1)
    batch = _batch(mesh, tokens=((rows, length), jnp.int32),
                   attention_mask=((rows, length), jnp.bool_),
                   loss_mask=(targets, jnp.bool_), old_logprobs=(targets, jnp.float32),
                   advantages=(targets, jnp.float32), ref_logprobs=(targets, jnp.float32))
    return _train_step_lowered(config, mesh, rules, loss_fn, batch, shapes.accum_steps)


def lower_sampler(config: Any, mesh: Any, rules: Sequence, shapes: Shapes) -> Any:
    """The group sampler's program (`sampling._generate`, what `sampling.Sampler` calls)
    for `prompts` x `group` samples, params sharded, prompts replicated."""
    from she_jax import parallel, sampling

    replicated = parallel.replicated(mesh)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
    settings = sampling.SamplingConfig(temperature=1.0)
    program = sampling._Program(model=config, greedy=False, top_k=settings.top_k,
                                nucleus=False, share_prefix=settings.share_prefix)
    knobs = sampling._Knobs(temperature=scalar(jnp.float32), top_p=scalar(jnp.float32),
                            eos_id=scalar(jnp.int32), pad_id=scalar(jnp.int32),
                            stop_at_eos=scalar(jnp.bool_), min_new_tokens=scalar(jnp.int32))
    prompt_shape = (shapes.prompts, shapes.prompt_len)
    return sampling._generate.lower(
        program, abstract_params(config, mesh, rules),
        jax.ShapeDtypeStruct(prompt_shape, jnp.int32, sharding=replicated),
        jax.ShapeDtypeStruct(prompt_shape, jnp.bool_, sharding=replicated),
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated), scalar(jnp.int32), knobs,
        num_samples=shapes.group, output_len=shapes.new_tokens)


# ------------------------------------------------------------------ reading the program

_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8\w*|c64|c128)\[([0-9,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
# Instructions whose result is no new buffer: views, tuples, the loop's carried value,
# parameters (arguments or a loop's carry) and constants.
_NO_BUFFER = {"parameter", "tuple", "get-tuple-element", "bitcast", "while", "constant",
              "conditional", "call", "after-all", "opt-barrier"}


def _array_bytes(dtype: str, dims: str) -> int:
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)
    return math.prod(int(d) for d in dims.split(",") if d) * bits // 8


def _split_shape(rest: str) -> tuple[str, str]:
    """'f32[2]{0} add(...)' or '(f32[2], s32[]) fusion(...)' -> (shape text, op name)."""
    if rest.startswith("("):
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                shape, tail = rest[:i + 1], rest[i + 1:]
                break
        else:
            return rest, ""
    else:
        shape, _, tail = rest.partition(" ")
    op = re.match(r"\s*([\w\-]+)", tail)
    return shape, op.group(1) if op else ""


def largest_buffer(hlo_text: str) -> dict[str, Any] | None:
    """The largest array produced by an instruction that is not inside a fusion, in an
    optimized HLO module's text: {'shape', 'bytes', 'op', 'name'} (None if none).

    Instructions inside fused computations are never materialised, so computations called
    by a `fusion` are skipped; within the rest (entry, loop bodies), each instruction's
    result is a buffer unless it is a view or a tuple (`_NO_BUFFER`). A multi-output
    fusion counts its largest output.
    """
    fused = set(re.findall(r"\bfusion\(.*?calls=%?([\w.\-]+)", hlo_text))
    best, computation = None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("(")[0]:
            computation = header.group(2)
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction is None or computation is None or computation in fused:
            continue
        shape, op = _split_shape(line[instruction.end():])
        if op in _NO_BUFFER:
            continue
        for dtype, dims in _ARRAY.findall(shape):
            size = _array_bytes(dtype, dims)
            if best is None or size > best["bytes"]:
                metadata = re.search(r'op_name="([^"]*)"', line)
                best = {"shape": f"{dtype}[{dims}]", "bytes": size, "op": op,
                        "name": metadata.group(1) if metadata else instruction.group(2)}
    return best


def memory_stats(compiled: Any) -> dict[str, Any]:
    """Per-device byte counts of a compiled program, and its largest unfused buffer."""
    stats = compiled.memory_analysis()
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                          + out["temp_bytes"])
    out["largest_buffer"] = largest_buffer(compiled.as_text())
    return out


def extrapolate(measured: Mapping[int, Mapping[str, Any]], layers: int) -> dict[str, Any]:
    """Byte counts at `layers` from measurements at two depths, linear in the depth (the
    module doc says why); the largest buffer is the deeper measurement's."""
    (a, at_a), (b, at_b) = sorted(measured.items())[:2]
    out = dict(at_b)
    for key in BYTE_KEYS:
        per_layer = (at_b[key] - at_a[key]) / (b - a)
        out[key] = int(round(at_b[key] + (layers - b) * per_layer))
    return out


LOWER = {"sft": lower_sft, "rl_update": lower_rl_update, "sampler": lower_sampler}


def plan(model: str, program: str, mesh_name: str, *, dtype: str = "bfloat16",
         shapes: Shapes = Shapes(), logprob_chunk: int | None = None,
         layers: Sequence[int] | None = None) -> dict[str, Any]:
    """The memory plan of one program: a JSON-ready record (the module doc lists its keys).

    layers: two depths to compile and extrapolate from, or None for the real depth. A
    depth at or above the real one compiles the real model instead.
    """
    from she_jax import parallel
    from she_jax.train import config as config_lib

    if program not in LOWER:
        raise ValueError(f"unknown program {program!r}; choose from {PROGRAMS}")
    if mesh_name not in MESHES:
        raise ValueError(f"unknown mesh {mesh_name!r}; choose from {sorted(MESHES)}")
    if len(jax.devices()) < NUM_DEVICES:
        raise RuntimeError(f"bench.memory needs {NUM_DEVICES} devices, jax has "
                           f"{len(jax.devices())}: run it as `python -m bench.memory`, which "
                           "sets the host platform's device count before jax starts")
    full = MODELS[model]["num_layers"]
    depths = [full] if layers is None or max(layers) >= full else sorted(set(layers))
    if len(depths) not in (1, 2):
        raise ValueError(f"layers must name two depths to extrapolate from, got {layers}")
    mesh = parallel.make_mesh(MESHES[mesh_name])
    rules = tuple(config_lib.DEFAULT_AXIS_RULES)
    measured, compile_s = {}, 0.0
    for depth in depths:
        config = model_config(model, dtype, depth)
        start = time.perf_counter()
        extra = {"logprob_chunk": logprob_chunk} if program == "rl_update" else {}
        compiled = LOWER[program](config, mesh, rules, shapes, **extra).compile()
        compile_s += time.perf_counter() - start
        measured[depth] = memory_stats(compiled)
        common.log(f"{model} {program} {mesh_name} chunk={logprob_chunk} layers={depth}: "
                   f"temp {measured[depth]['temp_bytes'] / GIB:.2f} GiB, "
                   f"{time.perf_counter() - start:.0f} s")
    stats = measured[full] if full in measured else extrapolate(measured, full)
    record = {
        "bench": "memory", "model": model, "program": program, "mesh": mesh_name,
        "mesh_shape": MESHES[mesh_name], "dtype": dtype, "shape": _shape_record(program, shapes),
        "logprob_chunk": logprob_chunk, "layers": full,
        "extrapolated_from": None if full in measured else depths,
        **{k: stats[k] for k in BYTE_KEYS},
        **{k.replace("_bytes", "_gib"): round(stats[k] / GIB, 3) for k in BYTE_KEYS},
        "fits_80gb": stats["total_bytes"] <= BUDGET_BYTES,
        "largest_buffer": stats["largest_buffer"], "compile_s": round(compile_s, 1),
        "backend": jax.default_backend(),
    }
    return record


def _shape_record(program: str, shapes: Shapes) -> dict[str, int]:
    if program == "sft":
        return {"batch": shapes.sft_batch, "length": shapes.sft_len,
                "accum_steps": shapes.accum_steps}
    record = {"prompts": shapes.prompts, "group": shapes.group,
              "prompt_len": shapes.prompt_len, "new_tokens": shapes.new_tokens}
    if program == "rl_update":
        record["accum_steps"] = shapes.accum_steps
        record["share_prompt"] = bool(shapes.share_prompt)
    return record


def _names(text: str, known: Sequence[str], flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise ValueError(f"{flag}: unknown {unknown} (choose from {list(known)})")
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--meshes", default=",".join(MESHES))
    parser.add_argument("--dtype", default="bfloat16", choices=common.PRECISIONS)
    parser.add_argument("--logprob_chunks", default="128,0",
                        help="rl_update: positions per vocab chunk, one line each (0 = unchunked)")
    parser.add_argument("--layers", default="full",
                        help="'full', or two depths to extrapolate from (e.g. 2,4)")
    for field in dataclasses.fields(Shapes):
        parser.add_argument(f"--{field.name}", type=int, default=field.default)
    args = parser.parse_args(argv)
    # 8 host devices for the fake mesh, before anything starts jax's backend.
    flag = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    jax.config.update("jax_platforms", "cpu")
    layers = None if args.layers == "full" else [int(x) for x in args.layers.split(",")]
    chunks = [int(x) for x in args.logprob_chunks.split(",")]
    shapes = Shapes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Shapes)})
    for model in _names(args.models, list(MODELS), "--models"):
        for program in _names(args.programs, PROGRAMS, "--programs"):
            for mesh_name in _names(args.meshes, list(MESHES), "--meshes"):
                for chunk in chunks if program == "rl_update" else [None]:
                    common.emit(plan(model, program, mesh_name, dtype=args.dtype,
                                     shapes=shapes, logprob_chunk=chunk, layers=layers))


if __name__ == "__main__":
    main()
