"""Weight transport (floor 3): buckets and fingerprints (weights.py), the broadcast group (broadcast.py), CUDA IPC
handles (ipc.py), and where actors go (placement.py). Rollout engines and training ranks both build on it; which
route a run takes, its fallback and its version checks belong to the runtime's sync coordinator."""
