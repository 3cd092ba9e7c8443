"""Shipping a trained model: :mod:`~melvoc.deploy.inference` (``load_generator`` for melvoc checkpoints,
exports and official checkpoints), :mod:`~melvoc.deploy.synthesize` (copy-synthesis and mel files to
WAV), :mod:`~melvoc.deploy.export` (generator-only files), :mod:`~melvoc.deploy.onnx_export` (ONNX with
the features inside, ``OnnxVocoder``) and :mod:`~melvoc.deploy.streaming` (``StreamingVocoder``).
The commands are ``python -m melvoc.synthesize`` and ``python -m melvoc.export``."""
