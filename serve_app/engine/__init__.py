"""The engine seam: a small protocol, the vLLM implementation and a fake."""
