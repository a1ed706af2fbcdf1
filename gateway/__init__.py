"""The Tongban gateway: the gRPC server, caller authentication, configuration and the CLI."""

from gateway.logs import scrub_grpc_trace

# Before anything imports grpc: its core reads GRPC_TRACE once, as it loads, and the tracers
# print every request header (the bearer token too) to stderr. See gateway/logs/.
scrub_grpc_trace()
