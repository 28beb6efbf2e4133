"""The audit sealer of ``broker serve``: one process of its own beside granian's workers.

Sealing reads a round of events, hashes them and appends a block (``broker.audit.chain``). Inside a
serving worker each round is a few milliseconds of CPU during which that worker's event loop serves
nobody, and on a loaded machine those milliseconds stretch while the worker waits for a core: every
request in flight on it waits too. In a process of its own the same work is scheduled by the kernel
between the workers' time slices instead of inside them. On our 2-core machines this took the
``client_credentials`` p99 at 32 connections from 46 to 99 ms to 36 to 50 ms (docs/performance.md).

``broker serve`` starts the sealer before granian forks its workers and hands the workers
``BROKER_AUDIT_SEAL_INTERVAL_SECONDS=0``; it stops the sealer (SIGTERM, then SIGKILL after 10 s) when
granian returns. A round in flight when it stops is rolled back and sealed by the next start: sealing
is idempotent. Applications built by ``create_app`` outside ``broker serve`` (tests, embedding) still
seal in their own lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
from typing import TYPE_CHECKING

import structlog

from broker.audit import chain
from broker.signals import stop_requested

if TYPE_CHECKING:
    from collections.abc import Iterator

    from broker.settings import Settings

log = structlog.get_logger("broker.audit")
PROCESS_NAME = "broker-sealer"
"""The sealer's name in ``ps``, ``top`` and ``/proc/<pid>/comm`` (Linux), beside granian's workers."""
STOP_SECONDS = 10.0
_INTERVAL_VARIABLE = "BROKER_AUDIT_SEAL_INTERVAL_SECONDS"
_PR_SET_NAME = 15


@contextlib.contextmanager
def sealing_process(settings: Settings) -> Iterator[None]:
    """Run the sealer in a child process while the block runs; processes forked inside it do not seal."""
    if settings.audit_seal_interval_seconds <= 0:
        yield
        return
    process = multiprocessing.get_context("fork").Process(
        target=_run, args=(settings,), name="broker-audit-sealer", daemon=True
    )
    process.start()
    previous = os.environ.get(_INTERVAL_VARIABLE)
    os.environ[_INTERVAL_VARIABLE] = "0"  # granian's workers read their settings from the environment
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_INTERVAL_VARIABLE, None)
        else:
            os.environ[_INTERVAL_VARIABLE] = previous
        process.terminate()
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def _run(settings: Settings) -> None:
    """The sealer process: seal every interval until SIGTERM or SIGINT."""
    from broker.http import logging as http_logging  # noqa: PLC0415 - only the child needs them

    _name_process(PROCESS_NAME)
    http_logging.configure(settings)
    asyncio.run(_seal_until_stopped(settings))


async def _seal_until_stopped(settings: Settings) -> None:
    from broker.app import build_runtime  # noqa: PLC0415 - broker.app imports this package

    runtime = build_runtime(settings)
    log.info("audit sealer started", pid=os.getpid(), interval=settings.audit_seal_interval_seconds)
    try:
        with stop_requested() as stop:
            async with chain.sealing(runtime):
                await stop.wait()
    finally:
        await runtime.close()


def _name_process(name: str) -> None:
    """Set the kernel's name of this process (``prctl(PR_SET_NAME)``); nothing where that is unavailable."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
