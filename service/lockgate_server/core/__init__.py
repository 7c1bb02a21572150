"""The pure core: state machines per object kind and the shard state that holds them.

Nothing in this package does I/O, reads a clock or draws random numbers.
"""
