"""Every command's --help renders (argparse formats help texts with %-formatting: a bare % crashes it)."""

from __future__ import annotations

import argparse
import re

import pytest

from imgfeat.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers(build_parser()))


def test_the_subcommands_are_found():
    assert {"extract", "diffuse", "knn", "serve", "info"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in SUBCOMMANDS], ids=lambda a: " ".join(a))
def test_help_of_every_command_renders(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imgfeat")


def test_percent_signs_in_help_texts_are_escaped():
    """'%' in a help text must be '%%' or a '%(name)s' argparse fills in; the rendered text has a plain '%'."""
    bare = re.compile(r"%(?!%|\()")
    found = []
    parsers = {"imgfeat": build_parser(), **_subparsers(build_parser())}
    for name, parser in parsers.items():
        for action in parser._actions:
            text = (action.help or "").replace("%%", "")
            if bare.search(text):
                found.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {action.help!r}")
    assert not found, found


def test_diffuse_help_says_twenty_percent(capsys):
    with pytest.raises(SystemExit):
        main(["diffuse", "--help"])
    assert "20% of each class" in " ".join(capsys.readouterr().out.split())


# what a process may hold after `--help` or an argument error besides imgfeat and the standard library (site's own
# hooks, the interpreter's main modules)
_ALLOWED = {"imgfeat", "__main__", "__mp_main__", "_distutils_hack", "sitecustomize", "usercustomize"}
_PROBE = """
import json, sys
from imgfeat.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))))
"""


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in SUBCOMMANDS]
                         + [["extract", "--batch-size", "two"], ["knn", "--k", "0"], ["nosuchcommand"]],
                         ids=lambda a: " ".join(a))
def test_help_and_argument_errors_import_only_the_standard_library(argv):
    """Issue 48: `--help` and an argument argparse refuses answer at once, in a fresh interpreter: no NumPy, Pillow,
    pyarrow or torch (each command's modules import them in the function that runs it)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True)
    third = set(json.loads(out.stdout.strip().splitlines()[-1])) - _ALLOWED
    assert not third, f"{' '.join(argv)} imported {sorted(third)}"


def test_the_declared_extensions_are_the_registered_formats():
    from imgfeat.outputs.formats import extensions
    from imgfeat.outputs.names import extensions as declared

    assert declared() == extensions()
