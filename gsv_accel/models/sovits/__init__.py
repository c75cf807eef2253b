"""SoVITS (stage 2) models: the generator `SynthesizerTrn`, its discriminator and their config."""

from .config import SoVITSConfig
from .discriminator import MultiPeriodDiscriminator
from .generator import SynthesizerTrn

__all__ = ["MultiPeriodDiscriminator", "SoVITSConfig", "SynthesizerTrn"]
