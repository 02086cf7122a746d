"""The fleet simulator: replays real traffic on real latency data through the router's own policies."""
