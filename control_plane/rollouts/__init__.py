"""Progressive rollouts: a new model version moves through regions in waves of canary
steps, each step gated on the routers' figures against the old version's, and rolls back
by itself when a gate fails (``docs/rollouts.md``)."""
