#!/usr/bin/env bash
# Dependencies checked offline: advisories (the RustSec snapshot in ../shared/advisory-db),
# licences and sources, by cargo-deny (installed by `scripts/bootstrap.sh deny`).
# cargo-deny reads its database as a git repository named after the default db-url; the
# snapshot is plain files, so a one-commit copy is made (again whenever the snapshot changes).
# The copy's commit and HEAD carry the snapshot's own date (SNAPSHOT.md), not the day of the
# copy: cargo-deny's maximum-db-staleness (deny.toml) then measures the age of the data.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=${ADVISORY_DB:-../shared/advisory-db}
dbs="$HOME/.cache/maestro-relay/advisory-dbs"
db="$dbs/advisory-db-3157b0e258782691"
stamp=$(cd "$snapshot" && find crates rust -type f | sort | xargs cat | sha256sum | cut -d' ' -f1)
# The snapshot's date: SNAPSHOT.md's "commit … of YYYY-MM-DD", else its newest advisory's.
taken=$(grep -oE 'of [0-9]{4}-[0-9]{2}-[0-9]{2}' "$snapshot/SNAPSHOT.md" 2>/dev/null | head -1 | cut -c4- || true)
[ -n "$taken" ] || taken=$(grep -rhoE '^(date|modified) = "[0-9]{4}-[0-9]{2}-[0-9]{2}' "$snapshot/crates" \
  | cut -d'"' -f2 | sort | tail -1)
[ -n "$taken" ] || { echo "deny: no date found for the snapshot in $snapshot" >&2; exit 1; }
stamp="$stamp $taken"
if [ "$(cat "$db/.git/snapshot.sha256" 2>/dev/null)" != "$stamp" ]; then
  [ ! -e "$db" ] || chmod -R u+w "$db"
  rm -rf "$db" && mkdir -p "$db"
  # shared/ has no write bits; the copy needs them to be replaced when the snapshot changes.
  cp -r --no-preserve=mode "$snapshot"/. "$db"/
  git -C "$db" init -q
  git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost add -A
  GIT_AUTHOR_DATE="${taken}T00:00:00Z" GIT_COMMITTER_DATE="${taken}T00:00:00Z" \
    git -C "$db" -c user.name=snapshot -c user.email=snapshot@localhost commit -qm "advisory-db snapshot of $taken"
  # cargo-deny takes the later of the commit's date and HEAD's mtime.
  touch -d "${taken}T00:00:00Z" "$db/.git/HEAD"
  echo "$stamp" >"$db/.git/snapshot.sha256"
fi
echo "deny: advisory snapshot of $taken ($(( ($(date +%s) - $(date -d "$taken" +%s)) / 86400 )) days old)"
# cargo metadata, offline, needs every crate of the lock file, every platform's.
cargo fetch --locked >/dev/null
"$HOME/.cache/maestro-relay/tools/bin/cargo-deny" --offline check --hide-inclusion-graph "$@"
