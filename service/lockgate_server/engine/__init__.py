"""Sequencing, group commit and the output gate: the shards a node owns, on one event loop."""
