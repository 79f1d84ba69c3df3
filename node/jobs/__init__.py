"""Jobs: creation on completion (creation.py), the durable queue (queue.py), the worker (worker.py)."""
