"""The Muster agent and CLI: one agent per machine serves queues; `muster` talks to the server.

This package imports no Django and runs on Python 3.10 and later; it installs alone
(`pip install ./agent`) with psutil, and optionally nvidia-ml-py (GPUs) and rich (tables).
"""

__version__ = "0.1.0"
# The muster_agent/server protocol; the server answers 426 when an agent is too old.
PROTOCOL = 1
