"""Audio data for vocoder training: sources, decoding, datasets, the Lightning data module and the
built-in synthetic smoke-test set."""

from melvoc.data.collate import AudioCollate
from melvoc.data.datamodule import VocoderDataModule
from melvoc.data.dataset import AudioDataset, load_mel
from melvoc.data.io import AudioDataError, AudioInfo, audio_info, read_audio, read_crop
from melvoc.data.sources import AudioEntry, read_source, split_entries
from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset

__all__ = [
    "AudioCollate",
    "AudioDataError",
    "AudioDataset",
    "AudioEntry",
    "AudioInfo",
    "SyntheticSpec",
    "VocoderDataModule",
    "audio_info",
    "load_mel",
    "make_synthetic_dataset",
    "read_audio",
    "read_crop",
    "read_source",
    "split_entries",
]
