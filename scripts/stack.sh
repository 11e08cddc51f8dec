#!/usr/bin/env bash
# The local stack of real parts: moto_server (S3, SQS, Secrets Manager), OpenSSH sshd with
# folders for PF2 and WP2, and the Kinaxis simulator. All state in .local/stack.
#   scripts/stack.sh up | down | env
# `up` is idempotent (a running stack is left as it is) and writes .local/stack/env, the
# environment of both functions against the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.local/stack
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SIM_BIN=${SIM_BIN:-$TARGET_DIR/debug/kinaxis-sim}

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "stack: $2 did not start listening on port $1; see $STATE/$2.log" >&2
  return 1
}

up() {
  if alive moto && alive sshd && alive sim; then
    echo "stack: already up ($STATE/env)"
    return 0
  fi
  down >/dev/null
  scripts/bootstrap.sh
  [ -x "$SIM_BIN" ] || { echo "stack: $SIM_BIN missing: run 'cargo build -p kinaxis-sim' (make does)" >&2; exit 1; }
  mkdir -p "$STATE"
  local moto_port sshd_port sim_port
  moto_port=$(free_port); sshd_port=$(free_port); sim_port=$(free_port)

  .venv/bin/moto_server -H 127.0.0.1 -p "$moto_port" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  # One SFTP user and key per SAP system, as SAP has them: rotating WP2's key leaves PF2 alone.
  local sftp="$PWD/$STATE/sftp"
  scripts/sshd.sh "$sftp" "$sshd_port" sap-pf2:PF2 sap-wp2:WP2
  LD_PRELOAD="$(cat "$sftp/nss_wrapper")" NSS_WRAPPER_PASSWD="$sftp/passwd" NSS_WRAPPER_GROUP="$sftp/group" \
    /usr/sbin/sshd -D -e -f "$sftp/sshd_config" >"$STATE/sshd.log" 2>&1 &
  echo $! >"$STATE/sshd.pid"
  "$SIM_BIN" --port "$sim_port" --rows "${SIM_ROWS:-2500}" --first-page 1000 >"$STATE/sim.log" 2>&1 &
  echo $! >"$STATE/sim.pid"
  wait_port "$moto_port" moto
  wait_port "$sshd_port" sshd
  wait_port "$sim_port" sim

  .venv/bin/python scripts/local_aws.py \
    --endpoint "http://127.0.0.1:$moto_port" \
    --kinaxis-url "http://127.0.0.1:$sim_port" \
    --sftp-port "$sshd_port" \
    --sftp-dir "$PWD/$STATE/sftp" >"$STATE/env"
  echo "stack: up — moto :$moto_port, sshd :$sshd_port, kinaxis-sim :$sim_port ($STATE/env)"
  cat <<HOW
stack: by hand (docs/runbook.md has the rest):
  set -a; . $STATE/env; set +a                     # the functions' environment in this shell
  $TARGET_DIR/debug/maestro-relay --env-file $STATE/env send-test events/webhook-http-api-pf.json
  $TARGET_DIR/debug/maestro-relay --env-file $STATE/env jobs
HOW
}

down() {
  for name in sim sshd moto; do
    if alive "$name"; then kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true; fi
  done
  rm -rf "$STATE"
  echo "stack: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) cat "$STATE/env" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
