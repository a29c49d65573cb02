"""Scoring (floor 4): reward workers as Ray actors (or threads), per-component timeouts and failure isolation,
the named reward vector of a batch. ``RewardGroup`` (``group.py``) is the one scoring path: the trainer's stages and
the reward server (``rlhf/serve``, in-process) both use it; ``backends.py`` runs its components in Ray actors or
threads, ``workers.py`` hosts their scorers and bounds each call by its timeout."""
