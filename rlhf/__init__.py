"""rlhf: LLM post-training (RLHF / RLVR / preference optimisation) with a named multi-reward vector."""

__version__ = "0.1.0"
