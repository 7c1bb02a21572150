"""Lockgate: durable locks, semaphores, counters and rate limits over HTTP."""

__version__ = "0.1.0"
