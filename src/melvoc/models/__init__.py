"""HiFi-GAN vocoder: generator, discriminators, GAN losses and the training ``LightningModule``."""

from melvoc.models.discriminators import (
    CombinedDiscriminator,
    DiscriminatorP,
    DiscriminatorS,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
)
from melvoc.models.gan_losses import discriminator_loss, feature_matching_loss, generator_loss
from melvoc.models.generator import Generator, ResBlock1, ResBlock2, check_upsampling
from melvoc.models.module import HiFiGAN

__all__ = [
    "CombinedDiscriminator",
    "DiscriminatorP",
    "DiscriminatorS",
    "Generator",
    "HiFiGAN",
    "MultiPeriodDiscriminator",
    "MultiScaleDiscriminator",
    "ResBlock1",
    "ResBlock2",
    "check_upsampling",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
]
