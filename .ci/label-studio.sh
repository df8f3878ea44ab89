#!/usr/bin/env bash
# Label Studio Community Edition for tests/test_labelling.py, run by .ci/services.sh and, when nothing answers
# as the tests start, by their fixture: in its own virtualenv (its Django pins do not belong in our lock), on
# loopback with a local data dir (SQLite), a preset user and a preset legacy API token. Idempotent: installs
# only when missing, starts only when not answering. The settings below are the tests' defaults
# (tests/label_studio_support.py reads the same variables).
set -euo pipefail

# shellcheck source=.ci/service-helpers.sh
. "$(dirname "$0")/service-helpers.sh"

label_studio_venv=${FRESHET_LABEL_STUDIO_VENV:-/opt/label-studio-venv}
label_studio_port=${FRESHET_LABEL_STUDIO_PORT:-8089}
label_studio_data=${FRESHET_LABEL_STUDIO_DATA:-/var/lib/freshet-label-studio}
# A test-only secret on loopback; the compose deployment takes its token from .env.
label_studio_token=${FRESHET_LABEL_STUDIO_TOKEN:-6f7265736865742d63692d6c6162656c2d737475}
label_studio_url="http://127.0.0.1:${label_studio_port}"

label_studio_answers() {  # /health says UP and the preset token is accepted: it is our server, not another
  curl -sf -m 5 "$label_studio_url/health" | grep -q UP \
    && curl -sf -m 10 -o /dev/null -H "Authorization: Token $label_studio_token" "$label_studio_url/api/current-user/whoami"
}

if label_studio_answers; then
  say "Label Studio answering on $label_studio_url"
else
  if curl -s -m 5 -o /dev/null "$label_studio_url/"; then
    # Label Studio would move to the next port without a word; fail instead, naming the port.
    echo "services: port $label_studio_port answers but not as our Label Studio (wrong token or another" \
         "program): stop it or set FRESHET_LABEL_STUDIO_PORT" >&2
    exit 1
  fi
  if [ ! -x "$label_studio_venv/bin/label-studio" ]; then
    say "installing Label Studio into $label_studio_venv (~2 min)"
    python=${FRESHET_LABEL_STUDIO_PYTHON:-python3}  # 3.10 to 3.12
    "$python" -m venv "$label_studio_venv" || {
      echo "services: $python cannot create a virtualenv (Debian: apt-get install python3-venv)" >&2; exit 1; }
    # sentry-sdk 3 removed an option Label Studio 1.23 passes at start ("Unknown option 'send_default_pii'").
    "$label_studio_venv/bin/pip" install -q "label-studio==1.23.2" "sentry-sdk<3"
  fi
  mkdir -p "$label_studio_data"
  say "starting Label Studio on $label_studio_url (data in $label_studio_data)"
  # env -u: Label Studio also reads un-prefixed USERNAME/PASSWORD/HOST/PORT, which shells and CI runners set.
  env -u USERNAME -u PASSWORD -u HOST -u PORT \
    LABEL_STUDIO_BASE_DATA_DIR="$label_studio_data" \
    LABEL_STUDIO_USERNAME=freshet-ci@example.com LABEL_STUDIO_PASSWORD=freshet-ci-password \
    LABEL_STUDIO_USER_TOKEN="$label_studio_token" LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
    LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    setsid nohup "$label_studio_venv/bin/label-studio" start --no-browser --host 127.0.0.1 \
      --port "$label_studio_port" >>"$label_studio_data/label-studio.log" 2>&1 </dev/null &
  echo $! >"$label_studio_data/label-studio.pid"
  # ~45 s on a loaded 2-core machine; the first start also migrates its database.
  wait_for "Label Studio (log: $label_studio_data/label-studio.log)" 240 label_studio_answers
  say "Label Studio answering on $label_studio_url"
fi
