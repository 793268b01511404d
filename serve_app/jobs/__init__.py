"""Jobs: a document submitted now, run outside any HTTP request, each page stored as it ends.
May import: serve_app.errors, core, config, telemetry, checkpoint, engine, documents."""
