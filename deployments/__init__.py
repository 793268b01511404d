"""Ray Serve glue: one thin deployment per stage, the ingress, handle-backed stages, build_app.
May import: serve_app's layers up to api; with tooling and testing, the only code importing Ray."""
