"""The engine on vLLM: one ``AsyncLLM`` running DeepSeek-OCR through our model plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from serve_app.config import EngineConfig
from serve_app.core.prompts import IMAGE_PLACEHOLDER
from serve_app.engine.plugin import ARCHITECTURES
from serve_app.engine.protocol import FinishReason, GenerateRequest, GenerateUpdate
from serve_app.engine.source import resolve_model
from serve_app.errors import GenerationError, InvalidInputError, NotReadyError

NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"


def engine_args(config: EngineConfig, model_path: str) -> Any:
    """``AsyncEngineArgs`` for the config: the plugin model, caches off, profile defaults."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model_path,
        hf_overrides={"architectures": [ARCHITECTURES[config.family]]},
        enable_mm_embeds=True,
        limit_mm_per_prompt={"image": 1},
        # Pages are unique: prefix and processor caches would only cost hashing and memory.
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        skip_mm_profiling=config.profile == "cpu",
        max_model_len=config.max_model_len,
        max_num_seqs=config.resolved_max_num_seqs,
        gpu_memory_utilization=config.resolved_gpu_memory_utilization,
        enforce_eager=config.resolved_enforce_eager,
        dtype=config.dtype,
        seed=config.seed,
        logits_processors=[NGRAM_PROCESSOR] if config.sampling.ngram_size else None,
        disable_log_stats=True,
    )


class VLLMEngine:
    """Implements :class:`serve_app.engine.protocol.OCREngine` with vLLM's ``AsyncLLM``."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._llm: Any = None
        self._whitelist: list[int] = []
        self._prompt_text_tokens: dict[str, int] = {}

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        model_path = resolve_model(self._config.model, self._config.family)
        self._llm = AsyncLLM.from_engine_args(engine_args(self._config, str(model_path)))
        tokenizer = self._llm.get_tokenizer()
        vocab = tokenizer.get_vocab()
        self._whitelist = [vocab[t] for t in self._config.sampling.ngram_whitelist if t in vocab]

    def is_ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def num_unfinished(self) -> int:
        if self._llm is None:
            return 0
        return int(self._llm.output_processor.get_num_unfinished_requests())

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def _prompt_length(self, request: GenerateRequest) -> int:
        """Prompt tokens: BOS + the text around the placeholder + the image run."""
        text = request.prompt
        if text not in self._prompt_text_tokens:
            ids = self._llm.get_tokenizer().encode(text.replace(IMAGE_PLACEHOLDER, ""))
            self._prompt_text_tokens[text] = len(ids)
        return self._prompt_text_tokens[text] + request.image.num_image_tokens

    def sampling_params(self, request: GenerateRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = self._config.sampling
        room = self._config.max_model_len - self._prompt_length(request)
        if room < 1:
            raise InvalidInputError(
                f"the prompt takes {self._prompt_length(request)} tokens; the context "
                f"window is {self._config.max_model_len}"
            )
        extra_args = None
        if sampling.ngram_size:
            extra_args = {
                "ngram_size": sampling.ngram_size,
                "window_size": sampling.ngram_window,
                "whitelist_token_ids": self._whitelist,
            }
        temperature = sampling.temperature if request.temperature is None else request.temperature
        return SamplingParams(
            temperature=temperature,
            max_tokens=min(request.max_tokens or sampling.max_tokens, room),
            skip_special_tokens=False,
            logprobs=0 if request.logprobs else None,
            seed=self._config.seed if temperature > 0 else None,
            extra_args=extra_args,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateUpdate]:
        if not self.is_ready():
            raise NotReadyError("the engine is not ready")
        from serve_app.engine.model import pretiled_item

        if not request.prompt.startswith(IMAGE_PLACEHOLDER):
            raise InvalidInputError("the prompt must start with the <image> placeholder")
        params = self.sampling_params(request)
        prompt = {
            "prompt": request.prompt,
            "multi_modal_data": {"image": pretiled_item(request.image)},
        }
        stream = self._llm.generate(prompt, params, request_id=request.request_id)
        completion_tokens = 0
        try:
            async for output in stream:
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                logprobs = None
                if request.logprobs and completion.logprobs is not None:
                    logprobs = tuple(
                        entry[token].logprob
                        for token, entry in zip(
                            completion.token_ids, completion.logprobs, strict=True
                        )
                    )
                finish: FinishReason | None = None
                if output.finished:
                    reason = completion.finish_reason
                    finish = reason if reason in ("stop", "length") else "abort"
                yield GenerateUpdate(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    logprobs=logprobs,
                    finish_reason=finish,
                    prompt_tokens=len(output.prompt_token_ids or ()),
                    completion_tokens=completion_tokens,
                )
        except ValueError as exc:
            raise InvalidInputError(f"the engine rejected the request: {exc}") from None
        except (RuntimeError, OSError) as exc:
            raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from None
