-- Monthly partitions of ledger.events and ledger.ledger_entries from this month to
-- months_ahead months ahead, so that no row ever waits for one (rows that arrive anyway land
-- in the DEFAULT partition). Every partition that lacks it, old or new, also gets the TRUNCATE
-- trigger (statement triggers are not inherited) and loses INSERT/UPDATE/DELETE/TRUNCATE for
-- the owner, so nobody writes around the parent's triggers. A partition is made as a table of
-- its own and then attached: CREATE TABLE ... PARTITION OF would hold an ACCESS EXCLUSIVE lock
-- on the parent until the transaction ends, stopping every transfer's INSERT for that long,
-- where ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE, which writers and readers pass (and
-- ACCESS EXCLUSIVE on the DEFAULT partition, which it checks for rows of the new month). While
-- a reader holds the DEFAULT partition (a long report, a pg_dump), that request would queue
-- the reads of the parent behind it. So each lock is waited for at most lock_timeout, and a
-- partition that could not be attached is left for the next run (reported as skipped_locked):
-- it is made months before it is needed. Months are UTC months, whatever the session's
-- TimeZone: bounds computed in another zone would overlap or leave gaps.
CREATE OR REPLACE FUNCTION ledger.ensure_partitions(months_ahead integer DEFAULT 3)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
SET timezone = 'UTC'
AS $$
DECLARE
    _parent text;
    _month date;
    _name text;
    _created text[] := '{}';
    _skipped text[] := '{}';
    _locked text[] := '{}';
    _partition regclass;
    _has_rows boolean;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
        RAISE EXCEPTION USING ERRCODE = 'L4001', MESSAGE = 'months_ahead must be between 0 and 120';
    END IF;
    FOREACH _parent IN ARRAY ARRAY['events', 'ledger_entries'] LOOP
        FOR _month IN
            SELECT generate_series(date_trunc('month', now()),
                                   date_trunc('month', now()) + make_interval(months => months_ahead),
                                   interval '1 month')::date
        LOOP
            _name := _parent || '_' || to_char(_month, 'YYYY_MM');
            CONTINUE WHEN to_regclass('ledger.' || _name) IS NOT NULL;
            -- A month whose rows already sit in the default partition cannot be split off
            -- without moving history; report it instead of failing the whole run.
            EXECUTE format('SELECT EXISTS (SELECT FROM ledger.%I WHERE created_at >= %L AND created_at < %L)',
                           _parent || '_default', _month, _month + interval '1 month')
               INTO _has_rows;
            IF _has_rows THEN
                _skipped := _skipped || _name;
                CONTINUE;
            END IF;
            BEGIN
                -- Indexes, constraints and row triggers come from the parent as it attaches.
                EXECUTE format('CREATE TABLE ledger.%I (LIKE ledger.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                               'INCLUDING STORAGE INCLUDING COMPRESSION)', _name, _parent);
                EXECUTE format('ALTER TABLE ledger.%I ATTACH PARTITION ledger.%I FOR VALUES FROM (%L) TO (%L)',
                               _parent, _name, _month, _month + interval '1 month');
                _created := _created || _name;
            EXCEPTION WHEN lock_not_available THEN
                _locked := _locked || _name;
            END;
        END LOOP;
    END LOOP;

    -- Only partitions still without the trigger: altering a partition locks it against
    -- inserts, and this runs every minute while transfers insert.
    FOR _partition IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
         WHERE i.inhparent IN ('ledger.events'::regclass, 'ledger.ledger_entries'::regclass)
           AND NOT EXISTS (SELECT FROM pg_trigger t
                            WHERE t.tgrelid = i.inhrelid AND t.tgname = 'partition_no_truncate')
    LOOP
        BEGIN
            EXECUTE format('CREATE OR REPLACE TRIGGER partition_no_truncate BEFORE TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change()', _partition);
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM atp_owner', _partition);
        EXCEPTION WHEN lock_not_available THEN
            _locked := _locked || _partition::text;
        END;
    END LOOP;
    RETURN jsonb_build_object('created', to_jsonb(_created), 'skipped_default_has_rows', to_jsonb(_skipped))
        || CASE WHEN cardinality(_locked) > 0 THEN jsonb_build_object('skipped_locked', to_jsonb(_locked))
                ELSE '{}' END;
END
$$;
