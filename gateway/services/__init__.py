"""gRPC service implementations; each converts between protobuf messages and domain objects."""
