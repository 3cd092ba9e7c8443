"""Vocoder models: the generic GAN training module, the generator/discriminator contracts, and the
HiFi-GAN family (generator in :mod:`melvoc.models.hifigan`, MPD/MSD in :mod:`melvoc.models.discriminators`).

A family is a :class:`~melvoc.models.base.VocoderGenerator` subclass (plus discriminators if it
brings its own) and a ``conf/model/<name>.yaml`` that names them by ``_target_``;
:class:`GANVocoder` trains any of them.
"""

from melvoc.models.base import DiscriminatorOutput, VocoderGenerator, fold_weight_norm
from melvoc.models.discriminators import (
    DiscriminatorP,
    DiscriminatorS,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
)
from melvoc.models.gan_losses import discriminator_loss, feature_matching_loss, generator_loss
from melvoc.models.hifigan import HiFiGANGenerator, ResBlock1, ResBlock2
from melvoc.models.module import GANVocoder

__all__ = [
    "DiscriminatorOutput",
    "DiscriminatorP",
    "DiscriminatorS",
    "GANVocoder",
    "HiFiGANGenerator",
    "MultiPeriodDiscriminator",
    "MultiScaleDiscriminator",
    "ResBlock1",
    "ResBlock2",
    "VocoderGenerator",
    "discriminator_loss",
    "feature_matching_loss",
    "fold_weight_norm",
    "generator_loss",
]
