#!/usr/bin/env bash
# Creates the freshet databases on the first start of an empty PostgreSQL volume (the postgres
# image runs /docker-entrypoint-initdb.d/* only then). One role per service, each owning its
# databases:
#   airflow -> airflow      (Airflow metadata + Celery result backend)
#   mlflow  -> mlflow       (tracking/registry store)
#              mlflow_auth  (basic-auth users and grants, kept apart from tracking migrations)
#   label_studio -> label_studio (Label Studio's projects, tasks and annotations)
# Passwords come from the container environment; psql's :'var' quoting keeps them literal.
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD must be set for the postgres service}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set for the postgres service}"
: "${LABEL_STUDIO_DB_PASSWORD:?LABEL_STUDIO_DB_PASSWORD must be set for the postgres service}"

psql -v ON_ERROR_STOP=1 \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" \
  -v mlflow_password="$MLFLOW_DB_PASSWORD" \
  -v label_studio_password="$LABEL_STUDIO_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE label_studio LOGIN PASSWORD :'label_studio_password';
CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE label_studio OWNER label_studio;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE label_studio FROM PUBLIC;
SQL
