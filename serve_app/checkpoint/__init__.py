"""A tiny DeepSeek-OCR checkpoint for CPU tests: real config, real tokenizer, seeded weights.
May import: serve_app.errors, core, config, telemetry."""
