"""Protocol sources (``*.proto``) and their generated, committed Python stubs."""
