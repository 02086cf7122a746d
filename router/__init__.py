"""The geo-aware router: the end-user endpoint that picks the region answering soonest."""
