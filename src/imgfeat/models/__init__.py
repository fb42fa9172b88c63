"""Model layer: which network, with which weights, fed how, run by which backend.

``preprocess`` (the geometry and arithmetic that travel with a model), ``weights`` (where weights
come from, decided in one place), ``registry`` (model specs, read without building a network),
``backbone`` (the network cut at a layer, normalising uint8 input and pooling) and ``backends``
(torch, ONNX Runtime, OpenVINO executors, exported and checked). May import: ``imgfeat.errors``,
``imgfeat._version``.
"""
