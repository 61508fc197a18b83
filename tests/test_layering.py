"""The layers: models, data, rewards, rl, eval and the top-level modules never import the
trainers (she_jax.train), at module level or inside a function."""

import ast
import pathlib

import she_jax

ROOT = pathlib.Path(she_jax.__file__).parent
LOWER = ("models", "data", "rewards", "rl", "eval")


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_lower_layers_do_not_import_the_trainers():
    files = [p for layer in LOWER for p in (ROOT / layer).rglob("*.py")]
    files += [p for p in ROOT.glob("*.py")]
    assert len(files) > 30
    offenders = sorted(f"{p.relative_to(ROOT.parent)}: {name}" for p in files
                       for name in _imports(p)
                       if name == "she_jax.train" or name.startswith("she_jax.train."))
    assert not offenders, offenders
