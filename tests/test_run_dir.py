"""she_jax.run_dir: a finished run's model, tokenizer and checkpoints, checked together.

Issue 20 items 5 (a swapped tokenizer is refused up front), 9 (model/ is self-contained for
transformers) and 8 (a corrupt model.safetensors names the file); the layering of
eval/score (no trainer imports).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

import tiny_runs
from experiments import registry
from she_jax import run_dir, sampling, score, special_tokens as st, tokenizer as tokenizer_lib
from she_jax.data import cot, sources
from she_jax.eval.reeval import reevaluate
from she_jax.models import hf, transformer
from she_jax.train import bootstrap


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished answer-first SFT run (4 updates) and its config."""
    root = tmp_path_factory.mktemp("run_dir")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHE_JAX_CACHE", str(root / "cache"))
        workdir = str(root / "run")
        config = tiny_runs.build_sft_run(workdir)
        yield workdir, config


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory, run):
    """Another SentencePiece tokenizer with the run's vocabulary size (1,024 pieces),
    trained on the same texts in another order: same size, different ids."""
    _, config = run
    splits = sources.load_splits(config.data)
    texts = [f"{r['query']} {r['item_title']}" for r in splits["sft"]][::-1]
    out = tmp_path_factory.mktemp("other_tokenizer")
    tokenizer = tokenizer_lib.train_sentencepiece(texts, config.model.vocab_size, out)
    assert tokenizer.vocab_size == config.model.vocab_size
    return str(out)


def _copy_with_tokenizer(workdir: str, tokenizer_dir: str, dest: str) -> str:
    shutil.copytree(workdir, dest)
    shutil.rmtree(os.path.join(dest, run_dir.TOKENIZER_DIR))
    shutil.copytree(tokenizer_dir, os.path.join(dest, run_dir.TOKENIZER_DIR))
    return dest


def test_fingerprint_is_the_tokenizer_files(run, tmp_path):
    workdir, _ = run
    own = os.path.join(workdir, run_dir.TOKENIZER_DIR)
    copy = shutil.copytree(own, tmp_path / "copy")
    fingerprint = run_dir.tokenizer_fingerprint(own)
    assert fingerprint.startswith("sha256:") and run_dir.tokenizer_fingerprint(copy) == fingerprint
    (copy / "README.md").write_text("not a tokenizer file")
    assert run_dir.tokenizer_fingerprint(copy) == fingerprint
    model_file = copy / tokenizer_lib.SENTENCEPIECE_MODEL_FILE
    content = bytearray(model_file.read_bytes())
    content[-1] ^= 1
    model_file.write_bytes(bytes(content))
    assert run_dir.tokenizer_fingerprint(copy) != fingerprint
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        run_dir.tokenizer_fingerprint(tmp_path)
    # The exported model records the fingerprint of the run's tokenizer.
    with open(os.path.join(workdir, run_dir.MODEL_DIR, run_dir.MODEL_METADATA_FILE)) as f:
        assert json.load(f)["tokenizer_fingerprint"] == fingerprint


def test_swapped_tokenizer_of_the_same_size_is_refused_before_decoding(run, other_tokenizer,
                                                                       tmp_path):
    workdir, config = run
    swapped = _copy_with_tokenizer(workdir, other_tokenizer, str(tmp_path / "swapped"))
    tokenizer_dir = os.path.join(swapped, run_dir.TOKENIZER_DIR)
    # What made the swap silent: the vocabulary size matches the model's.
    assert tokenizer_lib.load_tokenizer(tokenizer_dir).vocab_size == config.model.vocab_size
    recorded = run_dir.tokenizer_fingerprint(os.path.join(workdir, run_dir.TOKENIZER_DIR))
    actual = run_dir.tokenizer_fingerprint(tokenizer_dir)
    assert recorded != actual

    def assert_names_both(error):
        message = str(error.value)
        for part in (tokenizer_dir, os.path.join(swapped, run_dir.MODEL_DIR), recorded, actual):
            assert part in message, (part, message)

    with pytest.raises(run_dir.TokenizerMismatchError) as error:
        run_dir.load_run(swapped)
    assert_names_both(error)
    # `python -m she_jax.eval`: refused before evaluating; eval.json is left as it was.
    eval_json = os.path.join(swapped, run_dir.EVAL_FILE)
    before = open(eval_json).read()
    with pytest.raises(run_dir.TokenizerMismatchError) as error:
        reevaluate(swapped)
    assert_names_both(error)
    assert open(eval_json).read() == before
    # `python -m she_jax.score`: refused before reading the input; no output written.
    pairs, scored = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
    pairs.write_text(json.dumps({"query": "red shoes", "item_title": "nike shoes"}) + "\n")
    with pytest.raises(run_dir.TokenizerMismatchError) as error:
        score.score_file(swapped, str(pairs), str(scored), show_progress=False)
    assert_names_both(error)
    assert not scored.exists()
    # A later stage starting from this run (config.init_from -> init_dir).
    config = tiny_runs.tiny_sft_config()
    config.init_dir = swapped
    with pytest.raises(run_dir.TokenizerMismatchError) as error:
        bootstrap.init_model(config, tokenizer_lib.load_tokenizer(tokenizer_dir),
                             jax.random.PRNGKey(0))
    assert_names_both(error)


def test_resume_with_a_swapped_tokenizer_is_refused(run, other_tokenizer, tmp_path):
    workdir, config = run
    checkpoints = os.path.join(workdir, run_dir.CHECKPOINT_DIR)
    with open(os.path.join(checkpoints, run_dir.CHECKPOINT_FINGERPRINT_FILE)) as f:
        recorded = json.load(f)["tokenizer_fingerprint"]
    assert recorded == run_dir.tokenizer_fingerprint(os.path.join(workdir,
                                                                  run_dir.TOKENIZER_DIR))
    swapped = _copy_with_tokenizer(workdir, other_tokenizer, str(tmp_path / "swapped"))
    with pytest.raises(run_dir.TokenizerMismatchError, match="checkpoints") as error:
        registry.run_config(config, swapped)
    assert os.path.join(swapped, run_dir.CHECKPOINT_DIR) in str(error.value)
    assert recorded in str(error.value)
    # Deleting the checkpoints (a fresh start) forgets the pairing; the same tokenizer passes.
    fresh = str(tmp_path / "fresh")
    os.makedirs(os.path.join(fresh, run_dir.CHECKPOINT_DIR))
    shutil.copytree(other_tokenizer, os.path.join(fresh, run_dir.TOKENIZER_DIR))
    run_dir.check_checkpoint_tokenizer(fresh)
    run_dir.check_checkpoint_tokenizer(fresh)


def test_exported_model_directory_is_self_contained_for_transformers(run, tmp_path):
    workdir, _ = run
    model_dir = os.path.join(workdir, run_dir.MODEL_DIR)
    model_config, params = run_dir.load_model(workdir)
    ours = run_dir.load_tokenizer(workdir)
    # The failure this fixes: weights alone give an empty AutoTokenizer (1 token).
    bare = tmp_path / "bare"
    hf.save_hf(model_config, params, str(bare))
    assert len(transformers.AutoTokenizer.from_pretrained(str(bare))) == 1

    texts = [
        cot.render_prompt("red running shoes, size 42 (men's)", "Nike Air-Zoom 2024 café"),
        "  two  spaces\ttabs\nand 日本語 🙂 $19.99 <|not a token|>",
        f"{st.STEP_MARKERS[0]} brand: nike {st.STEP_MARKERS[4]} label: L3 {st.LABEL_TOKENS[1]}",
    ]
    for trust_remote_code in (False, True):
        theirs = transformers.AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code)
        assert len(theirs) == ours.vocab_size
        for text in texts:
            ids = theirs(text)["input_ids"]  # the defaults a user gets: no BOS/EOS added
            assert ids == ours.encode(text)
            assert theirs.decode(ids) == text == ours.decode(ids)
        assert theirs.eos_token_id == ours.eos_id and theirs.pad_token_id == ours.pad_id
    # she_jax reads the same directory back to the same tokenizer.
    assert tokenizer_lib.load_tokenizer(model_dir).encode(texts[0]) == ours.encode(texts[0])

    # Greedy generation from that one directory equals she_jax's sampler.
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = [cot.render_prompt("wireless earbuds", "anker soundcore earbuds black"),
               cot.render_prompt("cheap yoga mat", "lululemon yoga mat 5mm purple")]
    new_tokens = 12
    sampler = sampling.Sampler(model_config, sampling.SamplingConfig(temperature=0.0))
    for prompt in prompts:
        ids = theirs(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                       do_sample=False, pad_token_id=theirs.pad_token_id)
        hf_tokens = generated[0, ids.shape[1]:].tolist()
        she = sampler(params, [ours.encode(prompt)], jax.random.PRNGKey(0),
                      max_new_tokens=new_tokens)
        assert hf_tokens == np.asarray(she.tokens[0, 0]).tolist()


@pytest.mark.parametrize("damage", ["truncated", "garbage_header", "empty"])
def test_corrupt_safetensors_names_the_file(run, tmp_path, damage):
    workdir, _ = run
    copy = shutil.copytree(workdir, tmp_path / "run")
    weights = copy / run_dir.MODEL_DIR / hf.SINGLE_FILE
    content = weights.read_bytes()
    weights.write_bytes({"truncated": content[: len(content) // 2],
                         "garbage_header": b"\x13\x00\x00\x00garbage" + content[11:],
                         "empty": b""}[damage])
    with pytest.raises(hf.CheckpointError, match="truncated or corrupt") as error:
        run_dir.load_model(str(copy))
    assert str(weights) in str(error.value)


def test_check_model_tokenizer_lets_an_old_export_through_with_a_warning(run, tmp_path,
                                                                        caplog):
    workdir, _ = run
    copy = shutil.copytree(workdir, tmp_path / "old")
    os.remove(copy / run_dir.MODEL_DIR / run_dir.MODEL_METADATA_FILE)
    model_config, _ = run_dir.load_model(str(copy))
    assert model_config.num_layers == 2
    assert any(run_dir.MODEL_METADATA_FILE in r.getMessage() for r in caplog.records)


def test_export_needs_the_tokenizer_saved_first(tmp_path):
    config = transformer.ModelConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                     num_kv_heads=1, head_dim=8, mlp_dim=32)
    params = transformer.init_params(config, jax.random.PRNGKey(0))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        run_dir.export_model(str(tmp_path), config, params)


def _trainer_modules_imported_by(*modules: str) -> list[str]:
    code = (f"import json, sys, {', '.join(modules)}; print(json.dumps(sorted(m for m in "
            "sys.modules if m.startswith('she_jax.train'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eval_and_score_do_not_import_the_trainers():
    assert _trainer_modules_imported_by("she_jax.run_dir", "she_jax.score") == []
    assert "she_jax.train.bootstrap" not in _trainer_modules_imported_by(
        "she_jax.eval.__main__")


def test_reevaluate_in_bfloat16_records_the_dtype_and_agrees_with_float32(run, tmp_path):
    """`python -m she_jax.eval --dtype=bfloat16`: the run evaluated with bf16 compute (its
    eval.json says so), on the same examples; answer-first label probabilities agree with
    the float32 evaluation's to bf16 precision."""
    workdir, _ = run
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    f32 = reevaluate(copy, dtype="float32")
    read = lambda: {r["id"]: r["probs"] for r in map(  # noqa: E731
        json.loads, open(os.path.join(copy, "predictions.jsonl")))}
    probs32 = read()
    bf16 = reevaluate(copy, dtype="bfloat16")
    probs16 = read()
    assert probs16.keys() == probs32.keys()
    diff = max(abs(a - b) for i in probs32 for a, b in zip(probs32[i], probs16[i]))
    assert 0 < diff < 0.02, diff  # bf16 compute changed the numbers, not the answers
    assert json.load(open(os.path.join(copy, run_dir.EVAL_FILE)))["config"]["model"][
        "dtype"] == "bfloat16"
    assert set(f32["splits"]) == set(bf16["splits"])
    for split in f32["splits"]:
        assert f32["splits"][split]["n"] == bf16["splits"][split]["n"]
