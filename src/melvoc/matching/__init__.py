"""Matching a user's mels to melvoc's features: :mod:`~melvoc.matching.identify` finds the config that made a
set of mel files (:mod:`~melvoc.matching.search` is the fit); :mod:`~melvoc.matching.compare` checks a
``mel_processing.py`` copy against melvoc (:mod:`~melvoc.matching.copies` runs the copy,
:mod:`~melvoc.matching.legacy_api` lets a torch<2 / librosa<0.10 copy run). The commands are
``python -m melvoc.identify`` and ``python -m melvoc.compare``."""
