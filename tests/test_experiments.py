"""experiments.run: locked configs, variants, default workdirs, prerequisites."""

import os
import subprocess
import sys

import ml_collections
import pytest

from experiments import common, registry, sft
from she_jax.models import transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("variant", common.VARIANTS)
def test_every_variant_builds(variant):
    config = sft.get_config(variant)
    assert config.variant == variant and config.trainer in registry.TRAINERS
    assert config.model.preset in ("tiny", "tiny_wide", "small")
    transformer.ModelConfig.preset(config.model.preset)  # a preset that exists


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        sft.get_config("huge")


def test_default_workdir_names_config_and_variant():
    assert registry.default_workdir(sft.get_config()) == os.path.join(registry.RUNS_DIR, "sft")
    assert registry.default_workdir(sft.get_config("small")) == os.path.join(
        registry.RUNS_DIR, "sft_small")


def test_unknown_trainer_is_an_error():
    config = sft.get_config()
    config.trainer = "nope"
    with pytest.raises(ValueError, match="config.trainer='nope' is not a known trainer"):
        registry.run_config(config, "/nonexistent")


def test_prerequisite_already_finished_is_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    parent_dir = tmp_path / "sft"
    parent_dir.mkdir()
    (parent_dir / "eval.json").write_text("{}")
    child = ml_collections.ConfigDict({"name": "child", "variant": "tiny", "trainer": "sft",
                                       "init_from": "sft", "init_dir": ""})
    called = []
    monkeypatch.setattr(registry, "run_config", lambda c, w: called.append(w))
    registry.build_prerequisites(child)
    assert called == [] and child.init_dir == str(parent_dir)


def test_missing_prerequisite_is_built_first(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    child = ml_collections.ConfigDict({"name": "child", "variant": "tiny", "trainer": "sft",
                                       "init_from": "sft", "init_dir": ""})
    called = []
    monkeypatch.setattr(registry, "run_config", lambda c, w: called.append((c.name, w)))
    registry.build_prerequisites(child)
    assert called == [("sft", str(tmp_path / "sft"))]


def test_mistyped_config_key_is_an_error():
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--config=experiments/sft.py",
         "--config.optimizer.totl_steps=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "totl_steps" in result.stderr


def _fake_finished_run(config, workdir):
    """What a finished run leaves for its prerequisite check: eval.json, and best/ as a
    run directory when the config selects a checkpoint on dev (the SRPO stages do)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        f.write("{}")
    if config.eval.get("select_every", 0):
        for part in ("model", "tokenizer"):
            os.makedirs(os.path.join(workdir, "best", part))
        for part in ("eval.json", "config.json"):
            with open(os.path.join(workdir, "best", part), "w") as f:
                f.write("{}")


def test_srpo_stage3_builds_its_whole_chain_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    built = []

    def fake_run(config, workdir):
        built.append((config.name, tuple(config.eval.splits), config.eval.max_examples,
                      config.get("init_dir", "")))
        _fake_finished_run(config, workdir)

    monkeypatch.setattr(registry, "run_config", fake_run)
    config = registry.load_config("srpo_stage3")
    registry.build_prerequisites(config)
    names = [b[0] for b in built]
    # Each run is built after what it starts from and reads.
    assert names == ["sft_think", "srpo_stage1", "srpo_stage2"]  # verifier steps: no genrm
    # Prerequisites are evaluated on part of dev only; the target keeps its full eval.
    assert all(b[1] == registry.PREREQUISITE_EVAL_SPLITS for b in built)
    # Each stage starts from the one before's dev-selected policy (SFT's last for stage 1).
    assert config.init_dir == str(tmp_path / "srpo_stage2" / "best")
    assert [b[3] for b in built if b[0] == "srpo_stage1"] == [str(tmp_path / "sft_think")]
    assert config.srpo.genrm_dir == ""
    assert config.curriculum.difficulty_dir == str(tmp_path / "sft_think")
    assert "test_longtail" in config.eval.splits
    stage2 = [b for b in built if b[0] == "srpo_stage2"][0]
    assert stage2[3] == str(tmp_path / "srpo_stage1" / "best")
    # A second call finds everything finished and builds nothing.
    built.clear()
    registry.build_prerequisites(registry.load_config("srpo_stage3"))
    assert built == []
    # The paper's hybrid step rewards read the reward model: it is built, and only it.
    config = registry.load_config("srpo_stage3")
    with config.unlocked():
        config.srpo.step_reward.source = "hybrid"
    registry.build_prerequisites(config)
    assert [b[0] for b in built] == ["genrm"]
    assert config.srpo.genrm_dir == str(tmp_path / "genrm")


def test_a_given_init_dir_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    called = []
    monkeypatch.setattr(registry, "run_config", lambda c, w: called.append(w))
    config = registry.load_config("grpo")
    config.init_dir = "/somewhere/sft"
    registry.build_prerequisites(config)
    assert called == [] and config.init_dir == "/somewhere/sft"


def _recording_run(built):
    def fake_run(config, workdir):
        built.append({"name": config.name, "workdir": workdir, "seed": config.seed,
                      "data_seed": config.data_seed, "dtype": config.model.dtype,
                      "world_seed": config.data.world_overrides.seed,
                      "max_examples": config.data.max_examples_per_split})
        _fake_finished_run(config, workdir)
    return fake_run


def test_seeds_and_data_reach_the_prerequisites(tmp_path, monkeypatch):
    # Issue 16: a chain's prerequisites were built with their default seeds and data
    # whatever stage 3 was given, all into the same runs/sft_think.
    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(registry, "run_config", _recording_run(built))
    config = registry.load_config("srpo_stage3")
    config.seed = 1
    config.data.world_overrides.seed = 1
    registry.build_prerequisites(config)
    assert [b["name"] for b in built] == ["sft_think", "srpo_stage1", "srpo_stage2"]
    assert all((b["seed"], b["world_seed"], b["data_seed"]) == (1, 1, 0) for b in built)
    assert [b["workdir"] for b in built] == [
        str(tmp_path / f"{name}_world1_seed1")
        for name in ("sft_think", "srpo_stage1", "srpo_stage2")]
    assert config.init_dir == str(tmp_path / "srpo_stage2_world1_seed1" / "best")
    assert config.curriculum.difficulty_dir == str(tmp_path / "sft_think_world1_seed1")

    # prerequisite_seed pins the whole chain to one start; other data fields get a hash.
    built.clear()
    config = registry.load_config("grpo")
    config.seed = 2
    config.prerequisite_seed = 0
    config.data.max_examples_per_split = 64
    config.model.dtype = "bfloat16"
    registry.build_prerequisites(config)
    [sft_think] = built
    assert (sft_think["seed"], sft_think["max_examples"], sft_think["dtype"]) == (
        0, 64, "bfloat16")
    name = os.path.basename(sft_think["workdir"])
    assert name.startswith("sft_think_bfloat16_data") and len(name) == len(
        "sft_think_bfloat16_data") + 8
    # Another value of that field is another directory; the same value finds it built.
    other = registry.load_config("grpo")
    other.data.max_examples_per_split = 32
    other.model.dtype = "bfloat16"
    registry.build_prerequisites(other)
    assert other.init_dir != config.init_dir and len(built) == 2
    again = registry.load_config("grpo")
    again.seed = 5
    again.prerequisite_seed = 0
    again.data.max_examples_per_split = 64
    again.model.dtype = "bfloat16"
    registry.build_prerequisites(again)
    assert again.init_dir == config.init_dir and len(built) == 2


def test_sft_think_wide_builds_its_base_then_continues_at_half_the_rate(tmp_path, monkeypatch):
    """The strong think-first start: base (tiny_wide + overlap task, 800 updates at 1e-3),
    then 800 more at 5e-4 from it; other variants are sft_think.py itself."""
    from experiments import sft_think, sft_think_wide

    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(registry, "run_config",
                        lambda c, w: built.append((c.name, c.optimizer.lr,
                                                   c.optimizer.total_steps, c.model.preset,
                                                   c.sft.overlap_weight, c.sft.order)))
    config = sft_think_wide.get_config()
    registry.build_prerequisites(config)
    assert built == [("sft_think_wide_base", 1e-3, 800, "tiny_wide", 1.0, "think_first")]
    assert config.init_dir == str(tmp_path / "sft_think_wide_base")
    assert (config.optimizer.lr, config.optimizer.total_steps, config.model.preset,
            config.sft.order) == (5e-4, 800, "tiny_wide", "think_first")
    small, base = sft_think_wide.get_config("small"), sft_think.get_config("small")
    assert small.init_from == "" and small.optimizer.to_dict() == base.optimizer.to_dict()


def test_sft_think_rl_builds_the_wide_chain_then_trains_the_annotated_rl_records(tmp_path,
                                                                                  monkeypatch):
    """The rl-data start: sft_think_wide_base, sft_think_wide, then 150 updates at 1e-4 on the
    rl split's records that carry a gold CoT."""
    from experiments import sft_think_rl

    monkeypatch.setattr(registry, "RUNS_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(registry, "run_config",
                        lambda c, w: built.append((c.name, c.optimizer.lr, c.sft.train_split)))
    config = sft_think_rl.get_config()
    registry.build_prerequisites(config)
    assert built == [("sft_think_wide_base", 1e-3, "sft"), ("sft_think_wide", 5e-4, "sft")]
    assert config.init_dir == str(tmp_path / "sft_think_wide")
    assert (config.sft.train_split, config.sft.require_cot, config.optimizer.total_steps,
            config.sft.order, config.model.preset) == ("rl", True, 150, "think_first",
                                                       "tiny_wide")
    assert config.optimizer.lr == pytest.approx(1e-4)
