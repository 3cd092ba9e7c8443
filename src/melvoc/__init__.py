"""melvoc: exact, fast log-mel features and a Lightning + Hydra vocoder training pipeline (HiFi-GAN, BigVGAN, Vocos).

The features (``melvoc.features``) import only torch and librosa; the training pieces
(``melvoc.data``, ``melvoc.loss``, ``melvoc.callbacks``, ``melvoc.models``, ``melvoc.training``)
bring in Lightning when imported.
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
    # Lazy, so that `import melvoc` stays free of Lightning (melvoc.inference imports melvoc.models).
    if name == "load_generator":
        from melvoc.inference import load_generator

        return load_generator
    if name == "StreamingVocoder":
        from melvoc.streaming import StreamingVocoder

        return StreamingVocoder
    raise AttributeError(f"module 'melvoc' has no attribute {name!r}")
