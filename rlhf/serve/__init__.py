"""Serving: ``reward_server`` runs a recipe's reward components behind an HTTP API (``rlhf serve-rewards``) for
trainers that score through the ``remote`` reward plugin (``rewards/remote.py``). It scores through the in-process
``RewardGroup`` of ``rlhf.scoring``; the HTTP side is standard library only."""
