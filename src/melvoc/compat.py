"""``from melvoc.compat import mel_spectrogram_torch``: the original ``mel_processing.py`` names at the import
path the README documents. They live in :mod:`melvoc.features.compat`, with the features they wrap."""

from melvoc.features.compat import *  # noqa: F403 - the documented public names, re-exported
from melvoc.features.compat import __all__  # noqa: F401
