"""Training (floor 4): backends behind one protocol (deepspeed.py, torch.py), the per-rank actor shell (worker.py)
over pure step functions (steps.py) and weight export (export.py), its settings (settings.py), the Ray group
(group.py), checkpoints."""
