"""melvoc: exact, fast log-mel features and a Lightning + Hydra vocoder training pipeline (HiFi-GAN, BigVGAN, Vocos).

The folders are the layers, each importing only from those above it in this list:

| folder | what it is for |
|---|---|
| ``features/`` | the feature core: ``MelConfig``, the reference and fast paths, ``MelSpectrogram``, mel files and their statistics, the presets, the drop-in original names |
| ``data/`` | audio decoding, sources, datasets, the ``LightningDataModule`` |
| ``metrics/`` | the objective metrics (PESQ, M-STFT, MCD, periodicity, V/UV F1) |
| ``models/`` | ``GANVocoder``, generators and discriminators per family, the losses |
| ``peers/`` | readers of the official HiFi-GAN, BigVGAN and Vocos checkpoints |
| ``deploy/`` | shipping a trained model: loading, synthesis, export, ONNX, streaming |
| ``training/`` | orchestration of ``train.py``: config checks, the run, callbacks, fine-tuning |
| ``evaluation/`` | scoring vocoded audio against references, reports |
| ``matching/`` | which features made these mels (identify), and is my ``mel_processing.py`` copy the same (compare) |

The top-level modules are the public entry points: ``compat`` (``from melvoc.compat import
mel_spectrogram_torch``) and the commands ``python -m melvoc.compare|identify|evaluate|synthesize|export``,
each the argument parsing and printing around its folder's library code.

``import melvoc`` needs only torch and librosa; the training pieces bring in Lightning when imported.
"""

from melvoc.features import MelConfig, MelSpectrogram, Spectrogram, mel_spectrogram, spec_to_mel, spectrogram

__version__ = "0.1.0"

__all__ = [
    "MelConfig",
    "MelSpectrogram",
    "Spectrogram",
    "StreamingVocoder",
    "__version__",
    "load_generator",
    "mel_spectrogram",
    "spec_to_mel",
    "spectrogram",
]


def __getattr__(name: str):
    # Lazy, so that `import melvoc` stays free of Lightning (melvoc.deploy.inference imports melvoc.models).
    if name == "load_generator":
        from melvoc.deploy.inference import load_generator

        return load_generator
    if name == "StreamingVocoder":
        from melvoc.deploy.streaming import StreamingVocoder

        return StreamingVocoder
    raise AttributeError(f"module 'melvoc' has no attribute {name!r}")
