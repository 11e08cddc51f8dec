#!/usr/bin/env bash
# Prepares an OpenSSH sshd for loopback in one folder:
#   scripts/sshd.sh DIR PORT
# DIR gets a host key, a client key, sshd_config, and sap/PF2, sap/WP2 standing for the SAP
# inbound folders. The caller then runs: /usr/sbin/sshd -D -e -f DIR/sshd_config
set -euo pipefail
dir=$1 port=$2
mkdir -p "$dir/sap/PF2" "$dir/sap/WP2"
[ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C maestro-relay-host -f "$dir/host_ed25519"
[ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C maestro-relay-client -f "$dir/client_ed25519"
cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
# sshd needs its privilege-separation folder when started as root.
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
cat > "$dir/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel INFO
CFG
