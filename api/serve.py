"""Running the API in one or several processes: ``reach api --workers N``.

uvicorn can only start workers from an import string or a factory, never from an app
object, so each worker process builds its own app with :func:`app_from_environment`
(settings from ``REACH_*``, as at every entry point) and they share one listening socket.
With more than one worker, prometheus_client runs in multiprocess mode over a directory
created for this run and removed when it ends, so ``/metrics`` sums every worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from reach import logs
from reach.settings import Settings

FACTORY = "api.serve:app_from_environment"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable


def default_workers() -> int:
    """One worker per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def app_from_environment() -> FastAPI:
    """uvicorn's factory, called in every worker process."""
    from api.app import create_app

    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    directory = os.environ.get(MULTIPROC_ENV)
    return create_app(settings, multiprocess_dir=Path(directory) if directory else None)


def run(settings: Settings, workers: int) -> int:
    """Serve until stopped; returns the exit status (uvicorn's 3 when a worker failed to start)."""
    if workers == 1:
        server = uvicorn.Server(uvicorn_config(settings, 1))
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    with metrics_directory():
        config = uvicorn_config(settings, workers)
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    # uvicorn stops every worker when one fails before serving, but exits 0 itself.
    return STARTUP_FAILURE if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0


def uvicorn_config(settings: Settings, workers: int) -> uvicorn.Config:
    return uvicorn.Config(
        FACTORY,
        factory=True,
        workers=workers,
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        backlog=4096,
        log_level=settings.log_level.lower(),
    )


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for this run's workers (they inherit the
    environment), removed afterwards: values left from another run would be summed in."""
    directory = Path(tempfile.mkdtemp(prefix="reach-api-metrics-"))
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)
