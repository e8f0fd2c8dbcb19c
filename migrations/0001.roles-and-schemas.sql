-- Roles are cluster-wide, so they are created only when missing (several databases of one
-- cluster, e.g. the test template and its copies, share them).
DO $$
BEGIN
    -- Owns every object; nobody logs in as it.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'atp_owner') THEN
        CREATE ROLE atp_owner NOLOGIN;
    END IF;
    -- The HTTP layer logs in as this role: EXECUTE on api functions, nothing on tables,
    -- and every call must carry a valid API key hash.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'atp_app') THEN
        CREATE ROLE atp_app LOGIN;
    END IF;
    -- Group role for people at a psql prompt: every api function, without an API key;
    -- their database role is recorded in the audit log instead.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'atp_dba') THEN
        CREATE ROLE atp_dba NOLOGIN;
    END IF;
    -- Group role for auditors: reads every ledger table and runs the read and verify functions.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'atp_auditor') THEN
        CREATE ROLE atp_auditor NOLOGIN;
    END IF;
    -- The migrating role creates everything as atp_owner (SET ROLE), so it must be a member.
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT atp_owner TO %I', current_user);
    END IF;
END
$$;

CREATE SCHEMA ledger AUTHORIZATION atp_owner;
CREATE SCHEMA api AUTHORIZATION atp_owner;

REVOKE ALL ON SCHEMA ledger FROM PUBLIC;
REVOKE ALL ON SCHEMA api FROM PUBLIC;
GRANT USAGE ON SCHEMA api TO atp_app, atp_dba, atp_auditor;
GRANT USAGE ON SCHEMA ledger TO atp_auditor;

-- Functions are never executable by PUBLIC unless granted on purpose.
ALTER DEFAULT PRIVILEGES FOR ROLE atp_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE atp_owner IN SCHEMA ledger GRANT SELECT ON TABLES TO atp_auditor;
