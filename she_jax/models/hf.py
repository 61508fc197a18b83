"""Local Hugging Face checkpoint directories <-> she_jax params.

A directory holds `config.json` and either `model.safetensors` or a sharded
`model.safetensors.index.json` plus the shards it names. Supported architectures:
Qwen2ForCausalLM (q/k/v bias), Qwen3ForCausalLM (q/k RMSNorm, explicit head_dim) and
LlamaForCausalLM (no bias). Only safetensors are read: pickle checkpoints (`*.bin`, `*.pt`)
can run arbitrary code when loaded, so they are refused. Tensors go through safetensors'
numpy backend, so neither loading nor saving needs torch.

HF Linear weights are `[out, in]`; she_jax kernels are `[in..., out...]` with heads split
out (q_proj `[E, H, D]`, o_proj `[H, D, E]`), so every Linear is transposed and reshaped.
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from she_jax.models.transformer import ModelConfig

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_MAX_SHARD_BYTES = 4 * 2**30

# HF architecture -> (she_jax family, HF model_type).
ARCHITECTURES = {
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Qwen3ForCausalLM": ("qwen3", "qwen3"),
    "LlamaForCausalLM": ("llama", "llama"),
}
_FAMILY_TO_ARCHITECTURE = {family: arch for arch, (family, _) in ARCHITECTURES.items()}
_MODEL_TYPE_TO_ARCHITECTURE = {mtype: arch for arch, (_, mtype) in ARCHITECTURES.items()}
# (qkv_bias, qk_norm) each HF class hard-codes.
_FAMILY_LAYOUT = {"qwen2": (True, False), "qwen3": (False, True), "llama": (False, False)}

# Non-parameter buffers some older exporters wrote; they carry nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

SAVE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
    """A checkpoint directory that she_jax cannot (or will not) load."""


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor and where it lives in the she_jax tree.

    A Linear (`transpose`) is HF `[out, in]` and a she_jax kernel `[in..., out...]`;
    everything else (embedding, norm scales, biases) differs at most by a reshape.
    """

    hf_name: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    transpose: bool = False

    def to_she(self, weight: np.ndarray) -> np.ndarray:
        return (weight.T if self.transpose else weight).reshape(self.shape)

    def to_hf(self, value: np.ndarray) -> np.ndarray:
        if self.transpose:
            return value.reshape(self.hf_shape[::-1]).T
        return value.reshape(self.hf_shape)


def _linear(hf_name: str, path: tuple[str, ...], in_shape: tuple[int, ...],
            out_shape: tuple[int, ...]) -> _Tensor:
    hf_shape = (math.prod(out_shape), math.prod(in_shape))
    return _Tensor(hf_name, path, in_shape + out_shape, hf_shape, transpose=True)


def _copy(hf_name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> _Tensor:
    """A tensor stored as is, except that HF flattens per-head biases [H, D] to [H*D]."""
    hf_shape = (math.prod(shape),) if path[-1] == "bias" else shape
    return _Tensor(hf_name, path, shape, hf_shape)


def tensor_layout(config: ModelConfig) -> list[_Tensor]:
    """Every tensor of an HF checkpoint for `config`, in file order, with its she_jax path."""
    e, h, kvh, d, m = (config.hidden_size, config.num_heads, config.num_kv_heads,
                       config.head_dim, config.mlp_dim)
    layout = [_copy("model.embed_tokens.weight", ("embed", "embedding"), (config.vocab_size, e))]
    for i in range(config.num_layers):
        hf, layer = f"model.layers.{i}.", f"layers_{i}"
        attn, attn_path = hf + "self_attn.", (layer, "attn")
        layout.append(_copy(hf + "input_layernorm.weight", (layer, "input_norm", "scale"), (e,)))
        for proj, heads in (("q_proj", h), ("k_proj", kvh), ("v_proj", kvh)):
            path = attn_path + (proj,)
            layout.append(_linear(f"{attn}{proj}.weight", path + ("kernel",), (e,), (heads, d)))
            if config.qkv_bias:
                layout.append(_copy(f"{attn}{proj}.bias", path + ("bias",), (heads, d)))
        layout.append(
            _linear(attn + "o_proj.weight", attn_path + ("o_proj", "kernel"), (h, d), (e,)))
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                layout.append(_copy(f"{attn}{norm}.weight", attn_path + (norm, "scale"), (d,)))
        layout.append(
            _copy(hf + "post_attention_layernorm.weight", (layer, "post_attn_norm", "scale"), (e,)))
        for proj, fan_in, fan_out in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
            layout.append(_linear(f"{hf}mlp.{proj}.weight", (layer, "mlp", proj, "kernel"),
                                  (fan_in,), (fan_out,)))
    layout.append(_copy("model.norm.weight", ("final_norm", "scale"), (e,)))
    if not config.tie_embeddings:
        layout.append(_linear("lm_head.weight", ("lm_head", "kernel"), (e,), (config.vocab_size,)))
    return layout


# ------------------------------------------------------------------------------ config.json


def config_from_hf(hf_config: Mapping[str, Any], source: str = CONFIG_FILE,
                   compute_dtype: str = "float32") -> ModelConfig:
    """Builds a ModelConfig from a parsed HF `config.json`; raises on anything unsupported.

    `source` names the file in error messages; `compute_dtype` becomes ModelConfig.dtype.
    """
    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{source}: {message}")

    architectures = hf_config.get("architectures") or []
    if not architectures:
        model_type = hf_config.get("model_type")
        if model_type not in _MODEL_TYPE_TO_ARCHITECTURE:
            raise fail(f'no "architectures" and unsupported model_type {model_type!r}; '
                       f"supported architectures: {sorted(ARCHITECTURES)}")
        architectures = [_MODEL_TYPE_TO_ARCHITECTURE[model_type]]
    if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
        raise fail(f"unsupported architecture {architectures}; supported: {sorted(ARCHITECTURES)}")
    arch = architectures[0]
    family = ARCHITECTURES[arch][0]

    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
        if key not in hf_config:
            raise fail(f"missing key {key!r} (architecture {arch})")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise fail(f"hidden_act {hf_config['hidden_act']!r} is unsupported (only 'silu')")
    for flag in ("attention_bias", "mlp_bias"):
        if hf_config.get(flag):
            raise fail(f"{flag}=true is unsupported for {arch} (she_jax has no o_proj/MLP bias)")
    layer_types = hf_config.get("layer_types") or ()
    if hf_config.get("use_sliding_window") or "sliding_attention" in layer_types:
        raise fail(f"sliding-window attention is unsupported for {arch}")

    num_heads = hf_config["num_attention_heads"]
    # Qwen3Config defaults head_dim to 128; the other two derive it from the hidden size.
    default_head_dim = 128 if family == "qwen3" else hf_config["hidden_size"] // num_heads
    qkv_bias, qk_norm = _FAMILY_LAYOUT[family]
    return ModelConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or num_heads,
        head_dim=hf_config.get("head_dim") or default_head_dim,
        mlp_dim=hf_config["intermediate_size"],
        rope_theta=_rope_theta(hf_config, fail),
        rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        # transformers' PreTrainedConfig defaults tie_word_embeddings to true.
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
        dtype=compute_dtype,
        family=family,
        max_seq_len=hf_config.get("max_position_embeddings", 2048),
    )


def _rope_theta(hf_config: Mapping[str, Any], fail: Callable[[str], CheckpointError]) -> float:
    """rope_theta from transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    for key in ("rope_parameters", "rope_scaling"):
        block = hf_config.get(key) or {}
        # transformers 5 nests one block per layer type for hybrid models; none is supported.
        if not isinstance(block, Mapping) or any(isinstance(v, Mapping) for v in block.values()):
            raise fail(f"{key}={block!r} is unsupported (only a single default RoPE)")
        rope_type = block.get("rope_type", block.get("type", "default"))
        if rope_type not in (None, "default"):
            raise fail(f"{key} has rope_type {rope_type!r}: RoPE scaling is unsupported "
                       f"(only 'default')")
        if block.get("partial_rotary_factor", 1.0) != 1.0:
            raise fail(f"{key} partial_rotary_factor={block['partial_rotary_factor']} is "
                       f"unsupported")
    if hf_config.get("partial_rotary_factor", 1.0) != 1.0:
        raise fail(f"partial_rotary_factor={hf_config['partial_rotary_factor']} is unsupported")
    theta = (hf_config.get("rope_parameters") or {}).get("rope_theta", hf_config.get("rope_theta"))
    return float(10000.0 if theta is None else theta)


def config_to_hf(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The `config.json` dict from which transformers (4.x and 5.x) rebuilds `config`.

    `dtype` is the stored weight dtype it declares: 'float32' | 'bfloat16' | 'float16'.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype {dtype!r} is unsupported; choose one of {sorted(SAVE_DTYPES)}")
    if config.family not in _FAMILY_TO_ARCHITECTURE:
        raise ValueError(f"family {config.family!r} has no HF architecture; "
                         f"supported: {sorted(_FAMILY_TO_ARCHITECTURE)}")
    arch = _FAMILY_TO_ARCHITECTURE[config.family]
    qkv_bias, qk_norm = _FAMILY_LAYOUT[config.family]
    if (config.qkv_bias, config.qk_norm) != (qkv_bias, qk_norm):
        raise ValueError(f"{arch} needs qkv_bias={qkv_bias}, qk_norm={qk_norm}; the config has "
                         f"qkv_bias={config.qkv_bias}, qk_norm={config.qk_norm}")
    hf_config = {
        "architectures": [arch],
        "model_type": ARCHITECTURES[arch][1],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.rms_norm_eps,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        # transformers 5 reads dtype, 4.x reads torch_dtype.
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if config.family == "llama":
        hf_config.update(attention_bias=False, mlp_bias=False)
    else:
        hf_config.update(use_sliding_window=False, sliding_window=None,
                         layer_types=["full_attention"] * config.num_layers)
        if config.family == "qwen3":
            hf_config["attention_bias"] = False
    return hf_config


# ------------------------------------------------------------------------------ safetensors IO


@contextlib.contextmanager
def _open_safetensors(path: str) -> Iterator[Any]:
    """safe_open(path) whose failure on a truncated or corrupt file names the file (the
    library's SafetensorError does not)."""
    try:
        with safe_open(path, framework="numpy") as f:
            yield f
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it is truncated "
                              "or corrupt: copy or export it again") from e


def _tensor_files(path: str) -> tuple[dict[str, str], str]:
    """(tensor name -> file holding it, the file to name in errors) for a checkpoint dir."""
    single, index = os.path.join(path, SINGLE_FILE), os.path.join(path, INDEX_FILE)
    # Same precedence as transformers: a single file wins over an index.
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}, single
    if os.path.isfile(index):
        with open(index) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' "
                                      f"({e!r})") from e
        files = {name: os.path.join(path, shard) for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not os.path.isfile(shard):
                raise CheckpointError(f"{index}: shard {os.path.basename(shard)} does not exist")
        return files, index
    pickles = sorted(p for p in os.listdir(path) if p.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CheckpointError(
            f"{path}: only pickle checkpoints ({', '.join(pickles)}); pickle checkpoints are "
            f"refused because loading one can run arbitrary code. Convert it to safetensors.")
    raise CheckpointError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def _write_safetensors(tensors: Mapping[str, np.ndarray], path: str,
                       max_shard_bytes: int) -> None:
    """Writes `tensors` in order to one file, or to shards plus an index above the threshold."""
    metadata = {"format": "pt"}  # transformers refuses safetensors files without a known format
    total_bytes = sum(t.nbytes for t in tensors.values())
    if total_bytes <= max_shard_bytes:
        save_file(dict(tensors), os.path.join(path, SINGLE_FILE), metadata=metadata)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        if shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += tensor.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, file_name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file_name))
    with open(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)


def _remove_old_weights(path: str) -> None:
    """Deletes earlier safetensors weights, so a stale single file cannot shadow a new index."""
    for name in [SINGLE_FILE, INDEX_FILE] + glob.glob("model-*-of-*.safetensors", root_dir=path):
        if os.path.isfile(os.path.join(path, name)):
            os.remove(os.path.join(path, name))


# ------------------------------------------------------------------------------ public API


def load_hf(path: str, compute_dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """Loads a local HF checkpoint directory (safetensors only; any stored dtype).

    Args:
      path: directory with config.json and model.safetensors or a sharded index.
      compute_dtype: ModelConfig.dtype of the result; params are float32 whatever the
        checkpoint stores (bfloat16/float16 are widened exactly).
    Returns:
      (config, params), params = {'params': {...}} as in she_jax.models.transformer.
    Raises:
      CheckpointError naming the file and key/tensor for anything unsupported or missing.
    """
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found")
    with open(config_path) as f:
        try:
            hf_config = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_path}: invalid JSON ({e})") from e
    config = config_from_hf(hf_config, config_path, compute_dtype)
    files, source = _tensor_files(path)
    layout = tensor_layout(config)
    expected = {t.hf_name for t in layout}
    if config.tie_embeddings:
        expected.add("lm_head.weight")  # optional, and must then equal the embedding
    unexpected = sorted(n for n in files if n not in expected and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        arch = _FAMILY_TO_ARCHITECTURE[config.family]
        raise CheckpointError(f"{source}: unexpected tensors for {arch}: {unexpected[:8]}{more}")

    with contextlib.ExitStack() as stack:
        handles = {}

        def read(name: str) -> np.ndarray:
            if name not in files:
                raise CheckpointError(f"{source}: missing tensor {name!r}")
            if files[name] not in handles:
                handles[files[name]] = stack.enter_context(_open_safetensors(files[name]))
            return handles[files[name]].get_tensor(name).astype(np.float32)

        params: dict = {}
        for spec in layout:
            weight = read(spec.hf_name)
            if weight.shape != spec.hf_shape:
                raise CheckpointError(
                    f"{files[spec.hf_name]}: tensor {spec.hf_name!r} has shape {weight.shape}, "
                    f"but {config_path} implies {spec.hf_shape}")
            if not np.isfinite(weight).all():
                raise CheckpointError(f"{files[spec.hf_name]}: tensor {spec.hf_name!r} has NaN/inf")
            node = params
            for key in spec.path[:-1]:
                node = node.setdefault(key, {})
            node[spec.path[-1]] = jnp.asarray(spec.to_she(weight))
        if config.tie_embeddings and "lm_head.weight" in files:
            if not np.array_equal(read("lm_head.weight"), params["embed"]["embedding"]):
                raise CheckpointError(
                    f"{files['lm_head.weight']}: lm_head.weight differs from "
                    f"model.embed_tokens.weight, but {config_path} has tie_word_embeddings=true")
    return config, {"params": params}


def save_hf(config: ModelConfig, params: Mapping, path: str, dtype: str = "float32",
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Writes `params` as an HF checkpoint directory that AutoModelForCausalLM loads.

    Args:
      config: the model config; its family picks the HF architecture.
      params: {'params': {...}} as from init_params / load_hf.
      path: output directory; created, and earlier model*.safetensors files in it replaced.
      dtype: stored dtype, 'float32' | 'bfloat16' | 'float16'.
      max_shard_bytes: above this total size, weights go to shards plus an index.
    """
    hf_config = config_to_hf(config, dtype)
    if "params" not in params:
        raise ValueError(f"params must be {{'params': ...}}; got top-level keys {sorted(params)}")
    tensors = {}
    for spec in tensor_layout(config):
        node = params["params"]
        for depth, key in enumerate(spec.path):
            if key not in node:
                raise KeyError(f"params has no {'/'.join(spec.path[:depth + 1])} "
                               f"(needed for {spec.hf_name})")
            node = node[key]
        value = np.asarray(node, dtype=np.float32)
        name = "/".join(spec.path)
        if value.shape != spec.shape:
            raise ValueError(f"params {name} has shape {value.shape}, expected {spec.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"params {name} has NaN/inf")
        tensors[spec.hf_name] = np.ascontiguousarray(spec.to_hf(value).astype(SAVE_DTYPES[dtype]))
    os.makedirs(path, exist_ok=True)
    _remove_old_weights(path)
    _write_safetensors(tensors, path, max_shard_bytes)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2)
