"""Elastic capacity: the autoscaling policy, the global GPU budget and the controller."""
