"""A FastAPI-sized ASGI app for the memory and start-up cases.

FastAPI + pydantic with 200 generated models and 400 routes (``/r{i}/e{j}``), plus an in-memory catalogue of
20 000 small dicts loaded at import, the kind of reference data many services keep. ``/`` answers a small JSON
document; ``/items`` validates and serialises 50 model instances (allocates, so the GC runs under load).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, create_model

from bench.apps.mark import mark

N_MODELS = 200
N_ROUTERS = 40
ROUTES_PER_ROUTER = 10

MODELS: list[type[BaseModel]] = [
    create_model(  # type: ignore[call-overload]
        f"Model{i}",
        id=(int, ...),
        name=(str, ...),
        tags=(list[str], []),
        score=(float, 0.0),
        active=(bool, True),
        note=(str | None, None),
        attrs=(dict[str, int], {}),
    )
    for i in range(N_MODELS)
]

CATALOGUE: dict[str, dict[str, Any]] = {
    f"sku-{i:06d}": {"id": i, "name": f"product {i}", "price": i * 0.25, "tags": [f"t{i % 7}", f"g{i % 13}"]}
    for i in range(20_000)
}

app = FastAPI(title="bench big app")


def _make_endpoint(model: type[BaseModel], n: int) -> Any:
    async def endpoint(item_id: int = 0) -> Any:
        mark()
        return model(id=item_id + n, name=f"n{n}", tags=["a", "b"], attrs={"x": n})

    return endpoint


for r in range(N_ROUTERS):
    router = APIRouter(prefix=f"/r{r}")
    for e in range(ROUTES_PER_ROUTER):
        model = MODELS[(r * ROUTES_PER_ROUTER + e) % N_MODELS]
        router.add_api_route(f"/e{e}", _make_endpoint(model, e), methods=["GET"], response_model=model)
    app.include_router(router)

Item = MODELS[0]


@app.get("/")
async def root() -> dict[str, Any]:
    mark()
    return {"ok": True, "models": N_MODELS, "catalogue": len(CATALOGUE)}


@app.get("/collect")
async def collect() -> dict[str, Any]:
    """A full collection, as a long-running worker does now and then: it writes to every tracked object's GC
    header, which unshares copy-on-write pages unless gc.freeze() moved those objects out of the GC's reach."""
    return {"pid": os.getpid(), "collected": gc.collect()}


@app.get("/items", response_model=list[Item])  # type: ignore[valid-type]
async def items() -> list[Any]:
    mark()
    return [Item(id=i, name=f"item {i}", tags=["x", "y"], attrs={"k": i}) for i in range(50)]
