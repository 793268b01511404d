"""Traces, metrics and log context: what an operator sees of the service."""
