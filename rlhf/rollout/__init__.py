"""Rollout engines behind one protocol (base.py): hf.py (transformers generate); the Ray actor group (group.py)."""
