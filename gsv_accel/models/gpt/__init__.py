"""GPT (stage 1) model: the text-to-semantic decoder `Text2SemanticDecoder` and its config."""

from .config import GPTConfig
from .model import (
    Generation,
    GPTLightningLayout,
    Text2SemanticDecoder,
    add_model_prefix,
    make_rejected_semantic,
    strip_model_prefix,
    top_k_accuracy,
)

__all__ = [
    "GPTConfig",
    "GPTLightningLayout",
    "Generation",
    "Text2SemanticDecoder",
    "add_model_prefix",
    "make_rejected_semantic",
    "strip_model_prefix",
    "top_k_accuracy",
]
