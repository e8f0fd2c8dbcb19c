-- Who is calling and whether they may, in one statement that the planner inlines into the
-- calling api function (a STABLE SQL set-returning function; it is not STABLE, since it counts
-- the request and may take the idempotency lock, but only inlining keeps the write path to one
-- PL/pgSQL level, and it is evaluated once per call). refusal is NULL when the call may go on,
-- else it names the reason, which ledger.refuse turns into the error:
-- correlation_id_too_long, key_required (a database role that may not call without an API
-- key), unknown_key, revoked, expired, permission, idempotency_key_required, rate_limited.
-- Callers: an API key (its SHA-256) with the permission (read, write, admin, or maintenance,
-- which only admin keys hold) within its per-minute rate limit; or, without a key, a database
-- role that is a member of atp_dba (anything), atp_auditor (read) or atp_app (maintenance).
-- The rate limit is a sliding window over two UNLOGGED sequences per key, for even and odd
-- minutes, holding minute * 10^9 + requests: nextval is not transactional, so a request that
-- fails later still counts, and no request waits for another's commit. When the call may go on
-- and carries an idempotency key, the key's advisory lock is taken last: concurrent duplicates
-- queue here, and the next statement of the caller (a new snapshot) sees a committed response.
CREATE OR REPLACE FUNCTION ledger.caller(
    api_key_hash text,
    permission text,
    idempotency_key uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    writes boolean DEFAULT false
)
RETURNS TABLE (
    refusal text,
    actor text,
    api_key_id uuid,
    key_name text,
    scope text,
    rate_limit integer,
    current_count bigint,
    previous_count bigint,
    elapsed double precision,
    stale_last_used boolean,
    claimed boolean
)
LANGUAGE sql
STABLE
AS $$
    SELECT c.refusal, c.actor, c.api_key_id, c.key_name, c.scope, c.rate_limit, c.current_count,
           c.previous_count, c.elapsed, c.stale_last_used,
           CASE WHEN c.refusal IS NULL AND caller.idempotency_key IS NOT NULL
                THEN pg_advisory_xact_lock(hashtextextended(c.scope || '/' || caller.idempotency_key::text, 0))
                     IS NOT NULL
                ELSE false END
      FROM (
        SELECT CASE
                   WHEN length(caller.correlation_id) > 128 THEN 'correlation_id_too_long'
                   WHEN caller.api_key_hash IS NULL THEN
                       CASE WHEN pg_has_role(w.actor, 'atp_dba', 'MEMBER')
                                 OR (caller.permission = 'read' AND pg_has_role(w.actor, 'atp_auditor', 'MEMBER'))
                                 OR (caller.permission = 'maintenance' AND pg_has_role(w.actor, 'atp_app', 'MEMBER'))
                            THEN NULL ELSE 'key_required' END
                   WHEN k.id IS NULL THEN 'unknown_key'
                   WHEN NOT k.is_active THEN 'revoked'
                   WHEN k.expires_at <= now() THEN 'expired'
                   WHEN NOT ('admin' = ANY (k.permissions) OR caller.permission = ANY (k.permissions)) THEN 'permission'
                   WHEN caller.writes AND caller.idempotency_key IS NULL THEN 'idempotency_key_required'
                   WHEN r.previous_count * (1.0 - r.elapsed) + r.current_count > k.rate_limit_per_minute
                       THEN 'rate_limited'
               END AS refusal,
               w.actor,
               k.id AS api_key_id,
               k.name AS key_name,
               -- The default collation, as the key's column has: with the C collation of the role
               -- name, the caller's lookup of idempotency_keys could not use its primary key.
               CASE WHEN caller.api_key_hash IS NULL THEN 'role:' || w.actor ELSE k.id::text END
                   COLLATE "default" AS scope,
               k.rate_limit_per_minute AS rate_limit,
               r.current_count,
               r.previous_count,
               r.elapsed,
               k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' AS stale_last_used
          -- OFFSET 0 here and at the end keeps each subquery's columns computed once: flattened,
          -- every reference would copy the expression (the refusal's CASE twice, the minute's
          -- arithmetic ten times), and expressions are compiled at every execution.
          -- SET ROLE changes the caller without changing session_user; both count.
          FROM (SELECT COALESCE(NULLIF(current_setting('role'), 'none'), session_user) COLLATE "default" AS actor,
                       floor(extract(epoch FROM now()) / 60)::bigint AS minute
                OFFSET 0) w
          LEFT JOIN ledger.api_keys k ON k.key_hash = lower(caller.api_key_hash)
          -- Counted only for a live key with the permission (a volatile subquery is run once).
          LEFT JOIN LATERAL (
            SELECT n.value % 1000000000 AS current_count,
                   CASE WHEN p.value / 1000000000 = w.minute - 1 THEN p.value % 1000000000 ELSE 0 END
                       AS previous_count,
                   extract(epoch FROM now()) / 60.0 - w.minute AS elapsed
              FROM (SELECT CASE WHEN x.value / 1000000000 < w.minute
                                -- First request of this minute: the bucket still holds a minute two
                                -- or more ago. Racing first requests may each restart it, which
                                -- loses at most a few counts.
                                THEN setval(x.bucket, w.minute * 1000000000 + 1)
                                ELSE x.value END AS value
                      FROM (SELECT b.bucket, nextval(b.bucket) AS value
                              FROM (SELECT CASE WHEN w.minute % 2 = 0 THEN k.bucket_even ELSE k.bucket_odd END
                                           AS bucket) b
                             OFFSET 0) x) n
             CROSS JOIN LATERAL (SELECT pg_sequence_last_value(
                                     CASE WHEN w.minute % 2 = 0 THEN k.bucket_odd ELSE k.bucket_even END)
                                     AS value) p
             WHERE k.is_active AND (k.expires_at IS NULL OR k.expires_at > now())
               AND ('admin' = ANY (k.permissions) OR caller.permission = ANY (k.permissions))
          ) r ON true
        OFFSET 0
      ) c
$$;
