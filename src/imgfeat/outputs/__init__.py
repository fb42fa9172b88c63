"""Output layer: where vectors go and how they are read back.

``sinks`` (writers of the five file formats and the error log), ``store`` (the sharded, resumable
feature store), ``formats`` (the one registry of formats: open a writer for a path, read any output
back whole or block by block) and ``targets`` (what an engine hands a decoded batch to: a file and
its error log, or a store's shards). Every file is written by the rule in ``imgfeat.files``.
May import: ``imgfeat.errors``, ``imgfeat.files``, ``imgfeat._version``.
"""
