-- Seconds until the next request fits the sliding window: the estimate is
-- previous * (1 - elapsed) + current, elapsed being the fraction of this minute gone.
CREATE OR REPLACE FUNCTION ledger.retry_after(
    rate_limit integer,
    current_count bigint,
    previous_count bigint,
    elapsed double precision
)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT greatest(1, ceil(CASE
        -- This minute still has room once enough of the previous minute has slid out.
        WHEN current_count < rate_limit AND previous_count > 0
            THEN 60.0 * (1.0 - (rate_limit - current_count - 1)::double precision / previous_count) - 60.0 * elapsed
        -- Otherwise wait for the next minute, and for enough of this one to slide out.
        ELSE 60.0 * (1.0 - elapsed)
             + greatest(0.0, 60.0 * (1.0 - (rate_limit - 1)::double precision / greatest(current_count, 1)))
    END))::integer
$$;
