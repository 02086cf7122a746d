"""The control plane: durable registry (SQL), REST admin API, gRPC for region agents."""
