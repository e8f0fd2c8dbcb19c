-- Time-ordered UUIDs (RFC 9562 version 7) for new journals and accounts: neighbouring
-- inserts land on neighbouring index pages instead of random ones.
CREATE OR REPLACE FUNCTION ledger.uuid_v7()
RETURNS uuid
LANGUAGE sql
VOLATILE
PARALLEL SAFE
AS $$
    SELECT encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                        FROM 1 FOR 6),
                52, 1),
            53, 1),
        'hex')::uuid
$$;
