#!/usr/bin/env bash
# Fetch the official FHIR R4 example package (CC0) used by the tests and by
# scripts/build_definitions.py. Idempotent: does nothing when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/fhir
pkg=hl7.fhir.r4.examples
ver=4.0.1
if [ -f "$dest/$pkg-$ver/package/package.json" ]; then exit 0; fi
mkdir -p "$dest"
tmp=$(mktemp -d)
( cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null )
mkdir -p "$dest/$pkg-$ver"
tar xzf "$tmp/$pkg-$ver.tgz" -C "$dest/$pkg-$ver"
rm -rf "$tmp"
echo "fetched $pkg@$ver into $dest/$pkg-$ver"
