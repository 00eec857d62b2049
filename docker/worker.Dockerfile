# syntax=docker/dockerfile:1.7
# The inference worker (`percept worker`) for NVIDIA GPUs. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t percept-worker .
# It runs on the CPU when no GPU is visible (PERCEPT_DEVICE=auto), but a CPU-only host is better served by the
# much smaller docker/api.Dockerfile image (CPU torch), which is what docker-compose.yml's `worker-cpu` uses.
#
# Base: CUDA's `base` flavour (driver hooks for the NVIDIA container toolkit, no libraries). The torch==2.14.1
# +cu130 wheels bring their own CUDA 13.0 runtime and cuDNN as pip packages (nvidia-cudnn-cu13, cuda-toolkit),
# so a `cudnn-runtime` base would only add a second copy (~2 GB); pass --build-arg CUDA_IMAGE=... to use one.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu22.04
# uv, for a standalone CPython 3.11 (Ubuntu 22.04 ships 3.10) and fast installs.
FROM ghcr.io/astral-sh/uv:0.11.7 AS uv

FROM ${CUDA_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The same uid as the other percept images (the `models` volume is shared); /models as in api.Dockerfile.
RUN groupadd --system --gid 10001 percept \
 && useradd --system --uid 10001 --gid percept --create-home --home-dir /home/percept \
        --shell /usr/sbin/nologin percept \
 && mkdir -p /models \
 && chown percept:percept /models \
 && uv venv --python 3.11.11 /opt/venv

# Dependencies before the source (this layer changes with pyproject.toml only): torch and torchvision at
# pyproject's pins from the CUDA 13.0 index (the build the project is developed and benchmarked with), then the rest.
COPY pyproject.toml /tmp/build/pyproject.toml
RUN python -c "import tomllib; project = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > /tmp/build/requirements.txt \
 && grep -E '^torch(vision)?==' /tmp/build/requirements.txt > /tmp/build/torch.txt \
 && uv pip install --index-url "$TORCH_INDEX" -r /tmp/build/torch.txt \
 && uv pip install -r /tmp/build/requirements.txt \
 && rm -rf /tmp/build

# The package, non-editable (built-in models included); the context is bind-mounted, not copied into a layer.
RUN --mount=type=bind,target=/src,rw uv pip install --no-deps /src

# The percept user by number (a runtime can then check it is not root without reading /etc/passwd).
USER 10001:10001
WORKDIR /home/percept

# All settings come from the environment (worker/settings.py): REDIS_URL (required), PERCEPT_DEVICE,
# PERCEPT_MAX_BATCH_SIZE, PERCEPT_MEMORY_BUDGET_MB ...
ENV MODEL_STORE=/models \
    PERCEPT_DEVICE=auto

# The worker has no HTTP port. Its health is its heartbeat: every PERCEPT_HEARTBEAT_S (2 s) between batches it
# writes {last_seen, ...} to the Redis hash `percept:workers` under the id "<hostname>-<pid>-<n>", and the
# hostname is the container's. Healthy = this container's newest heartbeat is under 30 s old, which catches a
# hung worker or one cut off from Redis, not just a dead process (that one ends the container anyway). The
# heartbeat comes every PERCEPT_HEARTBEAT_S from a keep-alive thread of its own (with `ready: false` while the
# models load, `busy` during a job), so a long batch (a large tiled image on the CPU) never makes it stale.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import json, os, socket, time, redis; r = redis.Redis.from_url(os.environ.get('REDIS_URL') or os.environ['PERCEPT_REDIS_URL'], socket_timeout=5); me = socket.gethostname() + '-'; seen = [json.loads(v)['last_seen'] for k, v in r.hgetall('percept:workers').items() if k.decode().startswith(me)]; raise SystemExit(0 if seen and time.time() - max(seen) < 30 else 1)"]

# SIGTERM (docker stop) finishes the batch in hand, then exits.
CMD ["percept", "worker"]
