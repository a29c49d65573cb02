"""Advantage estimators (pure torch): group-relative normalisation now; GAE and process-step advantages later."""

from rlhf.advantages.group import group_normalize, group_stats

__all__ = ["group_normalize", "group_stats"]
