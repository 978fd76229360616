#!/usr/bin/env bash
# One PostgreSQL server, three databases, each owned by its own role:
#   factory  the serving store (FACTORY_DB_URL)
#   dagster  the Dagster instance: runs, event log, schedules (deploy/dagster.yaml)
#   mlflow   MLflow's tracking and model registry store (the mlflow service)
# The postgres image runs this once, when its data volume is empty. The passwords come from the
# environment (deploy/.env) and reach SQL as psql variables, quoted by psql itself.
# To run it against a PostgreSQL server of your own (Kubernetes, a managed service), set
# POSTGRES_USER to an administrator and the three *_PASSWORD variables, then run it with psql access.
set -euo pipefail

: "${SERVING_DB_PASSWORD:?set SERVING_DB_PASSWORD}"
: "${DAGSTER_PG_PASSWORD:?set DAGSTER_PG_PASSWORD}"
: "${TRACKING_DB_PASSWORD:?set TRACKING_DB_PASSWORD}"

create_database() {
  local name="$1" password="$2"
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v name="$name" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'name', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \gexec
SQL
}

create_database factory "$SERVING_DB_PASSWORD"
create_database dagster "$DAGSTER_PG_PASSWORD"
create_database mlflow "$TRACKING_DB_PASSWORD"
echo "databases factory, dagster and mlflow are ready, each owned by its role of the same name"
