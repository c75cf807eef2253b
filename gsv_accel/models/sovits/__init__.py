"""SoVITS (stage 2) models: the generator `SynthesizerTrn`, its discriminator and their config; the
v3/v4 flow-matching generator `SynthesizerTrnV3` and its config."""

from .config import SoVITSConfig, SoVITSV3Config
from .discriminator import MultiPeriodDiscriminator
from .generator import SynthesizerTrn
from .generator_v3 import SynthesizerTrnV3, V3TrainOutput

__all__ = ["MultiPeriodDiscriminator", "SoVITSConfig", "SoVITSV3Config", "SynthesizerTrn", "SynthesizerTrnV3",
           "V3TrainOutput"]
