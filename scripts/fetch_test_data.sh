#!/usr/bin/env bash
# Fetch the official FHIR R4 example package (CC0) used by the tests and by
# scripts/build_definitions.py. Idempotent: does nothing when already present.
# Uses npm when available, else the FHIR package registry (packages.fhir.org) over curl.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/fhir
pkg=hl7.fhir.r4.examples
ver=4.0.1
if [ -f "$dest/$pkg-$ver/package/package.json" ]; then exit 0; fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if command -v npm >/dev/null 2>&1 && ( cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null 2>&1 ); then
  :
else
  echo "npm unavailable or failed; fetching $pkg@$ver from packages.fhir.org" >&2
  curl -fsSL --retry 3 "https://packages.fhir.org/$pkg/$ver" -o "$tmp/$pkg-$ver.tgz"
fi
mkdir -p "$dest/$pkg-$ver.partial"
tar xzf "$tmp/$pkg-$ver.tgz" -C "$dest/$pkg-$ver.partial"
# sanity: the package must hold the examples the round-trip test reads
n=$(find "$dest/$pkg-$ver.partial/package" -maxdepth 1 -name '*.json' | wc -l)
if [ "$n" -lt 1000 ]; then
  echo "fetched $pkg@$ver looks incomplete ($n JSON files)" >&2
  rm -rf "$dest/$pkg-$ver.partial"
  exit 1
fi
rm -rf "$dest/$pkg-$ver"
mv "$dest/$pkg-$ver.partial" "$dest/$pkg-$ver"
echo "fetched $pkg@$ver ($n files) into $dest/$pkg-$ver"
