"""Pure functions: modes, tiling, prompts, grounding, markdown, PDF pages, text lines, addresses.
May import: serve_app.errors only; never Ray, vLLM, FastAPI or torch."""
