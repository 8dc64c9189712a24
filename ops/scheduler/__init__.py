"""Host-side schedulers (split-KV work partitioning) built by the ninja backend."""
