"""The HTTP edge: decode, authorize, call the engine, encode."""
