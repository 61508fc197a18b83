"""--help and bad flags of the tools that parse their own absl flags (she_jax.cli)."""

import pytest
from absl import flags

from experiments import ladder
from she_jax import cli
from she_jax.data import stats
from she_jax.eval import passk


def _fv():
    fv = flags.FlagValues()
    flags.DEFINE_integer("n", 3, "A count.", flag_values=fv)
    return fv


def test_parse_flags_returns_positionals_and_sets_values():
    fv = _fv()
    assert cli.parse_flags(fv, ["prog", "--n=5", "extra"], "doc") == ["prog", "extra"]
    assert fv.n == 5


@pytest.mark.parametrize("arg", ["-h", "--help", "--helpfull"])
def test_help_prints_doc_and_flags_and_exits_0(arg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_flags(_fv(), ["prog", "--n=5", arg], "The tool does X.")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("The tool does X.") and "--n" in out and "A count." in out


@pytest.mark.parametrize("argv, message", [(["prog", "--bogus=1"], "bogus"),
                                           (["prog", "--n=five"], "five")])
def test_bad_flag_exits_2_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_flags(_fv(), argv, "doc")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "--help" in err


@pytest.mark.parametrize("main, doc_start, flag", [
    (ladder.main, "The paper ladder", "--world_seed"),
    (passk.main, "pass@1 against pass@k", "--temperature"),
    (stats.main, "Dataset statistics", "--on_bad_row")])
def test_tools_answer_help(main, doc_start, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["tool", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(doc_start) and flag in out


@pytest.mark.parametrize("main", [ladder.main, passk.main, stats.main])
def test_tools_reject_unknown_flag_without_traceback(main, capsys):
    with pytest.raises(SystemExit) as e:
        main(["tool", "--no_such_flag=1"])
    assert e.value.code == 2
    assert "no_such_flag" in capsys.readouterr().err
