# Shell helpers for .ci/services.sh and .ci/label-studio.sh (sourced, not run).

say() { printf 'services: %s\n' "$*"; }

wait_for() {  # wait_for NAME SECONDS COMMAND...
  local name=$1 seconds=$2
  shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "services: $name is still not answering after ${seconds} s" >&2
  exit 1
}
