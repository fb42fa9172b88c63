"""``imgfeat serve``: a local web app and HTTP API to search, map and review a collection.

``collection`` (the features, index, map and duplicate lists, read-only), ``media`` (uploads and
thumbnails decoded in spawned processes under a deadline), ``security`` (Host and token guard),
``app`` (FastAPI routes and pages), ``server`` (binding and running uvicorn). The top layer beside
``cli``: may import ``api``, ``engines``, ``tools``, ``outputs``, ``data``, ``models`` and the base.
Needs ``pip install 'imgfeat[serve]'``.
"""
