"""vLLM plugin entry point (``vllm.general_plugins``): registers our DeepSeek-OCR model class.

vLLM calls :func:`register` in every process it starts, the engine core included, which is
why registration goes through an entry point rather than an in-process call. The model
module is named lazily, so processes that never build the model do not import it.
"""

from __future__ import annotations

ARCHITECTURE = "DeepseekOCRServeForCausalLM"
MODEL_CLASS = "serve_app.engine.model:DeepseekOCRServeForCausalLM"


def register() -> None:
    """Make :data:`ARCHITECTURE` known to vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
