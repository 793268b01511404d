"""The engine on vLLM: one ``AsyncLLM`` running DeepSeek-OCR through our model plugin."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from serve_app.config import EngineConfig
from serve_app.core.prompts import IMAGE_PLACEHOLDER
from serve_app.core.tiling import PreparedImage
from serve_app.engine.hardware import (
    DType,
    DTypeChoice,
    choose_dtype,
    probe_hardware,
    reserved_cpu_cores,
)
from serve_app.engine.plugin import ARCHITECTURES
from serve_app.engine.protocol import FinishReason, GenerateRequest, GenerateUpdate
from serve_app.engine.source import resolve_model
from serve_app.errors import (
    EngineCrashedError,
    EngineUnavailableError,
    GenerationError,
    InvalidInputError,
    NotReadyError,
)
from serve_app.telemetry import tracing

NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
STEP_TIMEOUT_ENV = "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"
RESERVED_CORES_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
BATCH_PRIORITY = 1  # a job's page; lower runs first

logger = logging.getLogger("ray.serve")


def engine_args(config: EngineConfig, model_path: str, dtype: DType) -> Any:
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
        kv_cache_memory_bytes=config.resolved_kv_cache_bytes,
        enforce_eager=config.resolved_enforce_eager,
        max_num_batched_tokens=config.resolved_max_num_batched_tokens,
        dtype=dtype,
        seed=config.seed,
        logits_processors=[NGRAM_PROCESSOR] if config.sampling.ngram_size else None,
        disable_log_stats=True,  # vLLM's periodic stats lines; its metrics are stat_loggers
        otlp_traces_endpoint=tracing.otlp_traces_endpoint(),
        # Requests' pages (priority 0) are scheduled before jobs' (1) and, when the KV cache
        # is short, a job's page is preempted first.
        scheduling_policy="priority",
    )


def prepare_engine(config: EngineConfig) -> tuple[Any, DTypeChoice]:
    """Engine arguments with the dtype this machine does well; sets the step timeout and logs
    every setting (call it in the process that then starts the engine)."""
    model_path = resolve_model(config.model, config.family)
    dtype = choose_dtype(config.dtype, probe_hardware("cpu" if config.profile == "cpu" else "cuda"))
    # Read by vLLM's engine-core process, which inherits this environment when it starts.
    os.environ[STEP_TIMEOUT_ENV] = str(round(config.resolved_step_timeout_s))
    if tracing.otlp_traces_endpoint():  # vLLM's exporter would default to gRPC
        os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", tracing.otlp_protocol())
    if config.profile == "cpu":
        reserved = reserved_cpu_cores(config.cpu_reserved_cores, len(os.sched_getaffinity(0)))
        if reserved is not None:
            os.environ[RESERVED_CORES_ENV] = str(reserved)
    args = engine_args(config, str(model_path), dtype.dtype)
    logger.info(
        "Starting vLLM engine: model=%s (%s) family=%s profile=%s dtype=%s (%s) "
        "max_model_len=%d max_num_seqs=%d max_num_batched_tokens=%s step_timeout_s=%s "
        "kv_cache=%s gpu_memory_utilization=%.2f enforce_eager=%s cpu_reserved_cores=%s "
        "otlp_traces_endpoint=%s",
        config.model, model_path, config.family.value, config.profile, dtype.dtype,
        dtype.reason, config.max_model_len, args.max_num_seqs,
        args.max_num_batched_tokens or "vLLM default", os.environ[STEP_TIMEOUT_ENV],
        f"{args.kv_cache_memory_bytes / 2**30:g} GiB" if args.kv_cache_memory_bytes else "auto",
        args.gpu_memory_utilization, args.enforce_eager,
        os.environ.get(RESERVED_CORES_ENV, "vLLM default"), args.otlp_traces_endpoint or "-",
    )  # fmt: skip
    return args, dtype


class VLLMEngine:
    """Implements :class:`serve_app.engine.protocol.OCREngine` with vLLM's ``AsyncLLM``."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._llm: Any = None
        self.dtype: DTypeChoice | None = None
        self._whitelist: list[int] = []
        self._prompt_text_tokens: dict[str, int] = {}

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        args, self.dtype = prepare_engine(self._config)
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=self._stat_loggers())
        tokenizer = self._llm.get_tokenizer()
        vocab = tokenizer.get_vocab()
        self._whitelist = [vocab[t] for t in self._config.sampling.ngram_whitelist if t in vocab]

    def _stat_loggers(self) -> list[Any] | None:
        """vLLM's Prometheus metrics through Ray's metrics API, in a Ray worker (plain
        ``prometheus_client`` metrics would never reach Ray's endpoint)."""
        import ray

        if not (self._config.vllm_metrics and ray.is_initialized()):
            return None
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        return [RayPrometheusStatLogger]

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
        image_tokens = getattr(request.image, "num_image_tokens", 0)
        return self._prompt_text_tokens[text] + image_tokens

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
        if self._llm is not None and self._llm.errored:  # the page never ran here
            raise EngineUnavailableError("the vLLM engine has died; this replica is replaced")
        if not self.is_ready():
            raise NotReadyError("the engine is not ready")
        from vllm.v1.engine.exceptions import EngineDeadError

        from serve_app.engine.model import pretiled_item

        if not request.prompt.startswith(IMAGE_PLACEHOLDER):
            raise InvalidInputError("the prompt must start with the <image> placeholder")
        if not isinstance(request.image, PreparedImage):
            raise InvalidInputError("DeepSeek-OCR reads tiled views, not the page's pixels")
        params = self.sampling_params(request)
        prompt = {
            "prompt": request.prompt,
            "multi_modal_data": {"image": pretiled_item(request.image)},
        }
        stream = self._llm.generate(
            prompt,
            params,
            request_id=request.request_id,
            trace_headers=request.trace_headers or None,
            priority=BATCH_PRIORITY if request.batch else 0,
        )
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
                    queued_s=_queued_seconds(output) if output.finished else None,
                )
        except EngineDeadError as exc:
            raise EngineCrashedError(f"the vLLM engine died: {exc}") from None
        except ValueError as exc:
            raise InvalidInputError(f"the engine rejected the request: {exc}") from None
        except (RuntimeError, OSError) as exc:
            raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from None


def _queued_seconds(output: Any) -> float | None:
    """How long vLLM held the request before its first step (known when stats are on)."""
    stats = getattr(output, "metrics", None)
    queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
    return float(scheduled - queued) if queued and scheduled else None
