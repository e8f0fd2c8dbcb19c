"""The scheduled jobs, run by every server worker: no leader, no pg_cron."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from financeatp.observe import log

# Between runs that left work behind: long enough for the requests that waited for a batch's
# locks to take their turn first.
AGAIN_AFTER = 0.05


async def run_maintenance(
    pool: AsyncConnectionPool[Any], interval: float, first_delay: float | None = None
) -> None:
    """api.run_maintenance() every MAINTENANCE_INTERVAL seconds, in every worker: each job is
    safe to run concurrently and cheap when there is nothing to do, and it needs no leader.
    While a run says that more is waiting (a job stopped at its batch limit, or expired holds
    are still pending after some were released: "more"), the next follows AGAIN_AFTER
    seconds later, each in its own transaction, so that the locks of a batch are held for one
    batch only.
    The first run waits first_delay seconds (default: up to 10 s at random, so that the workers
    do not all start at once)."""
    if first_delay is None:
        first_delay = secrets.randbelow(int(min(interval, 10)) * 1000 + 1) / 1000
    await asyncio.sleep(first_delay)
    while True:
        more = False
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT api.run_maintenance(correlation_id => %s)", ["maintenance"]
                )
                row = await cur.fetchone()
            result = row[0] if row else None
            more = isinstance(result, dict) and result.get("more") is True
            log.info("maintenance", extra={"fields": {"result": result}})
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("maintenance failed", extra={"fields": {"error": str(exc)}})
        await asyncio.sleep(AGAIN_AFTER if more else interval)
