"""API keys: scoped to namespaces, with rights read < write < admin, stored as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from ..errors import Forbidden, Unauthorized
from ..settings import ApiKey

Right = Literal["read", "write", "admin"]
_IMPLIED: dict[str, set[str]] = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    namespaces: frozenset[str]  # contains "*" for all
    rights: frozenset[str]

    def may(self, namespace: str, right: Right) -> bool:
        in_scope = "*" in self.namespaces or namespace in self.namespaces
        return in_scope and right in self.rights


OPEN = Principal("open", frozenset({"*"}), frozenset({"read", "write", "admin"}))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Looks a presented key up by its hash, then compares in constant time."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_hash: dict[str, Principal] = {}
        for key in keys:
            rights: set[str] = set()
            for right in key.rights:
                rights |= _IMPLIED[right]
            self._by_hash[key.sha256] = Principal(
                key.name or key.sha256[:8], frozenset(key.namespaces), frozenset(rights)
            )

    @property
    def open(self) -> bool:
        return not self._by_hash

    def authenticate(self, presented: str | None) -> Principal:
        if self.open:
            return OPEN
        if not presented:
            raise Unauthorized("send the API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        digest = hash_key(presented)
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthorized("unknown API key")


def authorize(principal: Principal, namespace: str, right: Right) -> None:
    """One answer for 'no such namespace for you' and 'not this right': nothing leaks."""
    if not principal.may(namespace, right):
        raise Forbidden(f"this key may not {right} in that namespace")
