"""The engine seam: a small protocol, the vLLM implementation and a fake."""

from __future__ import annotations

from serve_app.config import EngineConfig
from serve_app.engine.protocol import OCREngine


def make_engine(config: EngineConfig, replica_rank: int = 0) -> OCREngine:
    """The engine ``config.kind`` names; vLLM is imported only for ``kind: vllm``.

    ``replica_rank`` (the Serve replica's rank) only staggers the fake engine's start.
    """
    if config.kind == "fake":
        from serve_app.engine.fake import FakeEngine

        return FakeEngine(config.fake, config.sampling, replica_rank)
    from serve_app.engine.vllm_engine import VLLMEngine

    return VLLMEngine(config)
