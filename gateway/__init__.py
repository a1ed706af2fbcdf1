"""The Tongban gateway: the gRPC server, caller authentication, configuration and the CLI."""
