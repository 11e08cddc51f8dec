#!/usr/bin/env bash
# What is deployed is what is tested: checks the bootstraps `sam build` made (not the debug
# binaries `make test` runs) and runs them on the local stack through the Lambda Runtime
# API stand-in, webhook → S3 → SQS → worker → Kinaxis simulator → SFTP, one job delivered.
#   scripts/smoke_built.sh [BUILD_DIR]        BUILD_DIR defaults to .aws-sam/build
#   PACKAGE_DIR=…/lambda scripts/smoke_built.sh   also checks that the bootstraps are the
#                                                 very bytes `make package` zipped
# Needs the local stack's parts (scripts/bootstrap.sh) and the simulator's debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-.aws-sam/build}

# glibc (and the kernel's vDSO) is all provided.al2023 promises: anything else — OpenSSL,
# zlib — must be linked in, or the function fails at start in Lambda and nowhere here.
glibc='^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|(/lib64/|/lib/)?ld-linux(-x86-64|-aarch64)\.so\.[12])$'
for fn in WebhookFunction WorkerFunction; do
  bin=$BUILD/$fn/bootstrap
  [ -x "$bin" ] || { echo "smoke: $bin is missing: run 'make sam-build'" >&2; exit 1; }
  linked=$(ldd "$bin" | awk '{print $1}')
  echo "smoke: $fn ($(stat -c %s "$bin") bytes) links $(echo $linked)"
  others=$(grep -Ev "$glibc" <<<"$linked" || true)
  [ -z "$others" ] || { echo "smoke: $fn needs more than glibc: $others" >&2; exit 1; }
done

if [ -n "${PACKAGE_DIR:-}" ]; then
  for pair in webhook:WebhookFunction worker:WorkerFunction; do
    python3 - "$PACKAGE_DIR/${pair%%:*}/bootstrap.zip" "$BUILD/${pair#*:}/bootstrap" <<'PY'
import hashlib, sys, zipfile
packaged = hashlib.sha256(zipfile.ZipFile(sys.argv[1]).read("bootstrap")).hexdigest()
built = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
print(f"smoke: {sys.argv[2]} sha256 {built}; make package {packaged}")
sys.exit(0 if built == packaged else "smoke: sam build and make package made different binaries")
PY
  done
fi

# demo.py runs TARGET_DIR/webhook and TARGET_DIR/worker: point those names at the bootstraps.
bins=$(mktemp -d)
trap 'scripts/stack.sh down >/dev/null; rm -rf "$bins"' EXIT
ln -s "$PWD/$BUILD/WebhookFunction/bootstrap" "$bins/webhook"
ln -s "$PWD/$BUILD/WorkerFunction/bootstrap" "$bins/worker"
scripts/stack.sh down >/dev/null
scripts/stack.sh up
.venv/bin/python scripts/demo.py "$bins" | tee "$bins/demo.out"
grep -q '^==> delivered: ' "$bins/demo.out" || { echo "smoke: no delivery" >&2; exit 1; }
echo "smoke: the built bootstraps delivered one job"
