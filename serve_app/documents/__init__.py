"""A document run: options at the door, messages, stages, pipeline, quarantine, sources, results.
May import: serve_app.errors, core, config, telemetry, checkpoint, engine; no Ray and no HTTP."""
