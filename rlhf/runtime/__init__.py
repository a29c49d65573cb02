"""Runtime: the controller loop, reward workers, weight sync and actor placement (imports Ray lazily)."""
