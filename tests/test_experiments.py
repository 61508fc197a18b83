"""experiments.run: locked configs, variants, default workdirs, prerequisites."""

import os
import subprocess
import sys

import ml_collections
import pytest

from experiments import common, registry, sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("variant", common.VARIANTS)
def test_every_variant_builds(variant):
    config = sft.get_config(variant)
    assert config.variant == variant and config.trainer in registry.TRAINERS
    assert config.model.preset in ("tiny", "small")


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
