"""memrl: Memory-R+ reinforcement learning for small language models."""

__version__ = "0.1.0"
