#!/usr/bin/env bash
# Build the operator's console (console/src) into control_plane/console/static: one
# minified ES module, one stylesheet, the page and the third-party licences. The output is
# committed, so the control plane serves the console with no network and no Node.js.
#   scripts/build_console.sh               npm ci (package-lock.json), then build
#   scripts/build_console.sh --no-install  build with the node_modules already there
#   scripts/build_console.sh --check       build elsewhere; fail if the committed build differs
set -euo pipefail
cd "$(dirname "$0")/../console"
COMMITTED=../control_plane/console/static
OUT=$COMMITTED
if [ "${1:-}" = "--check" ]; then
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi
if [ "${1:-}" != "--no-install" ]; then
  npm ci --no-audit --no-fund
fi
mkdir -p "$OUT"
npx esbuild src/main.js --bundle --minify --format=esm --target=es2020 \
  --legal-comments=none --charset=utf8 \
  --banner:js="/*! Meridian console. Bundles d3-geo, d3-array, internmap, topojson-client (ISC), uPlot (MIT), world-atlas (ISC; Natural Earth data, public domain): see THIRD_PARTY_LICENSES.txt */" \
  --banner:css="/*! Meridian console. Includes uPlot's stylesheet (MIT): see THIRD_PARTY_LICENSES.txt */" \
  --outfile="$OUT/console.js"
cp src/index.html "$OUT/index.html"
{
  echo "Third-party software in console.js and console.css, built from console/ by"
  echo "scripts/build_console.sh. The land shapes come from Natural Earth"
  echo "(https://www.naturalearthdata.com/), public domain, as packaged by world-atlas."
  for pkg in d3-geo d3-array internmap topojson-client uplot world-atlas; do
    dir="node_modules/$pkg"
    version=$(node -p "require('./$dir/package.json').version")
    licence=$(node -p "require('./$dir/package.json').license")
    printf '\n==== %s %s (%s) ====\n\n' "$pkg" "$version" "$licence"
    cat "$dir"/LICENSE*
  done
} >"$OUT/THIRD_PARTY_LICENSES.txt"
if [ "$OUT" != "$COMMITTED" ]; then
  diff -r "$OUT" "$COMMITTED" && echo "the committed console build is fresh"
else
  ls -l "$OUT"
fi
