"""Serving: ``reward_server`` runs a recipe's reward components behind an HTTP API (``rlhf serve-rewards``) for
trainers that score through the ``remote`` reward plugin (``rewards/remote.py``). Standard library only."""
