#!/usr/bin/env bash
# Installs what the local stack and the tests need and a fresh machine lacks:
# a project virtualenv with moto[server] (S3, SQS, Secrets Manager), OpenSSH's sshd,
# ssh-keygen and the sftp client, OpenSSL's headers for libssh2, and libnss-wrapper with
# the openssl command for the password test rig. Idempotent: does
# nothing when all is there. Extra kinds, several at once (`scripts/bootstrap.sh ci package`):
# `ci` the template checkers and the SAM CLI (a venv of their own: their pins clash with
# moto's), `package` cargo-lambda and zig for `make package` and `sam build`, `security`
# checkov (its own venv again: its pins clash with the SAM CLI's), `deny` cargo-deny (built
# once into ~/.cache/maestro-relay/tools, outside the clone, so CI reuses it), `mutants`
# cargo-mutants (the same way; for `make mutants`, not CI).
set -euo pipefail
cd "$(dirname "$0")/.."

# venv DIR REQUIREMENTS: (re)creates DIR when the requirements file changed.
venv() {
  local dir=$1 requirements=$2 stamp
  stamp=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ "$(cat "$dir/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
    echo "bootstrap: installing $requirements into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$stamp" >"$dir/.requirements.sha256"
  fi
}

wants() { local kind; for kind in "${kinds[@]}"; do [ "$kind" != "$1" ] || return 0; done; return 1; }
kinds=("$@")

venv .venv scripts/requirements.txt
! wants ci || venv .venv-ci scripts/requirements-ci.txt
! wants package || venv .venv-pkg scripts/requirements-package.txt
! wants security || venv .venv-sec scripts/requirements-security.txt

DENY_VERSION=0.20.2
deny_root="$HOME/.cache/maestro-relay/tools"
if wants deny && ! "$deny_root/bin/cargo-deny" --version 2>/dev/null | grep -qx "cargo-deny $DENY_VERSION"; then
  echo "bootstrap: installing cargo-deny $DENY_VERSION into $deny_root"
  cargo install cargo-deny --locked --version "$DENY_VERSION" --root "$deny_root" --quiet
fi

MUTANTS_VERSION=27.1.0
if wants mutants && ! "$deny_root/bin/cargo-mutants" --version 2>/dev/null | grep -qx "cargo-mutants $MUTANTS_VERSION"; then
  echo "bootstrap: installing cargo-mutants $MUTANTS_VERSION into $deny_root"
  cargo install cargo-mutants --locked --version "$MUTANTS_VERSION" --root "$deny_root" --quiet
fi

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v sftp >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The password rig's throwaway user lives in its own passwd file, through nss_wrapper.
ls /usr/lib/*/libnss_wrapper.so >/dev/null 2>&1 || need_apt+=(libnss-wrapper)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
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
