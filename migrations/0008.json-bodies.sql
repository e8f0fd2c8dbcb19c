-- depends: 0007.write-path-checks
-- Response bodies in the contract's field order (ids first, as the OpenAPI schemas list them):
-- they are built as json, which keeps the order json_build_object wrote, where jsonb keeps its
-- own (keys by length). A function whose result changes from jsonb to json cannot be changed
-- by CREATE OR REPLACE, so those are dropped here, by their current signatures, and the
-- migrate creates them again from sql/ right after the migrations (in one transaction with
-- their grants and comments). That covers the api functions behind the HTTP routes and the
-- three helpers that build a body (ledger.user_json, ledger.hold_json, ledger.set_frozen). An
-- older signature is no obstacle to CREATE OR REPLACE and goes by ledger.drop_stale_functions.
-- Audit states, event data and everything ledger.audit_hash reads stay jsonb, unchanged.
SET LOCAL ROLE atp_owner;

DROP FUNCTION IF EXISTS api.create_user(uuid, text, text, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.get_user(uuid, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.update_user(uuid, text, text, text, bigint, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.delete_user(uuid, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.freeze_wallet(uuid, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.unfreeze_wallet(uuid, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.get_balance(uuid, timestamptz, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.get_history(uuid, integer, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.transfer(uuid, uuid, numeric, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.get_transfer(uuid, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.transfer_batch(uuid, jsonb, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.refund_transfer(uuid, numeric, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.mint(uuid, numeric, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.mint_batch(jsonb, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.burn(uuid, numeric, text, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.create_hold(uuid, uuid, numeric, text, integer, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.capture_hold(uuid, numeric, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.void_hold(uuid, uuid, text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.get_hold(uuid, text, uuid, text, inet);
DROP FUNCTION IF EXISTS api.list_events(text, integer, text, uuid, text, inet);
DROP FUNCTION IF EXISTS ledger.user_json(uuid);
DROP FUNCTION IF EXISTS ledger.hold_json(ledger.holds);
DROP FUNCTION IF EXISTS ledger.set_frozen(ledger.request_context, uuid, boolean, text);

-- A replayed response is the stored text, in the order it was first sent. Responses stored
-- before this migration keep the order jsonb gave them until they expire.
ALTER TABLE ledger.idempotency_keys ALTER COLUMN response_body TYPE json USING response_body::json;

RESET ROLE;
