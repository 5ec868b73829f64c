#!/usr/bin/env bash
# Fetch the external FHIR profile packages the validation tests use: the International
# Patient Summary IG (profiles + examples, a profile set none of us wrote) and the HL7
# terminology package (the code systems and value sets its bindings need).
# Each lands unpacked in .cache/fhir/<name>-<version>/package/. Idempotent: a package that
# is already present is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/fhir
packages=("hl7.fhir.uv.ips@2.0.0" "hl7.terminology.r4@7.0.1")
mkdir -p "$dest"
for spec in "${packages[@]}"; do
  pkg=${spec%@*}
  ver=${spec#*@}
  target="$dest/$pkg-$ver"
  if [ -f "$target/package/package.json" ]; then continue; fi
  tmp=$(mktemp -d)
  ( cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null )
  rm -rf "$target.partial"
  mkdir -p "$target.partial"
  tar xzf "$tmp/$pkg-$ver.tgz" -C "$target.partial"
  rm -rf "$tmp" "$target"
  mv "$target.partial" "$target"
  echo "fetched $pkg@$ver into $target"
done
