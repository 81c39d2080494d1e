#!/usr/bin/env bash
# Generates the protocol code from proto/ with protobufjs (pbjs for the code, pbts for its
# types). Run by `npm run build`; the output (shared/proto/generated.*) is not committed, so it
# can never be stale.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p shared/proto
out=shared/proto/generated
# Up to date: nothing to do (the build runs this every time).
if [ -f "$out.d.ts" ] && [ -z "$(find proto scripts/gen-proto.sh -newer "$out.d.ts" -type f)" ]; then exit 0; fi
# --es6 --wrap es6: an ES module; --force-number: uint64/int64 as Long objects (exact), converted
#   at the transport's edge; --no-verify/--no-convert/--no-delimited: unused, less code;
# --keep-case is not set: fields are camelCase in TypeScript.
# The files: proto/files.txt, one path relative to proto/ a line ('#' starts a comment); the
#   reflection service reads the same list.
mapfile -t files < <(sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e '/^$/d' proto/files.txt)
[ "${#files[@]}" -gt 0 ] || { echo "gen-proto: proto/files.txt lists no file" >&2; exit 1; }
npx pbjs --target static-module --wrap es6 --es6 --force-number \
  --no-verify --no-convert --no-delimited --no-typeurl \
  --path proto -o "$out.js" \
  "${files[@]/#/proto/}"
# 64-bit integers as plain numbers at run time too (pbjs's --force-number only sets the types):
# without this, protobufjs decodes them as Long objects whenever the 'long' package is present.
sed -i 's|^import \$protobuf from "protobufjs/minimal.js";$|&\n$protobuf.util.Long = undefined;\n$protobuf.configure();|' "$out.js"
grep -q '^\$protobuf.configure();$' "$out.js" || { echo "gen-proto: could not patch $out.js" >&2; exit 1; }
npx pbts --no-comments -o "$out.d.ts" "$out.js"
