"""The engine seam: a small protocol, the vLLM and rapidocr engines and a fake; one page each.
May import: serve_app.errors, core, config, telemetry, checkpoint; only here is vLLM imported."""

from __future__ import annotations

from serve_app.config import EngineConfig
from serve_app.engine.protocol import OCREngine


def make_engine(config: EngineConfig, replica_rank: int = 0) -> OCREngine:
    """The engine ``config.kind`` names; vLLM (or rapidocr) is imported only for its kind.

    ``replica_rank`` (the Serve replica's rank) only staggers the fake engine's start.
    """
    if config.kind == "fake":
        from serve_app.engine.fake import FakeEngine

        return FakeEngine(config.fake, config.sampling, replica_rank)
    if config.kind == "rapidocr":
        from serve_app.engine.rapid import RapidOCREngine

        return RapidOCREngine(config.rapidocr)
    from serve_app.engine.vllm_engine import VLLMEngine

    return VLLMEngine(config)
