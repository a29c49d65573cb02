"""Rollout (floor 4): engines behind one protocol (base.py; hf.py, vllm.py), their Ray actor group (group.py) and
the rollout functions (functions.py), the only callers of the engines' generation."""
