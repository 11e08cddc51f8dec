#!/usr/bin/env bash
# Installs what the local stack and the tests need and a fresh machine lacks:
# a project virtualenv with moto[server] (S3, SQS, Secrets Manager), OpenSSH's sshd,
# ssh-keygen and the sftp client. Idempotent: does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "bootstrap: creating $VENV with moto[server]"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
fi

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v sftp >/dev/null 2>&1 || need_apt+=(openssh-client)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install these packages (as root): ${need_apt[*]}" >&2
    exit 1
  fi
fi
