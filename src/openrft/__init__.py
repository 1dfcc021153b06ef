"""OpenRFT: reinforcement fine-tuning of LoRA adapters from a handful of prompts."""

__version__ = "0.1.0"
