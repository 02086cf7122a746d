"""Region agent: reports GPU and worker health over gRPC, runs the workers it is told to."""
