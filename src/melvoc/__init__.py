"""melvoc: exact, fast log-mel features and a Lightning + Hydra HiFi-GAN vocoder training pipeline.

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
    "__version__",
    "mel_spectrogram",
    "spec_to_mel",
    "spectrogram",
]
