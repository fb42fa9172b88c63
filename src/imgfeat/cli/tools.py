"""The downstream tools' subcommands, one module per concern (each parses and prints; the work is in
``imgfeat.tools``): ``pca``, ``probe`` (+ ``predict``), ``maps``, ``neighbours`` (``knn``, ``search``, ``dedup``),
``diffuse`` and ``audit``. Each takes ``--features`` (any imgfeat output or store) and ``--json``."""

from __future__ import annotations

from . import audit, diffuse, maps, neighbours, pca, probe


def add_parsers(sub) -> None:
    """Add the tools' subcommands to the ``imgfeat`` parser."""
    audit.add_parser(sub)
    pca.add_parser(sub)
    probe.add_parser(sub)
    maps.add_parser(sub)
    neighbours.add_parsers(sub)
    diffuse.add_parser(sub)
