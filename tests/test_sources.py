"""she_jax.data.sources: every data knob reachable from a flag (and every `--config.` flag the
docs show parses as written), the JSONL files checked up front, the world cache keys."""

import ast
import dataclasses
import glob
import json
import os
import re
import shlex

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from she_jax.data import readers, sources
from she_jax.data.shopworld import SPLITS, WorldConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                      if "def get_config" in open(p).read())
SFT_CONFIG = os.path.join(ROOT, "experiments", "sft.py")
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
ROW = {"query": "sony tv", "item_title": "Sony Bravia 55in TV", "label": "L4"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHE_JAX_CACHE", str(tmp_path / "cache"))


def parse_flags(config_file: str, flag_args: list[str]) -> ml_collections.ConfigDict:
    """The config experiments.run would build from `--config=<file> <flag_args>` (the same
    config_flags definition: locked, so an unknown key is an error)."""
    argv = ["run", f"--config={config_file}", *flag_args]
    fv = flags.FlagValues()
    # sys_argv: the overrides are found in this argv (by default config_flags reads sys.argv).
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def value_at(config: ml_collections.ConfigDict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


# ----------------------------------------------------------------- the world and data sections

# A value other than the preset's for every WorldConfig field, as a user would type it.
WORLD_FLAG_VALUES = {
    "seed": "1", "sft_size": "320", "rl_size": "64", "dev_size": "32", "test_size": "24",
    "label_mix": "(0.4, 0.1, 0.4, 0.1)", "annotation_fraction": "0.5", "num_brands": "120",
    "max_leaves_per_parent": "3", "zipf_exponent": "1.5", "head_mass": "0.4",
    "torso_mass": "0.9", "hard_case_prob": "0.25", "title_noise": "2",
}


def test_every_world_field_is_a_flag():
    # Issue 20 item 1: `--config.data.world_overrides.seed=1` was an unknown flag.
    assert set(WORLD_FLAG_VALUES) == {f.name for f in dataclasses.fields(WorldConfig)}
    for field, text in WORLD_FLAG_VALUES.items():
        config = parse_flags(SFT_CONFIG, [f"--config.data.world_overrides.{field}={text}"])
        expected = ast.literal_eval(text)
        world = sources._world_config(config.data)
        assert world == WorldConfig.preset("tiny", **{field: getattr(world, field)})
        assert getattr(world, field) == expected and getattr(world, field) != getattr(
            WorldConfig.preset("tiny"), field)
    config = parse_flags(SFT_CONFIG, ["--config.data.world_overrides.seed=1",
                                      "--config.data.world_overrides.sft_size=320"])
    assert sources._world_config(config.data) == WorldConfig.preset("tiny", seed=1, sft_size=320)
    with pytest.raises(flags.IllegalFlagValueError, match="world_overrides.seed"):
        parse_flags(SFT_CONFIG, ["--config.data.world_overrides.seed=one"])


def test_every_data_key_is_a_flag():
    values = {"source": "jsonl", "world": "small", "tfds_dir": "/tmp/tfds", "esci_dir": "/d",
              "esci_locale": "es", "on_bad_row": "skip", "max_examples_per_split": "7",
              "overlong": "truncate"}
    values.update({f"files.{split}": f"{split}.jsonl" for split in SPLITS})
    values.update({f"world_overrides.{k}": v for k, v in WORLD_FLAG_VALUES.items()})

    def leaves(section, prefix=""):
        for key, value in section.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    assert set(leaves(sources.data_config())) == set(values)  # a new key needs a flag here
    config = parse_flags(SFT_CONFIG, [f"--config.data.{k}={v}" for k, v in values.items()])
    for key, text in values.items():
        got = value_at(config.data, key)
        try:
            expected = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            expected = text
        assert got == expected, key


def test_world_cache_paths_of_the_presets_are_unchanged():
    # Pinned: worlds generated before the overrides became typed keys are cached under these
    # names, and must stay valid.
    pinned = {"tiny": "204931e63b4f7875", "small": "85c6feb2c9676da1",
              "full": "8b3d305bf92ee0ab"}
    for world, digest in pinned.items():
        config = parse_flags(SFT_CONFIG, [f"--config.data.world={world}"])
        assert os.path.basename(sources._world_cache_path(sources._world_config(config.data))) \
            == digest
    # The flag form and the dict form (and a config read back from config.json, where
    # tuples are lists and unset keys null) name the same world.
    by_flag = parse_flags(SFT_CONFIG, ["--config.data.world_overrides.seed=1",
                                       "--config.data.world_overrides.label_mix=(0.4,0.1,0.4,0.1)"])
    by_dict = parse_flags(SFT_CONFIG, [
        "--config.data.world_overrides={'seed': 1, 'label_mix': (0.4, 0.1, 0.4, 0.1)}"])
    from_json = ml_collections.ConfigDict(json.loads(json.dumps(by_flag.data.to_dict())))
    paths = {sources._world_cache_path(sources._world_config(d))
             for d in (by_flag.data, by_dict.data, from_json)}
    assert len(paths) == 1


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_files_from_flags_and_from_the_dict_form(tmp_path):
    # Issue 20 item 1: `--config.data.files.sft=train.jsonl` failed with AttributeError 'sft'.
    train = _write(tmp_path / "train.jsonl", [ROW, dict(ROW, label="L1")])
    dev = _write(tmp_path / "dev.jsonl", [dict(ROW, id="d1")])
    config = parse_flags(SFT_CONFIG, ["--config.data.source=jsonl",
                                      f"--config.data.files.sft={train}",
                                      f"--config.data.files.dev={dev}"])
    splits = sources.load_splits(config.data)
    assert set(splits) == {"sft", "dev"}
    assert [r["label"] for r in splits["sft"]] == ["L4", "L1"] and splits["dev"][0]["id"] == "d1"
    as_dict = parse_flags(SFT_CONFIG, ["--config.data.source=jsonl",
                                       f"--config.data.files={{'sft': '{train}', 'mine': '{dev}'}}"])
    assert sources.load_splits(as_dict.data) == {"sft": splits["sft"], "mine": splits["dev"]}
    with pytest.raises(ValueError, match=r"--config.data.files.<split>=PATH"):
        sources.load_splits(parse_flags(SFT_CONFIG, ["--config.data.source=jsonl"]).data)


def test_an_empty_or_missing_file_is_named_before_any_file_is_read(tmp_path, monkeypatch):
    # Issue 20 item 4: an empty file surfaced as SentencePiece's "0 texts".
    train = _write(tmp_path / "train.jsonl", [ROW])
    empty = tmp_path / "dev.jsonl"
    empty.write_text("")
    read = []
    monkeypatch.setattr(readers, "read_jsonl", lambda path, **kw: read.append(path))
    config = parse_flags(SFT_CONFIG, ["--config.data.source=jsonl",
                                      f"--config.data.files.sft={train}",
                                      f"--config.data.files.dev={empty}"])
    with pytest.raises(ValueError, match=rf"^config.data.files.dev: {empty} is empty$"):
        sources.load_splits(config.data)
    config.data.files.dev = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError,
                       match=r"^config.data.files.dev: .*nope.jsonl does not exist$"):
        sources.load_splits(config.data)
    assert read == []


def test_a_file_of_blank_lines_or_of_bad_rows_only_is_named(tmp_path):
    train = _write(tmp_path / "train.jsonl", [ROW])
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"query": "tv"}\n\xff\n')
    config = parse_flags(SFT_CONFIG, ["--config.data.source=jsonl", "--config.data.on_bad_row=skip",
                                      f"--config.data.files.sft={train}",
                                      f"--config.data.files.test_qa={blank}"])
    with pytest.raises(ValueError, match=r"config.data.files.test_qa: .*blank.jsonl is empty "
                                         r"\(blank lines only\)"):
        sources.load_splits(config.data)
    config.data.files.test_qa = str(bad)
    with pytest.raises(ValueError, match=r"config.data.files.test_qa: .*bad.jsonl has no usable "
                                         r"row: all 2 were skipped as bad"):
        sources.load_splits(config.data)


def test_start_run_names_the_empty_file_before_the_tokenizer(tmp_path):
    from she_jax.train import bootstrap

    train = _write(tmp_path / "train.jsonl", [ROW] * 3)
    empty = tmp_path / "dev.jsonl"
    empty.write_text("")
    config = parse_flags(SFT_CONFIG, ["--config.data.source=jsonl",
                                      f"--config.data.files.sft={train}",
                                      f"--config.data.files.dev={empty}"])
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="config.data.files.dev: .* is empty"):
        bootstrap.start_run(config, str(workdir))
    assert not (workdir / bootstrap.TOKENIZER_DIR).exists()


# ------------------------------------------------------------- every `--config.` flag in the docs

_FLAG = re.compile(r"^--config\.([A-Za-z_][\w.]*)(?:=(.*))?$", re.S)


def doc_command_lines() -> list[tuple[str, int, list[str]]]:
    """(doc, line, shell words) of every code span or code-block line of README.md and docs/
    that holds a `--config.` flag."""
    found = []
    for path in DOCS:
        text = open(path, encoding="utf-8").read()
        spans = []
        for block in re.finditer(r"```[^\n]*\n(.*?)```", text, re.S):
            offset = block.start(1)
            for line in block.group(1).splitlines(keepends=True):
                spans.append((offset, line))
                offset += len(line)
        inline_text = re.sub(r"```.*?```", lambda m: " " * len(m.group(0)), text, flags=re.S)
        spans += [(m.start(1), m.group(1)) for m in re.finditer(r"`([^`]+)`", inline_text)]
        for offset, span in spans:
            if "--config." in span:
                words = shlex.split(span.replace("\n", " "))
                found.append((os.path.relpath(path, ROOT), text.count("\n", 0, offset) + 1, words))
    return found


def _expansions(words: list[str]) -> list[list[str]]:
    """One flag list per documented alternative (`a|b|c` values tried one at a time, the
    other flags at their first alternative); the generic `--config.key=value` is left out."""
    config_flags_, choices = [], []
    for word in words:
        m = _FLAG.match(word)
        if not m or m.group(1) == "key":
            continue
        key, value = m.group(1), m.group(2)
        alternatives = value.split("|") if value and re.fullmatch(r"[\w.|]+", value) else [value]
        config_flags_.append(key)
        choices.append(alternatives)
    runs = [[a[0] for a in choices]]
    for i, alternatives in enumerate(choices):
        for alternative in alternatives[1:]:
            runs.append([*runs[0][:i], alternative, *runs[0][i + 1:]])
    return [[(k, v) for k, v in zip(config_flags_, run)] for run in runs if config_flags_]


def _config_file_of(words: list[str]) -> list[str]:
    for word in words:
        m = re.match(r"--config=(experiments/\w+\.py)(:\w+)?$", word)
        if m:
            return [os.path.join(ROOT, m.group(1)) + (m.group(2) or "")]
    return CONFIG_FILES


def _matches(got, text: str) -> bool:
    try:
        expected = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return str(got) == text
    if isinstance(got, ml_collections.ConfigDict):  # the dict form of a section
        return got.to_dict() == expected
    if isinstance(got, bool) or isinstance(expected, bool):
        return got is expected
    if isinstance(got, (tuple, list)):
        return list(got) == list(expected)
    return got == expected


DOC_LINES = doc_command_lines()


def test_the_docs_show_config_flags():
    # The README's own data command must be among them (the test below checks each).
    assert any("--config.data.files.sft=train.jsonl" in words for _, _, words in DOC_LINES)
    assert len(DOC_LINES) >= 20


@pytest.mark.parametrize("doc, line, words", DOC_LINES,
                         ids=[f"{d}:{n}" for d, n, _ in DOC_LINES])
def test_every_documented_config_flag_parses_as_written(doc, line, words):
    """Each command line of the docs, as written, is accepted by the config it is for (the
    file it names, else at least one experiments/ config) and sets what it says."""
    for flag_set in _expansions(words):
        errors = []
        for config_file in _config_file_of(words):
            args = [f"--config.{k}={v}" for k, v in flag_set if v is not None]
            try:
                config = parse_flags(config_file, args)
            except Exception as e:  # noqa: BLE001 - collected, reported below if none accept
                errors.append(f"{os.path.basename(config_file)}: {e}")
                continue
            for key, value in flag_set:
                try:
                    got = value_at(config, key)
                except (KeyError, AttributeError) as e:
                    errors.append(f"{os.path.basename(config_file)}: no key {key} ({e})")
                    break
                if value is not None and not _matches(got, value):
                    errors.append(f"{os.path.basename(config_file)}: {key} = {got!r}, "
                                  f"not {value!r}")
                    break
            else:
                break  # this config accepts the whole line
        else:
            pytest.fail(f"{doc}:{line}: {' '.join(words)}: {flag_set} is accepted by no "
                        "config:\n" + "\n".join(errors))


def test_tfds_source_gets_only_the_set_world_fields(monkeypatch):
    from she_jax.data import tfds_builder

    calls = []
    monkeypatch.setattr(tfds_builder, "load_split",
                        lambda split, world, tfds_dir, overrides: calls.append(overrides) or [])
    sources.load_splits(parse_flags(SFT_CONFIG, ["--config.data.source=tfds"]).data)
    sources.load_splits(parse_flags(SFT_CONFIG, ["--config.data.source=tfds",
                                                 "--config.data.world_overrides.seed=1"]).data)
    assert calls == [None] * len(SPLITS) + [{"seed": 1}] * len(SPLITS)
