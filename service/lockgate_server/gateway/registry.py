"""The policies in force: those of the policy files, and runtime changes that win over them.

Runtime changes (PUT/DELETE /v1/admin/policies/{domain}) are written to the store before
they take effect, so they survive restarts, and other nodes on the same store pick them up
within GATEWAY_POLICY_REFRESH_MS. They live in one small hash outside every shard's keys:

  {lockgate:gateway}:policies   hash  domain -> the policy as JSON (our own format)
  {lockgate:gateway}:version    int   bumped with every change (nodes poll it)

Both share one hash tag, so a change is one MULTI even on a Redis Cluster, and a refresh reads
both in one MULTI: a snapshot with its version. A node only ever installs a newer version than
the one in force, so a slow refresh that read the store before a change was acknowledged never
puts the older policy back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Literal

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from .. import limits
from ..errors import Unavailable
from .loader import PolicyError, policy_from_mapping
from .matcher import CompiledDomain
from .policy import DomainPolicy

log = logging.getLogger("lockgate.gateway")

POLICIES_KEY: Final = "{lockgate:gateway}:policies"
VERSION_KEY: Final = "{lockgate:gateway}:version"

Source = Literal["file", "runtime"]
_NOTHING_READ: Final = -1  # below every version the store has (0 before the first change)
_encoder = msgspec.json.Encoder()


class PolicyRegistry:
    def __init__(self, file_policies: dict[str, DomainPolicy]) -> None:
        self._files = file_policies
        self._runtime: dict[str, DomainPolicy] = {}
        self._compiled: dict[str, CompiledDomain] = {}
        self._client: Any = None  # redis.asyncio.Redis; typed loosely like storage/log.py
        self._version = _NOTHING_READ  # the store's version of the runtime policies in force
        self._rebuild()

    # --- the hot path ------------------------------------------------------------------------
    def get(self, domain: str) -> CompiledDomain | None:
        return self._compiled.get(domain)

    # --- reading ------------------------------------------------------------------------------
    def domains(self) -> list[tuple[str, Source]]:
        return sorted((name, self._source(name)) for name in self._compiled)

    def describe(self, domain: str) -> tuple[DomainPolicy, Source] | None:
        compiled = self._compiled.get(domain)
        return None if compiled is None else (compiled.policy, self._source(domain))

    def file_policy(self, domain: str) -> DomainPolicy | None:
        return self._files.get(domain)

    def _source(self, domain: str) -> Source:
        return "runtime" if domain in self._runtime else "file"

    # --- runtime changes ------------------------------------------------------------------------
    async def put(self, policy: DomainPolicy) -> None:
        """Durable first, then in force: a change nobody could reload is never served."""
        async with self._store_errors(), self._client.pipeline(transaction=True) as pipe:
            pipe.hset(POLICIES_KEY, policy.domain, _encoder.encode(policy)).incr(VERSION_KEY)
            _, version = await pipe.execute()
        await self._after_change(int(version), lambda runtime: runtime.__setitem__(policy.domain, policy))

    async def delete(self, domain: str) -> bool:
        """Drop the runtime change of `domain` (its file policy, if any, is in force again)."""
        async with self._store_errors(), self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(POLICIES_KEY, domain).incr(VERSION_KEY)
            removed, version = await pipe.execute()
        await self._after_change(int(version), lambda runtime: runtime.pop(domain, None))
        return bool(removed)

    async def _after_change(self, version: int, change: Callable[[dict[str, DomainPolicy]], object]) -> None:
        """Put our acknowledged change (store version `version`) in force, and never an older state."""
        if version == self._version + 1:  # nothing else changed since we last looked
            change(self._runtime)
            self._version = version
            self._rebuild()
            return
        if version <= self._version:  # the store's counter went back: it was emptied, so start over
            self._version = _NOTHING_READ
        # Another node changed something too since we last looked (or a refresh already installed
        # this change and more): read it all. The snapshot is at least `version`, never older.
        async with self._store_errors():
            await self.refresh()

    # --- life cycle -------------------------------------------------------------------------------
    async def start(self, store_url: str) -> None:
        self._client = redis.Redis.from_url(store_url)
        await self.refresh()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def watch(self) -> None:
        """Pick up changes made through other nodes (runs for the node's life)."""
        while True:
            await asyncio.sleep(limits.GATEWAY_POLICY_REFRESH_MS / 1000)
            try:
                await self.refresh()
            except (RedisError, OSError) as error:
                log.warning("could not look for policy changes: %r", error)

    async def refresh(self) -> None:
        """Install the store's runtime policies if they are newer than those in force."""
        if int(await self._client.get(VERSION_KEY) or 0) <= self._version:
            return  # the cheap poll of every GATEWAY_POLICY_REFRESH_MS: nothing newer
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(VERSION_KEY).hgetall(POLICIES_KEY)
            version_raw, stored = await pipe.execute()
        version = int(version_raw or 0)
        # Checked after the last await, so nothing can land between the check and the install:
        # a put acknowledged while this read was on its way has installed a newer version.
        if version <= self._version:
            return
        runtime: dict[str, DomainPolicy] = {}
        for field, value in stored.items():
            domain = field.decode()
            try:
                runtime[domain] = policy_from_mapping(msgspec.json.decode(value), source=f"{POLICIES_KEY}[{domain}]")
            except (PolicyError, msgspec.DecodeError) as error:
                # One unreadable entry must not take the others down; its file policy (if any) stays.
                log.error("ignoring the stored runtime policy of %s: %s", domain, error)
        self._runtime = runtime
        self._version = version
        self._rebuild()

    def _rebuild(self) -> None:
        merged = {**self._files, **self._runtime}
        self._compiled = {name: CompiledDomain(policy) for name, policy in merged.items()}

    @contextlib.asynccontextmanager
    async def _store_errors(self) -> AsyncIterator[None]:
        if self._client is None:
            raise Unavailable("policies can change once the node has started")
        try:
            yield
        except (RedisError, OSError) as error:
            raise Unavailable(f"the store did not take the policy change: {error!r}") from error
