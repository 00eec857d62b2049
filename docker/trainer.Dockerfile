# syntax=docker/dockerfile:1.7
# The training worker: an RQ worker on the `percept-training` queue (trainer/jobs.py), on an NVIDIA GPU.
# Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t percept-trainer .
# Runs are queued with `percept train style|sr ... --queue` (REDIS_URL set), from any machine or with
#   docker compose --profile train run --rm trainer percept train style --style-image /data/styles/x.jpg --name x --queue
# The image also runs a training directly: `docker run ... percept-trainer percept train ...`.
#
# Everything up to the source install is the same as docker/worker.Dockerfile, so the two share those layers in
# the build cache; see there for the base image and Python choices.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu22.04
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

RUN groupadd --system --gid 10001 percept \
 && useradd --system --uid 10001 --gid percept --create-home --home-dir /home/percept \
        --shell /usr/sbin/nologin percept \
 && mkdir -p /models \
 && chown percept:percept /models \
 && uv venv --python 3.11.11 /opt/venv

COPY pyproject.toml /tmp/build/pyproject.toml
RUN python -c "import tomllib; project = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > /tmp/build/requirements.txt \
 && grep -E '^torch(vision)?==' /tmp/build/requirements.txt > /tmp/build/torch.txt \
 && uv pip install --index-url "$TORCH_INDEX" -r /tmp/build/torch.txt \
 && uv pip install -r /tmp/build/requirements.txt \
 && rm -rf /tmp/build

RUN --mount=type=bind,target=/src,rw uv pip install --no-deps /src

# Runs (checkpoints, previews, logs) go to /runs, a volume; the data is mounted read-only at /data in the layout
# of ../shared/data (weights/, train/, content/, styles/).
RUN mkdir -p /runs /data \
 && chown percept:percept /runs

# The percept user by number (a runtime can then check it is not root without reading /etc/passwd).
USER 10001:10001
WORKDIR /home/percept

# All settings come from the environment (trainer/settings.py); `--publish` writes to MODEL_STORE.
ENV MODEL_STORE=/models \
    PERCEPT_RUNS=/runs \
    PERCEPT_DATA=/data/train \
    PERCEPT_PREVIEW_DIR=/data/content \
    PERCEPT_VGG_WEIGHTS=/data/weights/vgg16_relu4_3.safetensors

# Healthy = an RQ worker of this container (RQ records the hostname) is registered in Redis; RQ drops a worker's
# registration once its heartbeat stops (worker TTL), so this also catches a hung worker or a lost Redis.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, socket, redis; from rq import Worker; r = redis.Redis.from_url(os.environ['REDIS_URL'], socket_timeout=5); raise SystemExit(0 if any(w.hostname == socket.gethostname() for w in Worker.all(connection=r)) else 1)"]

# One run at a time per container; RQ forks a work horse per job (CUDA is first touched there, never in the
# parent). A shell form only to read REDIS_URL from the environment; exec keeps rq as PID 1 for SIGTERM.
CMD ["sh", "-c", "exec rq worker --url \"$REDIS_URL\" percept-training"]
