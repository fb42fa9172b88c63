"""Data layer: records in, decoded uint8 batches out.

``sources`` turns the user's input into a lazy stream of :class:`Record`; ``shards`` cuts that
stream into shards (the unit of resume and distribution) and skips the done ones; ``decode`` turns
one file into pixels or a reason; ``loader`` decodes batches in worker processes, in input order.
May import: ``imgfeat.errors``, ``imgfeat.models.preprocess``.
"""
