"""The bare FastAPI endpoint ``make bench-api`` measures reach against: no I/O, no middleware,
served by uvicorn with the same options and worker count as ``reach api``.

``python -m bench.bare_api PORT WORKERS``
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/bare")
async def bare() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(
        "bench.bare_api:app",
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        backlog=4096,
        log_level="warning",
    )
