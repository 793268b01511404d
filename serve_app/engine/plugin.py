"""vLLM plugin entry point (``vllm.general_plugins``): registers our DeepSeek-OCR model class.

vLLM calls :func:`register` in every process it starts, the engine core included, which is
why registration goes through an entry point rather than an in-process call. The model
module is named lazily, so processes that never build the model do not import it.
"""

from __future__ import annotations

from serve_app.core.modes import ModelFamily

ARCHITECTURES = {
    ModelFamily.OCR1: "DeepseekOCRServeForCausalLM",
    ModelFamily.OCR2: "DeepseekOCR2ServeForCausalLM",
}


def register() -> None:
    """Make our architectures known to vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    for name in ARCHITECTURES.values():
        if name not in supported:
            ModelRegistry.register_model(name, f"serve_app.engine.model:{name}")
