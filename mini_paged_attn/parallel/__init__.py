"""Tensor parallelism: the process group (group.py), the driver's worker
processes (workers.py, worker.py) and the cache state they mirror (cache_sync.py)."""
