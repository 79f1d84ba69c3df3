"""Jobs: creation on completion (planning.py), the durable queue (queue.py), the worker (worker.py)."""
