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
