"""The fleet simulator: real traffic on real latency data through the router's own policies."""
