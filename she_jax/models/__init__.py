"""Model definitions: the Qwen2/Qwen3/Llama-family decoder (`transformer`) and HF I/O (`hf`)."""

from she_jax.models.decoding import (
    PrefixCache,
    SampleCache,
    decode_step,
    grow_sample_cache,
    init_sample_cache,
    prefill,
)
from she_jax.models.transformer import (
    ModelConfig,
    forward,
    hidden_states,
    init_params,
    logits_from_hidden,
    param_logical_axes,
    shared_prefix_hidden_states,
)

__all__ = [
    "ModelConfig",
    "PrefixCache",
    "SampleCache",
    "decode_step",
    "forward",
    "grow_sample_cache",
    "hidden_states",
    "init_params",
    "init_sample_cache",
    "logits_from_hidden",
    "param_logical_axes",
    "prefill",
    "shared_prefix_hidden_states",
]
