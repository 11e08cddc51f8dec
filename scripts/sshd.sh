#!/usr/bin/env bash
# Prepares an OpenSSH sshd for loopback in one folder:
#   scripts/sshd.sh DIR PORT [USER:TARGET ...]
# DIR gets a host key, a client key, sshd_config, and sap/PF2, sap/WP2 standing for the SAP
# inbound folders. The caller then runs: /usr/sbin/sshd -D -e -f DIR/sshd_config
# With USER:TARGET pairs (the local stack: one SFTP user per SAP system, as SAP has), each
# user gets its own key (DIR/client_USER) and its own authorized keys; the users exist only
# for this sshd, in DIR/passwd and DIR/group, with this account's uid (so sshd needs no
# other account), and sshd must be started through nss_wrapper:
#   LD_PRELOAD=$(cat DIR/nss_wrapper) NSS_WRAPPER_PASSWD=DIR/passwd NSS_WRAPPER_GROUP=DIR/group
set -euo pipefail
dir=$1 port=$2
shift 2
mkdir -p "$dir/sap/PF2" "$dir/sap/WP2"
[ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C maestro-relay-host -f "$dir/host_ed25519"
[ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C maestro-relay-client -f "$dir/client_ed25519"
cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
authorized="$dir/authorized_keys"
if [ $# -gt 0 ]; then
  authorized="$dir/authorized_keys.%u"
  cp /etc/passwd "$dir/passwd"
  cp /etc/group "$dir/group"
  cp "$dir/client_ed25519.pub" "$dir/authorized_keys.$(id -un)"
  for pair in "$@"; do
    user=${pair%%:*}
    [ -f "$dir/client_$user" ] || ssh-keygen -q -t ed25519 -N '' -C "maestro-relay-$user" -f "$dir/client_$user"
    cp "$dir/client_$user.pub" "$dir/authorized_keys.$user"
    echo "$user:x:$(id -u):$(id -g):SAP ${pair#*:} inbound (local stack):$dir/sap/${pair#*:}:/bin/sh" >>"$dir/passwd"
  done
  ls /usr/lib/*/libnss_wrapper.so | head -n1 >"$dir/nss_wrapper"
fi
# sshd needs its privilege-separation folder when started as root.
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
cat > "$dir/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $authorized
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel INFO
CFG
