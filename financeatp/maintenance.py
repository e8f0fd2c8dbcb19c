"""The scheduled jobs, run by every server worker: no leader, no pg_cron."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from financeatp.observe import log


async def run_maintenance(pool: AsyncConnectionPool[Any], interval: float) -> None:
    """api.run_maintenance() every MAINTENANCE_INTERVAL seconds, in every worker: each job is
    safe to run concurrently and cheap when there is nothing to do, and it needs no leader."""
    await asyncio.sleep(secrets.randbelow(int(min(interval, 10)) * 1000 + 1) / 1000)
    while True:
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT api.run_maintenance(correlation_id => %s)", ["maintenance"]
                )
                row = await cur.fetchone()
            log.info("maintenance", extra={"fields": {"result": row[0] if row else None}})
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("maintenance failed", extra={"fields": {"error": str(exc)}})
        await asyncio.sleep(interval)
