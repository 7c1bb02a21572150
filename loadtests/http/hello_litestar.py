"""A Litestar hello-world doing the same decode/encode as hello_asgi, on Lockgate's check path.

Litestar decodes the body into Lockgate's RateCheck and encodes the RateDecision it returns
(msgspec both ways): what a route costs when it goes through Litestar's request machinery.
"""

from __future__ import annotations

from litestar import Litestar, get, post

from lockgate_server.api.schemas import RateCheck, RateDecision


@post("/v1/namespaces/{namespace:str}/ratelimits/{name:str}/check", status_code=200)
async def check(namespace: str, name: str, data: RateCheck) -> RateDecision:
    return RateDecision(
        allowed=True,
        limit=data.limit,
        remaining=data.limit - data.cost,
        reset_after_ms=data.period_ms,
        retry_after_ms=0,
        lsn=0,
    )


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(route_handlers=[check, healthz], openapi_config=None)
