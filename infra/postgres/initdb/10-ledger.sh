#!/bin/sh
# The run ledger's database and the role that owns it, from LEDGER_DB_NAME,
# LEDGER_DB_USER and LEDGER_DB_PASSWORD. The postgres image runs the scripts in
# /docker-entrypoint-initdb.d/ once, on an empty data directory; the password is read
# inside psql (\getenv), so it is never on a command line.
set -eu
: "${LEDGER_DB_NAME:?set LEDGER_DB_NAME}"
: "${LEDGER_DB_USER:?set LEDGER_DB_USER}"
: "${LEDGER_DB_PASSWORD:?set LEDGER_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
\getenv ledger_db LEDGER_DB_NAME
\getenv ledger_user LEDGER_DB_USER
\getenv ledger_password LEDGER_DB_PASSWORD
-- Not a superuser, cannot create databases or roles: it owns the ledger and nothing else.
CREATE ROLE :"ledger_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'ledger_password';
CREATE DATABASE :"ledger_db" OWNER :"ledger_user";
-- Nobody else (superusers aside) may connect to the ledger.
REVOKE ALL ON DATABASE :"ledger_db" FROM PUBLIC;
\connect :"ledger_db"
-- `etl db upgrade` creates the ledger's tables as its role, in a schema that role owns.
ALTER SCHEMA public OWNER TO :"ledger_user";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
