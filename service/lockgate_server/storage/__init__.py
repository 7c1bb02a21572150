"""Redis/Valkey: the embedded server and the fenced shard log."""
