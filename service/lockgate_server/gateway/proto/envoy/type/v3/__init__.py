"""Generated protobuf package (see lockgate_server/gateway/proto/README.md)."""
