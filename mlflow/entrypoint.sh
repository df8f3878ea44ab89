#!/usr/bin/env bash
# Entry point of the freshet MLflow tracking-server image: checks the settings it needs, renders
# the basic-auth config, then execs `mlflow server` with the artifact proxy and basic auth on.
# Extra arguments are passed on to `mlflow server` (e.g. --workers 4).
set -euo pipefail

die() {
  printf 'mlflow-entrypoint: error: %s\n' "$*" >&2
  exit 64
}

require() {
  local name=$1 what=$2
  if [[ -z "${!name:-}" ]]; then
    die "$name is not set: $what"
  fi
}

require MLFLOW_BACKEND_STORE_URI \
  "the tracking database, e.g. postgresql+psycopg2://mlflow:PASSWORD@postgres:5432/mlflow"
require MLFLOW_ARTIFACTS_DESTINATION \
  "where the artifact proxy stores files, e.g. s3://freshet-mlflow/"
require MLFLOW_FLASK_SERVER_SECRET_KEY \
  "the key the basic-auth app signs its sessions and CSRF tokens with (e.g. openssl rand -hex 32)"

case "$MLFLOW_ARTIFACTS_DESTINATION" in
  s3://*)
    require AWS_ACCESS_KEY_ID "credentials for $MLFLOW_ARTIFACTS_DESTINATION"
    require AWS_SECRET_ACCESS_KEY "credentials for $MLFLOW_ARTIFACTS_DESTINATION"
    ;;
esac

# MLflow only needs the admin password on the first start (to create the admin user) and then
# ignores it, so it is not required here; but a short one would fail deep inside the app.
if [[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" && ${#MLFLOW_AUTH_ADMIN_PASSWORD} -lt 12 ]]; then
  die "MLFLOW_AUTH_ADMIN_PASSWORD must be at least 12 characters (MLflow's password policy)"
fi

template=${MLFLOW_AUTH_CONFIG_TEMPLATE:-/etc/mlflow/basic_auth.ini}
runtime_dir=${MLFLOW_RUNTIME_DIR:-/tmp/mlflow}
[[ -r "$template" ]] || die "auth config template $template is not readable"
mkdir -p "$runtime_dir"
chmod 700 "$runtime_dir"
export MLFLOW_AUTH_CONFIG_PATH="$runtime_dir/basic_auth.ini"

# The rendered file can hold a database password, hence mode 0600 in a private directory.
python - "$template" "$MLFLOW_AUTH_CONFIG_PATH" <<'PY'
import os
import re
import sys

template, target = sys.argv[1:]
with open(template) as handle:
    text = handle.read()
uri = os.environ.get("MLFLOW_AUTH_DATABASE_URI", "")
if uri:
    if "\n" in uri or "\r" in uri:
        sys.exit("mlflow-entrypoint: error: MLFLOW_AUTH_DATABASE_URI must be a single line")
    # configparser interpolates '%': double it so URL-encoded passwords survive.
    line = "database_uri = " + uri.replace("%", "%%")
    text, count = re.subn(r"(?m)^database_uri[ \t]*=.*$", lambda _match: line, text)
    if count != 1:
        sys.exit(f"mlflow-entrypoint: error: {template} must contain exactly one database_uri line")
descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(descriptor, "w") as handle:
    handle.write(text)
PY

exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host 0.0.0.0 \
  --port 5000 \
  --app-name basic-auth \
  "$@"
