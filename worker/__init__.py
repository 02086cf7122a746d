"""Inference worker: Open Inference Protocol v2 over REST and gRPC with dynamic batching."""
