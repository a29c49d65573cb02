"""Training: backends behind one protocol (deepspeed.py, torch.py), the per-rank worker, the Ray group, checkpoints."""
