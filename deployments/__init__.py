"""Ray Serve glue: one thin deployment per stage, and the application builder."""
