#!/usr/bin/env bash
# Dependencies checked offline: advisories (the RustSec snapshot in ../shared/advisory-db),
# licences and sources, by cargo-deny (installed by `scripts/bootstrap.sh deny`).
# cargo-deny reads its database as a git repository named after the default db-url; the
# snapshot is plain files, so a one-commit copy is made (again whenever the snapshot changes).
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=${ADVISORY_DB:-../shared/advisory-db}
dbs="$HOME/.cache/maestro-relay/advisory-dbs"
db="$dbs/advisory-db-3157b0e258782691"
stamp=$(cd "$snapshot" && find crates rust -type f | sort | xargs cat | sha256sum | cut -d' ' -f1)
if [ "$(cat "$db/.snapshot.sha256" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$db" && mkdir -p "$db"
  cp -r "$snapshot"/. "$db"/
  git -C "$db" init -q
  git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost add -A
  git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost commit -qm "advisory-db snapshot"
  echo "$stamp" >"$db/.snapshot.sha256"
fi
# cargo metadata, offline, needs every crate of the lock file, every platform's.
cargo fetch --locked >/dev/null
"$HOME/.cache/maestro-relay/tools/bin/cargo-deny" --offline check --hide-inclusion-graph "$@"
