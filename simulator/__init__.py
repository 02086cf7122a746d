"""The fleet simulator: replays real traffic on real latency data through router policies."""
