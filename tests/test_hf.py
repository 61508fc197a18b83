"""she_jax.models.hf: HF checkpoint import/export, checked against transformers' PyTorch models."""

import dataclasses
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from she_jax.models import hf
from she_jax.models.transformer import ModelConfig, forward, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 256, 64, 2, 4, 2, 128
# Qwen3 gets a head_dim unlike hidden/heads (16), as real Qwen3 checkpoints have.
HEAD_DIM = {"qwen2": 16, "qwen3": 32, "llama": 16}
HF_CLASSES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
}
TOLERANCE = 1e-4
# Equal to the she_jax default, so configs from load_hf share compiled forwards with ours.
MAX_SEQ_LEN = 2048


def _she_config(family: str, tie: bool) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                       num_kv_heads=KV_HEADS, head_dim=HEAD_DIM[family], mlp_dim=MLP,
                       rope_theta=5000.0, rms_norm_eps=1e-6, qkv_bias=family == "qwen2",
                       qk_norm=family == "qwen3", tie_embeddings=tie, family=family,
                       max_seq_len=MAX_SEQ_LEN)


def _perturb(name: str, value):
    """Standard-normal `value` rescaled for the tensor called `name` (HF or she_jax path):
    norm scales around 1, biases and weights around 0, far enough from their initial
    values (ones, zeros, std 0.02) that a mix-up of any two tensors changes the logits."""
    if name.endswith("bias"):
        return 0.3 * value
    if name.endswith(("norm.weight", "scale")):
        return 1.0 + 0.3 * value
    return 0.15 * value


def _hf_model(family: str, tie: bool, seed: int = 0):
    """A tiny random transformers model whose every tensor (norms, biases too) is non-trivial."""
    config_cls, model_cls = (getattr(transformers, name) for name in HF_CLASSES[family])
    config = config_cls(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                        head_dim=HEAD_DIM[family], intermediate_size=MLP, rope_theta=5000.0,
                        rms_norm_eps=1e-6, tie_word_embeddings=tie,
                        max_position_embeddings=MAX_SEQ_LEN, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_perturb(name, torch.randn_like(param)))
    return model


def _she_params(config: ModelConfig, seed: int = 0) -> dict:
    """Random params with the tree of init_params (traced, not compiled: that takes seconds)."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _perturb(jax.tree_util.keystr(path, simple=True, separator="/"),
                                    rng.standard_normal(leaf.shape).astype(np.float32)),
        shapes)


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens [4, 12] int32 and mask [4, 12] bool: two rows unpadded, two left-padded."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(4, 12)).astype(np.int32)
    mask = np.arange(12)[None, :] >= np.array([0, 5, 0, 2])[:, None]
    return np.where(mask, tokens, 0).astype(np.int32), mask


def _hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens).long(),
                    attention_mask=torch.from_numpy(mask).long(),
                    position_ids=torch.from_numpy(positions).long())
    return out.logits.float().numpy()


def _assert_logits_close(ours, theirs, mask):
    ours = np.asarray(ours)
    assert np.isfinite(ours[mask]).all()
    diff = np.abs(ours[mask] - theirs[mask]).max()
    assert diff <= TOLERANCE, f"max |logit diff| {diff}"
    assert np.abs(theirs[mask]).max() > 1.0  # the comparison is not between near-zero logits


def _trees_equal(a, b) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return all(np.asarray(x).dtype == np.asarray(y).dtype
               and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_load_hf_logits_match_transformers(tmp_path, family, tie):
    model = _hf_model(family, tie)
    model.save_pretrained(tmp_path)
    config, params = hf.load_hf(str(tmp_path))
    assert config == _she_config(family, tie)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
    tokens, mask = _batch(seed=1)
    _assert_logits_close(forward(config, params, tokens, mask),
                         _hf_logits(model, tokens, mask), mask)


def test_load_hf_reads_a_transformers_sharded_checkpoint(tmp_path):
    model = _hf_model("qwen3", tie=False)
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / hf.INDEX_FILE).exists()
    single_config, single = hf.load_hf(str(tmp_path / "single"))
    sharded_config, sharded = hf.load_hf(str(tmp_path / "sharded"))
    assert sharded_config == single_config and _trees_equal(sharded, single)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, family):
    config = _she_config(family, tie=family != "llama")
    params = _she_params(config)
    hf.save_hf(config, params, str(tmp_path))
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["architectures"] == [HF_CLASSES[family][1]] and saved["model_type"] == family
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), output_loading_info=True, attn_implementation="eager")
    assert type(model).__name__ == HF_CLASSES[family][1]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32
    tokens, mask = _batch(seed=2)
    ours = forward(config, params, tokens, mask)
    _assert_logits_close(ours, _hf_logits(model, tokens, mask), mask)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_she_to_hf_to_she_is_bitwise_exact(tmp_path, family):
    config = _she_config(family, tie=family == "qwen2")
    params = _she_params(config, seed=3)
    hf.save_hf(config, params, str(tmp_path))
    loaded_config, loaded = hf.load_hf(str(tmp_path))
    assert loaded_config == config
    assert _trees_equal(params, loaded)


def test_sharded_index_round_trip(tmp_path):
    config = _she_config("qwen2", tie=False)
    params = _she_params(config, seed=4)
    hf.save_hf(config, params, str(tmp_path), max_shard_bytes=40_000)
    index = json.load(open(tmp_path / hf.INDEX_FILE))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and not (tmp_path / hf.SINGLE_FILE).exists()
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors")) == shards
    assert index["metadata"]["total_size"] == sum(x.size * 4 for x in jax.tree.leaves(params))
    loaded_config, loaded = hf.load_hf(str(tmp_path))
    assert loaded_config == config and _trees_equal(params, loaded)
    # Re-saving unsharded into the same directory must not leave shards to confuse a reader.
    hf.save_hf(config, params, str(tmp_path))
    assert sorted(p for p in os.listdir(tmp_path) if "safetensors" in p) == [hf.SINGLE_FILE]
    # transformers reads the sharded form too.
    hf.save_hf(config, params, str(tmp_path), max_shard_bytes=40_000)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokens, _ = _batch(seed=5)
    mask = np.ones(tokens.shape, bool)  # and the no-mask path of forward
    _assert_logits_close(forward(config, params, tokens), _hf_logits(model, tokens, mask), mask)


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    config = _she_config("qwen3", tie=True)
    params = _she_params(config, seed=6)
    hf.save_hf(config, params, str(tmp_path), dtype="bfloat16")
    stored = load_file(str(tmp_path / hf.SINGLE_FILE))
    assert stored["model.norm.weight"].dtype == ml_dtypes.bfloat16
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    _, loaded = hf.load_hf(str(tmp_path))
    rounded = jax.tree.map(
        lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert _trees_equal(rounded, loaded)


def test_tied_checkpoint_with_lm_head_present(tmp_path):
    config = _she_config("llama", tie=True)
    params = _she_params(config, seed=7)
    hf.save_hf(config, params, str(tmp_path))
    file = str(tmp_path / hf.SINGLE_FILE)
    tensors = load_file(file)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, file, metadata={"format": "pt"})
    assert _trees_equal(params, hf.load_hf(str(tmp_path))[1])
    tensors["lm_head.weight"][0, 0] += 1.0
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError, match="lm_head.weight differs"):
        hf.load_hf(str(tmp_path))


def _saved_checkpoint(path, family="llama") -> str:
    config = _she_config(family, tie=False)
    hf.save_hf(config, _she_params(config), str(path))
    return str(path)


def _edit_config(path: str, **changes) -> None:
    config_path = os.path.join(path, "config.json")
    hf_config = json.load(open(config_path))
    hf_config.update(changes)
    json.dump(hf_config, open(config_path, "w"))


def test_unsupported_architecture_is_named(tmp_path):
    path = _saved_checkpoint(tmp_path)
    _edit_config(path, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(hf.CheckpointError, match="MistralForCausalLM") as error:
        hf.load_hf(path)
    assert "config.json" in str(error.value)


def test_missing_tensor_is_named_with_its_file(tmp_path):
    path = _saved_checkpoint(tmp_path)
    file = os.path.join(path, hf.SINGLE_FILE)
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError,
                       match=r"model\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj"):
        hf.load_hf(path)


def test_unexpected_and_misshapen_tensors_are_named(tmp_path):
    path = _saved_checkpoint(tmp_path)
    file = os.path.join(path, hf.SINGLE_FILE)
    tensors = load_file(file)
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(HIDDEN, np.float32)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError, match=r"o_proj\.bias"):
        hf.load_hf(path)
    del tensors["model.layers.0.self_attn.o_proj.bias"]
    tensors["model.norm.weight"] = np.ones(HIDDEN + 1, np.float32)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError, match=r"'model\.norm\.weight' has shape \(65,\)"):
        hf.load_hf(path)


def test_pickle_only_directory_is_refused(tmp_path):
    path = _saved_checkpoint(tmp_path)
    os.remove(os.path.join(path, hf.SINGLE_FILE))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    refused = r"pytorch_model\.bin.*pickle checkpoints are refused"
    with pytest.raises(hf.CheckpointError, match=refused):
        hf.load_hf(path)


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "gelu"),
])
def test_unsupported_config_options_are_named(tmp_path, change, message):
    path = _saved_checkpoint(tmp_path)
    _edit_config(path, **change)
    with pytest.raises(hf.CheckpointError, match=message):
        hf.load_hf(path)


def test_rope_theta_from_transformers_4_and_5_layouts():
    base = hf.config_to_hf(_she_config("qwen2", tie=True))
    del base["rope_theta"], base["rope_parameters"]
    assert hf.config_from_hf(base).rope_theta == 10000.0
    assert hf.config_from_hf({**base, "rope_theta": 1e6}).rope_theta == 1e6
    v5 = {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 2.5e5}}
    assert hf.config_from_hf(v5).rope_theta == 2.5e5
    assert hf.config_from_hf({**base, "rope_theta": 1e6, "rope_scaling": None}).rope_theta == 1e6


def test_save_rejects_flags_the_architecture_cannot_hold(tmp_path):
    config = _she_config("llama", tie=True)
    bad = dataclasses.replace(config, qkv_bias=True)
    with pytest.raises(ValueError, match="LlamaForCausalLM needs qkv_bias=False"):
        hf.save_hf(bad, {"params": {}}, str(tmp_path))
