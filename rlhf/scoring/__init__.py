"""Scoring (floor 4): reward workers as Ray actors (or threads), per-component timeouts and failure isolation,
the named reward vector of a batch. ``RewardGroup`` is the one scoring path: the trainer's stages and the reward
server both use it."""
