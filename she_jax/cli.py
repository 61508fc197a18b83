"""Command-line helpers shared by the `python -m ...` tools that parse their own absl flags.

Each tool keeps its flags on a private `flags.FlagValues` (importing it in a test or a
notebook leaves absl's global FLAGS alone), so absl's `app.run` conveniences are not there:
`parse_flags` gives them back — `--help` prints the tool's docstring and flags and exits 0,
and a bad flag exits 2 with absl's message (which names the flag) instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def wants_help(argv: Sequence[str]) -> bool:
    """Whether argv (argv[0] is the program name) asks for help."""
    return any(arg in HELP_FLAGS for arg in list(argv)[1:])


def usage(fv: flags.FlagValues, doc: str | None) -> str:
    """The tool's docstring, then its flags."""
    return f"{(doc or '').strip()}\n\nFlags:\n{fv.get_help()}\n"


def parse_flags(fv: flags.FlagValues, argv: Sequence[str], doc: str | None) -> list[str]:
    """Parses argv into fv; returns the positional arguments (argv[0] first).

    `--help` (or -h, --helpshort, --helpfull): prints `usage` to stdout, SystemExit(0).
    A flag absl rejects (unknown, or a value it cannot parse): the message on stderr with a
    pointer to --help, SystemExit(2).
    """
    if wants_help(argv):
        sys.stdout.write(usage(fv, doc))
        raise SystemExit(0)
    try:
        return fv(list(argv))
    except flags.Error as e:
        print(f"{e}\n(--help lists the flags)", file=sys.stderr)
        raise SystemExit(2) from None
