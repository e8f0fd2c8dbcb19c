CREATE OR REPLACE FUNCTION api.verify_projections(
    api_key_hash text DEFAULT NULL,
    request_user_id uuid DEFAULT NULL,
    correlation_id text DEFAULT NULL,
    client_addr inet DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _mismatches jsonb;
    _gaps jsonb;
    _entries jsonb;
    _snapshots jsonb;
    _journals jsonb;
    _held jsonb;
    _refunds jsonb;
    _lines jsonb;
    _malformed jsonb := '[]';
    _totals record;
BEGIN
    PERFORM ledger.authorize(verify_projections.api_key_hash, 'read', verify_projections.request_user_id,
                             verify_projections.correlation_id, verify_projections.client_addr);
    -- The checks that replay the events read each money event's amount as a number: an event
    -- whose amount is not one (a row forged by hand) is reported, where the cast would stop
    -- the verification.
    BEGIN
        -- Projection against replay, account by account (a missing row on either side counts), the
        -- normal side against the account type's (no CHECK guards balances.normal_side).
        SELECT COALESCE(jsonb_agg(jsonb_build_object(
                   'account_id', COALESCE(b.account_id, r.account_id),
                   'projected', CASE WHEN b.account_id IS NOT NULL THEN jsonb_build_object(
                       'balance', b.balance, 'is_frozen', b.is_frozen, 'is_closed', b.is_closed, 'version', b.version,
                       'normal_side', b.normal_side) END,
                   'replayed', CASE WHEN r.account_id IS NOT NULL THEN jsonb_build_object(
                       'balance', r.balance, 'is_frozen', r.is_frozen, 'is_closed', r.is_closed, 'version', r.version,
                       'normal_side', r.normal_side) END)), '[]')
          INTO _mismatches
          FROM ledger.balances b
          FULL JOIN ledger.replay_accounts() r ON r.account_id = b.account_id
         WHERE (b.balance, b.is_frozen, b.is_closed, b.version, b.normal_side)
               IS DISTINCT FROM (r.balance, r.is_frozen, r.is_closed, r.version, r.normal_side);

        -- Versions 1..n with no gap and no duplicate.
        SELECT COALESCE(jsonb_agg(jsonb_build_object('account_id', r.account_id, 'events', r.event_count,
                                                     'max_version', r.version)), '[]')
          INTO _gaps
          FROM ledger.replay_accounts() r
         WHERE r.event_count <> r.version;

        -- Each snapshot equals the replay up to its version: one running sum per account, in
        -- one pass (summing each snapshot's events again grew with the square of an account's
        -- history: 20 s for one account of 60,000 events). A snapshot of a version no event has
        -- replays to nothing.
        SELECT COALESCE(jsonb_agg(jsonb_build_object('account_id', s.account_id, 'version', s.version,
                                                     'snapshot', s.balance, 'replayed', x.total)), '[]')
          INTO _snapshots
          FROM ledger.snapshots s
          LEFT JOIN (SELECT e.aggregate_id, e.version,
                            sum(ledger.event_delta(e.event_type, e.data, t.normal_side))
                                OVER (PARTITION BY e.aggregate_id ORDER BY e.version) AS total
                       FROM ledger.events e
                       JOIN ledger.accounts a ON a.id = e.aggregate_id
                       JOIN ledger.account_types t ON t.code = a.account_type
                      WHERE e.aggregate_type = 'account') x
            ON x.aggregate_id = s.account_id AND x.version = s.version
         WHERE x.total IS DISTINCT FROM s.balance;
    EXCEPTION WHEN data_exception THEN
        SELECT COALESCE(jsonb_agg(e.id ORDER BY e.id), '[]') INTO _malformed
          FROM ledger.events e
         WHERE e.aggregate_type = 'account' AND e.event_type IN ('AccountDebited', 'AccountCredited')
           AND (e.data ->> 'amount') !~ '^[0-9]{1,13}([.][0-9]{1,8})?$';
        IF _malformed = '[]' THEN  -- some other value the replay could not read: say what
            _malformed := jsonb_build_array(SQLERRM);
        END IF;
        _mismatches := '[]';
        _gaps := '[]';
        _snapshots := '[]';
    END;

    -- The journal lines of each account add up to its balance.
    SELECT COALESCE(jsonb_agg(jsonb_build_object('account_id', b.account_id, 'balance', b.balance,
                                                 'from_entries', COALESCE(x.total, 0))), '[]')
      INTO _entries
      FROM ledger.balances b
      JOIN ledger.accounts a ON a.id = b.account_id
      JOIN ledger.account_types t ON t.code = a.account_type
      LEFT JOIN (SELECT account_id, sum(amount) FILTER (WHERE side = 'debit') AS debits,
                        sum(amount) FILTER (WHERE side = 'credit') AS credits
                   FROM ledger.ledger_entries GROUP BY account_id) s ON s.account_id = b.account_id
      CROSS JOIN LATERAL (SELECT CASE t.normal_side
                                     WHEN 'debit' THEN COALESCE(s.debits, 0) - COALESCE(s.credits, 0)
                                     ELSE COALESCE(s.credits, 0) - COALESCE(s.debits, 0) END AS total) x
     WHERE x.total <> b.balance;

    SELECT COALESCE(jsonb_agg(jsonb_build_object('journal_id', j.journal_id, 'debits', j.debits,
                                                 'credits', j.credits)), '[]')
      INTO _journals
      FROM (SELECT journal_id, sum(amount) FILTER (WHERE side = 'debit') AS debits,
                   sum(amount) FILTER (WHERE side = 'credit') AS credits
              FROM ledger.ledger_entries GROUP BY journal_id) j
     WHERE j.debits IS DISTINCT FROM j.credits;

    -- Each journal line and the money event it was written with tell one story: the same
    -- account, side, amount, journal, kind and time, and the line's balance_after is the sum of
    -- the account's lines up to it (in event version order). Events swapped, moved in time or
    -- rewritten, or lines rewritten, all consistently enough to keep the balances, are found
    -- here; as-of answers replay the events, history reads the lines.
    WITH line AS (
        SELECT l.id AS entry_id, l.journal_id, l.event_id, l.account_id, l.side, l.amount, l.balance_after,
               l.kind, l.created_at, t.normal_side
          FROM ledger.ledger_entries l
          LEFT JOIN ledger.accounts a ON a.id = l.account_id
          LEFT JOIN ledger.account_types t ON t.code = a.account_type
    ), paired AS (
        SELECT l.*, e.id AS e_id, e.aggregate_id, e.event_type, e.data, e.created_at AS e_created_at,
               sum(CASE WHEN l.side = l.normal_side THEN l.amount ELSE -l.amount END)
                   OVER (PARTITION BY l.account_id ORDER BY e.version) AS running
          FROM line l
          FULL JOIN (SELECT * FROM ledger.events
                      WHERE aggregate_type = 'account' AND event_type IN ('AccountDebited', 'AccountCredited')) e
            ON e.id = l.event_id
    )
    SELECT COALESCE(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'entry_id', p.entry_id, 'event_id', COALESCE(p.e_id, p.event_id), 'journal_id', p.journal_id,
               'problem', CASE WHEN p.entry_id IS NULL THEN 'money event without its journal line'
                               WHEN p.e_id IS NULL THEN 'journal line without its event'
                               WHEN p.running IS DISTINCT FROM p.balance_after
                                    AND p.aggregate_id = p.account_id AND p.e_created_at = p.created_at
                                    AND p.data ->> 'amount' = p.amount::numeric(21, 8)::text
                                   THEN 'balance_after is not the sum of the lines before it'
                               ELSE 'journal line and its event differ' END))
               ORDER BY p.entry_id, p.e_id), '[]')
      INTO _lines
      FROM paired p
     WHERE p.entry_id IS NULL OR p.e_id IS NULL
        OR p.aggregate_id IS DISTINCT FROM p.account_id
        OR p.event_type <> CASE p.side WHEN 'debit' THEN 'AccountDebited' ELSE 'AccountCredited' END
        OR p.data ->> 'amount' IS DISTINCT FROM p.amount::numeric(21, 8)::text
        OR p.data ->> 'journal_id' IS DISTINCT FROM p.journal_id::text
        OR p.data ->> 'kind' IS DISTINCT FROM p.kind
        OR p.e_created_at IS DISTINCT FROM p.created_at
        OR p.running IS DISTINCT FROM p.balance_after;

    -- What each account reserves equals its pending holds (an expired one until maintenance releases it).
    SELECT COALESCE(jsonb_agg(jsonb_build_object('account_id', b.account_id, 'held', b.held,
                                                 'pending_holds', COALESCE(p.total, 0))), '[]')
      INTO _held
      FROM ledger.balances b
      LEFT JOIN (SELECT from_account_id, sum(amount) AS total FROM ledger.holds
                  WHERE status = 'pending' GROUP BY from_account_id) p ON p.from_account_id = b.account_id
     WHERE b.held <> COALESCE(p.total, 0);

    -- Refunds of a transfer never add up to more than it, and name a transfer.
    SELECT COALESCE(jsonb_agg(jsonb_build_object('transfer_id', r.refund_of, 'amount', t.amount,
                                                 'refunded', r.total)), '[]')
      INTO _refunds
      FROM (SELECT refund_of, sum(amount) AS total FROM ledger.ledger_entries
             WHERE refund_of IS NOT NULL AND side = 'debit' GROUP BY refund_of) r
      LEFT JOIN ledger.ledger_entries t ON t.journal_id = r.refund_of AND t.side = 'debit' AND t.kind = 'transfer_out'
     WHERE t.amount IS NULL OR r.total > t.amount;

    -- Trial balance: debit-normal balances equal credit-normal balances, and all debits equal
    -- all credits; and minted less burned equals what is held. One statement, so one snapshot:
    -- balances and lines read in two would disagree by any mint or burn committed in between.
    SELECT b.debit_normal, b.credit_normal, b.wallets, l.debits, l.credits, l.minted, l.burned
      INTO _totals
      FROM (SELECT COALESCE(sum(b.balance) FILTER (WHERE t.normal_side = 'debit'), 0) AS debit_normal,
                   COALESCE(sum(b.balance) FILTER (WHERE t.normal_side = 'credit'), 0) AS credit_normal,
                   COALESCE(sum(b.balance) FILTER (WHERE a.account_type = 'user_wallet'), 0) AS wallets
              FROM ledger.balances b
              JOIN ledger.accounts a ON a.id = b.account_id
              JOIN ledger.account_types t ON t.code = a.account_type) b
     CROSS JOIN (SELECT COALESCE(sum(amount) FILTER (WHERE side = 'debit'), 0) AS debits,
                        COALESCE(sum(amount) FILTER (WHERE side = 'credit'), 0) AS credits,
                        COALESCE(sum(amount) FILTER (WHERE kind = 'mint' AND side = 'credit'), 0) AS minted,
                        COALESCE(sum(amount) FILTER (WHERE kind = 'burn' AND side = 'debit'), 0) AS burned
                   FROM ledger.ledger_entries) l;

    RETURN jsonb_build_object(
        'ok', jsonb_array_length(_mismatches) = 0 AND jsonb_array_length(_gaps) = 0
              AND jsonb_array_length(_entries) = 0 AND jsonb_array_length(_snapshots) = 0
              AND jsonb_array_length(_journals) = 0 AND jsonb_array_length(_refunds) = 0
              AND jsonb_array_length(_held) = 0 AND jsonb_array_length(_lines) = 0
              AND jsonb_array_length(_malformed) = 0
              AND _totals.debit_normal = _totals.credit_normal
              AND _totals.debits = _totals.credits
              AND _totals.minted - _totals.burned = _totals.credit_normal,
        'accounts', (SELECT count(*) FROM ledger.balances),
        'projection_mismatches', _mismatches,
        'version_gaps', _gaps,
        'entry_mismatches', _entries,
        'snapshot_mismatches', _snapshots,
        'unbalanced_journals', _journals,
        'held_mismatches', _held,
        'line_event_mismatches', _lines,
        'over_refunded', _refunds,
        -- Totals over all of history grow without bound (every transfer adds to both sides), so
        -- they are shown with 8 decimals by round, not cast to the ledger's amount type.
        'trial_balance', jsonb_build_object(
            'debit_normal_balances', round(_totals.debit_normal, 8)::text,
            'credit_normal_balances', round(_totals.credit_normal, 8)::text,
            'total_debits', round(_totals.debits, 8)::text,
            'total_credits', round(_totals.credits, 8)::text),
        'supply', jsonb_build_object(
            'minted', round(_totals.minted, 8)::text,
            'burned', round(_totals.burned, 8)::text,
            'held', round(_totals.credit_normal, 8)::text,
            'in_wallets', round(_totals.wallets, 8)::text))
        -- Only when there are any: the replay's checks above did not run.
        || CASE WHEN jsonb_array_length(_malformed) > 0
                THEN jsonb_build_object('malformed_events', _malformed) ELSE '{}' END;
END
$$;

REVOKE ALL ON FUNCTION api.verify_projections(text, uuid, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.verify_projections(text, uuid, text, inet) TO atp_app, atp_dba, atp_auditor;
COMMENT ON FUNCTION api.verify_projections(text, uuid, text, inet) IS
'Checks every invariant of the books: balances equal the replay of the events, versions have no gaps, journal lines
add up to the balances, each line agrees with its event (account, side, amount, journal, kind, time) and its
balance_after with the lines before it (line_event_mismatches), snapshots equal the replay, every journal balances,
what each account reserves (held)
equals its pending holds, no transfer is refunded beyond its amount (over_refunded), the trial balance holds, and
everything held equals minted minus burned. ok is true only if all hold. Needs read. Example: SELECT api.verify_projections();';
