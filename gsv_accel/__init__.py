"""gsv_accel: GPT-SoVITS training on Hugging Face Accelerate."""

__version__ = "0.1.0"
