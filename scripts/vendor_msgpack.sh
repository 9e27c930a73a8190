#!/usr/bin/env bash
# Regenerates web/msgpack.mjs, the page's msgpack codec: @msgpack/msgpack from npm at
# the pinned version, its ES module build bundled by esbuild into one file the browser can
# import without a build step, with the package's licence beside it. Run it after changing
# a version; commit what it writes. Needs node and npm (the npm registry).
set -euo pipefail
MSGPACK_VERSION=3.1.3
ESBUILD_VERSION=0.28.2
cd "$(dirname "$0")/.."
out=web
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@msgpack/msgpack@$MSGPACK_VERSION" >/dev/null && tar xzf msgpack-msgpack-"$MSGPACK_VERSION".tgz)
(cd "$work" && npm install --silent --no-save --no-audit --no-fund "esbuild@$ESBUILD_VERSION" >/dev/null)
mkdir -p "$out"
target="$(pwd)/$out"
# From inside the unpacked package, so the bundle's path comments do not name the temp dir.
(cd "$work" && node_modules/.bin/esbuild package/dist.esm/index.mjs --bundle --format=esm --target=es2022 \
    --legal-comments=none --log-level=warning \
    --banner:js="// @msgpack/msgpack $MSGPACK_VERSION (ISC licence: msgpack-LICENSE.txt), bundled by esbuild $ESBUILD_VERSION by scripts/vendor_msgpack.sh. Do not edit." \
    --outfile="$target/msgpack.mjs")
cp "$work/package/LICENSE" "$out/msgpack-LICENSE.txt"
echo "wrote $out/msgpack.mjs ($(wc -c <"$out/msgpack.mjs") bytes) and $out/msgpack-LICENSE.txt"
