"""Traces, metrics and log context: what an operator sees of the service.
May import: serve_app.errors, core, config."""
