"""The Litestar application factory. No module-level state: everything lives in the app that
``create_app`` returns, opened and closed by its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import (
    ASGIApp,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    Scope,
    Send,
)

from gateway import __version__
from gateway.auth import Authenticator
from gateway.config import ConfigError, Settings
from gateway.errors import error_response
from gateway.namespaces import NamespaceResolver
from gateway.plain_chat import is_plain_chat, plain_chat_app
from gateway.routes.health import healthz, readyz
from gateway.routes.health import metrics as metrics_route
from gateway.routes.memories import MEMORY_API
from gateway.routes.memory_calls import MEMORY_CALLS
from gateway.routes.models import list_models
from gateway.routes.passthrough import (
    passthrough,
    passthrough_memory_base,
    passthrough_namespace_base,
    shared_path_routes,
)
from gateway.routes.ui import docs_asset, ui
from gateway.routes.usage import usage_report
from gateway.state import GatewayState, authenticate, get_gateway, get_principal
from gateway.telemetry import Metrics, telemetry_middleware
from gateway.upstream import Router, Upstream
from gateway.usage import UsageLedger
from memory.datadir import HOSTNAME, DataDir, orphans
from memory.embedder import Embedder
from memory.outbox import Outbox
from memory.service import MemoryService
from memory.store import MemoryStore

if TYPE_CHECKING:
    from gateway.mcp import McpEndpoint

log = logging.getLogger("memgate")


def open_store(settings: Settings) -> MemoryStore:
    """The store the settings describe: Chroma, embedded (in a child process of its own with
    ``store.embedded_process``, since its writes hold the GIL) or a server; with the local
    copy of each namespace beside it (listing, and the lexical side of recall with
    ``recall.lexical``), kept in this process."""
    server = bool(settings.store.chroma_url)
    store: MemoryStore
    if server or not settings.store.embedded_process:
        store = open_chroma_store(settings)
    else:
        from memory.process_store import ProcessStore

        store = ProcessStore(
            functools.partial(open_chroma_store, settings),
            lock_path=settings.data_dir / "chroma.lock",
        )
    from memory.hybrid import HybridStore
    from memory.local_copy import LocalCopy

    recall = settings.recall
    try:
        # The one file of every namespace's index, before each namespace got its own: derived
        # data, rebuilt a namespace at a time from the store.
        for old in ("lexical.sqlite3", "lexical.sqlite3-wal", "lexical.sqlite3-shm"):
            (settings.data_dir / old).unlink(missing_ok=True)
        copy = LocalCopy(
            settings.data_dir / "index",
            pair_gap=recall.pair_gap_seconds,
            pair_weight=recall.pair_weight,
            max_open=settings.store.open_namespaces,
            postings_bytes=settings.store.postings_memory_mb << 20,
            vectors_bytes=settings.store.vectors_memory_mb << 20,
        )
    except BaseException:
        store.close()  # do not leave a store process behind
        raise
    return HybridStore(
        store,
        copy,
        lexical_recall=recall.lexical,
        shared=server,
        sync_interval=settings.store.sync_interval_seconds,
        sync_margin=settings.store.sync_margin_seconds,
    )


def open_chroma_store(settings: Settings) -> MemoryStore:
    """Chroma alone, as the settings describe it (picklable: a child process calls it)."""
    from memory.chroma import ChromaStore

    return ChromaStore(
        url=settings.store.chroma_url or None,
        path=None if settings.store.chroma_url else settings.data_dir / "chroma",
        prefix=settings.store.collection_prefix,
        cache_size=settings.store.cache_size,
        vector_cache=settings.store.vector_cache,
    )


def adopt_orphans(settings: Settings, outbox: Outbox) -> int:
    """Move the queued writes of replaced gateways (sibling ``{hostname}`` data dirs nobody
    holds) into this gateway's queue; how many moved."""
    moved = 0
    with orphans(settings.store.data_dir, settings.data_dir) as queues:
        for queue in queues:
            count = outbox.adopt(queue)
            if count:
                log.warning("adopted %d queued writes of a gone gateway from %s", count, queue)
            moved += count
    return moved


async def keep_adopting(settings: Settings, service: MemoryService, every: float = 60.0) -> None:
    """Look for replaced gateways' queues now and then (a replica may stop after this one
    started)."""
    while True:
        await asyncio.sleep(every)
        try:
            with orphans(settings.store.data_dir, settings.data_dir) as queues:
                moved = await service.adopt(queues)
            if moved:
                log.warning("adopted %d queued writes of gateways that are gone", moved)
        except Exception as exc:
            log.warning("could not adopt the queues of gone gateways: %s", exc)


def open_embedder(settings: Settings) -> Embedder:
    from memory.embedder import OnnxEmbedder, SentenceTransformerEmbedder

    conf = settings.embedder
    if conf.backend == "onnx":
        return OnnxEmbedder(
            conf.model_path or None,
            threads=conf.threads,
            int8=conf.int8,
            cache_dir=conf.cache_dir or None,
        )
    if conf.backend == "torch":
        return SentenceTransformerEmbedder(
            conf.model_path or None, device=conf.device, threads=conf.threads
        )
    raise ConfigError(f"embedder.backend must be 'onnx' or 'torch', not {conf.backend!r}")


class Gateway(Litestar):
    """Litestar, behind the one way into the app every request takes (``entry``: telemetry
    around the dispatch), with the plain chat pass-through answered before Litestar's
    routing (``gateway.plain_chat``); authentication is the app's guard for both
    (``gateway.state.authenticate``)."""

    plain_chat: ASGIApp
    entry: ASGIApp

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        await self.entry(scope, receive, send)  # type: ignore[arg-type]

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_plain_chat(scope):
            scope["app"] = scope["litestar_app"] = self
            scope.setdefault("state", {})
            await self.plain_chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def open_gateway(
    settings: Settings,
    metrics: Metrics,
    *,
    store: MemoryStore | None = None,
    embedder: Embedder | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    outbox_path: str | Path | None = None,
) -> AsyncIterator[GatewayState]:
    """The gateway's parts, opened in order (the data dir's lock, the store, the model, the
    write queue and its writer, the upstreams, the usage ledger) and closed in the reverse
    order when the context ends, or when one of them fails to open (a store process is never
    left behind). ``store`` and ``embedder``, when given, are the caller's to close."""
    async with contextlib.AsyncExitStack() as parts:
        parts.callback(log.info, "memgate stopped")
        data_dir = DataDir(settings.data_dir)
        parts.callback(data_dir.release)
        if outbox_path is None:
            await asyncio.to_thread(data_dir.claim)  # DataDirInUse: a clear stop
        opened_store = store if store is not None else await asyncio.to_thread(open_store, settings)
        if store is None:  # ours: closed here
            parts.push_async_callback(asyncio.to_thread, opened_store.close)
        loaded = (
            embedder if embedder is not None else await asyncio.to_thread(open_embedder, settings)
        )
        outbox = await asyncio.to_thread(
            Outbox, outbox_path or settings.data_dir / "outbox.sqlite3"
        )
        parts.push_async_callback(asyncio.to_thread, outbox.close)
        adopted = await asyncio.to_thread(adopt_orphans, settings, outbox)
        service = MemoryService(
            opened_store,
            loaded,
            outbox,
            recall=settings.recall,
            writer_batch=settings.queue.batch_size,
            writer_coalesce=settings.queue.coalesce_ms / 1000.0,
            embed_batch=settings.embedder.max_batch,
            embed_concurrency=settings.embedder.concurrency,
            shared=bool(settings.store.chroma_url),
        )
        parts.push_async_callback(service.close, settings.server.shutdown_flush_seconds)
        router = Router(
            [
                Upstream(u, transport=transport, name=u.name, on_error=metrics.upstream_errors.inc)
                for u in settings.all_upstreams()
            ],
            on_retry=metrics.upstream_retries.inc,
            on_fallback=metrics.upstream_fallbacks.inc,
        )
        parts.push_async_callback(router.aclose)
        usage = await asyncio.to_thread(
            UsageLedger,
            settings.data_dir,
            template=settings.store.data_dir,
            on_tokens=lambda key, model, kind, n: metrics.tokens.inc(key, model, kind, amount=n),
        )
        parts.push_async_callback(usage.close)
        gw = GatewayState(
            settings=settings,
            service=service,
            router=router,
            auth=Authenticator(settings),
            metrics=metrics,
            namespaces=NamespaceResolver(
                settings.server.namespace_sources,
                settings.server.default_namespace,
                keys=bool(settings.keys),
            ),
            usage=usage,
            ready=True,
        )
        metrics.gauge("memgate_queue_depth", "Memories waiting in the write queue", outbox.depth)
        metrics.counter_function(
            "memgate_memories_written",
            "Memories the writer stored since start",
            lambda: float(service.written),
        )
        metrics.gauge(
            "memgate_ready",
            "1 when /readyz answers 200 (its checks are run at each scrape)",
            lambda: float(gw.ready_seen),
        )
        usage.start()
        queued = await asyncio.to_thread(outbox.depth)
        service.start()
        if HOSTNAME in settings.store.data_dir:
            adopting = asyncio.create_task(keep_adopting(settings, service), name="memgate-adopt")
            parts.callback(adopting.cancel)
        log.info(
            "memgate ready on http://%s:%d (store: %s, upstream: %s, queued writes replayed: %d%s)",
            settings.server.host,
            settings.server.port,
            settings.store.chroma_url or settings.data_dir / "chroma",
            settings.upstream.url,
            queued,
            f", of them adopted from replaced gateways: {adopted}" if adopted else "",
        )
        try:
            yield gw
        finally:
            gw.ready = False


def create_app(
    settings: Settings,
    *,
    store: MemoryStore | None = None,
    embedder: Embedder | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    outbox_path: str | Path | None = None,
) -> Litestar:
    """Build the gateway. ``store``, ``embedder`` and ``transport`` (for the upstream httpx
    client) replace the real ones, for tests and embedding in other programs."""

    metrics = Metrics()
    mcp: McpEndpoint | None = None
    if settings.mcp.enabled:  # the SDK takes half a second to import
        from gateway.mcp import McpEndpoint

        mcp = McpEndpoint(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        opened = open_gateway(
            settings,
            metrics,
            store=store,
            embedder=embedder,
            transport=transport,
            outbox_path=outbox_path,
        )
        async with opened as gw:
            app.state["gateway"] = gw
            async with mcp.running() if mcp is not None else contextlib.nullcontext():
                yield

    app = Gateway(
        route_handlers=[
            *MEMORY_CALLS,
            list_models,
            passthrough,
            passthrough_memory_base,
            passthrough_namespace_base,
            *shared_path_routes(),
            MEMORY_API,
            usage_report,
            healthz,
            metrics_route,
            readyz,
            ui,
            docs_asset,
            *([mcp.route()] if mcp is not None else []),
        ],
        dependencies={
            "gw": Provide(get_gateway, sync_to_thread=False),
            "principal": Provide(get_principal, sync_to_thread=False),
        },
        guards=[authenticate],
        exception_handlers={Exception: error_response},
        lifespan=[lifespan],
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="memgate",
            version=__version__,
            description="An OpenAI-compatible chat gateway with long-term memory.",
            path="/docs",
            # Swagger UI from the package's own files: /docs works without a network
            render_plugins=[
                SwaggerRenderPlugin(
                    path=["/", "/swagger"],
                    js_url="/docs/assets/swagger-ui-bundle.js",
                    css_url="/docs/assets/swagger-ui.css",
                    standalone_preset_js_url="/docs/assets/swagger-ui-standalone-preset.js",
                    favicon="",
                )
            ],
        ),
        # Logging is the host program's business (``memgate serve`` sets it up): Litestar's
        # default queue handler would lose the last records when the process exits on SIGTERM.
        logging_config=None,
        debug=False,
    )
    app.plain_chat = plain_chat_app(settings.server.max_body_bytes)
    app.entry = telemetry_middleware(metrics)(app.dispatch)
    return app
