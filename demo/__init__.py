"""The embedded demo: the whole system on one machine, with traffic from world cities."""
