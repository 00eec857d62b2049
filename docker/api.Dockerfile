# syntax=docker/dockerfile:1.7
# The HTTP API (`percept serve`), CPU only. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t percept-api .
# docker-compose.yml also runs this image as the CPU worker (`worker-cpu`: `percept worker`, started by plain
# `docker compose up`) and as the one-shot `models-init` that seeds the model-store volume: it holds the whole
# package, with CPU torch.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid shared by every percept image, so the `models` volume is writable from all of them. /models exists
# in the image, owned by that user: Docker copies its ownership into a new named volume mounted there.
RUN groupadd --system --gid 10001 percept \
 && useradd --system --uid 10001 --gid percept --create-home --home-dir /home/percept \
        --shell /usr/sbin/nologin percept \
 && mkdir -p /models \
 && chown percept:percept /models

# Dependencies before the source, so editing code does not reinstall them (this layer changes with pyproject.toml).
# The API process imports no torch (docker/README.md), but this image is also the CPU worker and runs embedded
# mode, which do. It gets the CPU wheels, from PyTorch's CPU index (a few hundred MB instead of the CUDA build's
# GBs); the pins are pyproject's (torch==, torchvision==), and `+cpu` builds satisfy them, so the second install
# keeps them.
COPY pyproject.toml /tmp/build/pyproject.toml
RUN python -c "import tomllib; project = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > /tmp/build/requirements.txt \
 && grep -E '^torch(vision)?==' /tmp/build/requirements.txt > /tmp/build/torch.txt \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu -r /tmp/build/torch.txt \
 && pip install --no-cache-dir -r /tmp/build/requirements.txt \
 && rm -rf /tmp/build

# The package itself, non-editable (the built-in models are package data). The build context is bind-mounted, so
# the source tree adds no layer of its own; .dockerignore keeps tests, docs and local state out of it.
RUN --mount=type=bind,target=/src,rw pip install --no-cache-dir --no-deps /src

# The percept user by number (a runtime can then check it is not root without reading /etc/passwd).
USER 10001:10001
WORKDIR /home/percept

# All settings come from the environment (service/settings.py): REDIS_URL, PERCEPT_API_KEY, PERCEPT_QUEUE_MAX ...
# Without REDIS_URL the API runs embedded (an in-process worker), which also works in this image.
ENV PERCEPT_HOST=0.0.0.0 \
    PERCEPT_PORT=8000 \
    MODEL_STORE=/models
EXPOSE 8000

# Liveness: GET /healthz (no curl in the slim image, so Python's urllib; a non-2xx answer raises).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PERCEPT_PORT', '8000'), timeout=4)"]

CMD ["percept", "serve"]
