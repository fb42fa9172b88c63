"""How queries of a store choose their weights: as the store records them (the hash is checked either way)."""

from __future__ import annotations

from typing import Optional


from ...errors import ImgfeatError

def query_weights(manifest: dict, weights: Optional[str], random_weights: Optional[bool]) -> bool:
    """The store records how its weights were chosen; queries use the same unless told (the weights hash is
    checked either way). ``random_weights`` None: as recorded."""
    source = manifest.get("weights_source")
    if weights is not None and random_weights:
        raise ImgfeatError("give --weights FILE or --random-weights, not both")
    if weights is None and source == "file" and not random_weights:
        raise ImgfeatError(f"{manifest['model']} vectors of this store were extracted with --weights "
                           f"{manifest.get('weights_file') or 'FILE'}: pass the same --weights FILE to query it")
    if random_weights is None:
        return weights is None and source == "random"
    return bool(random_weights)
