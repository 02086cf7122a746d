"""Code shared by every Meridian process: errors, the routing snapshot, the CLI."""

__version__ = "0.1.0"
