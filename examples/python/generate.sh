#!/usr/bin/env bash
# Generates the Python stubs of the tradewatch v1 API from the repository's
# proto/ into examples/python/gen/ (git-ignored), with the protoc that the
# grpcio-tools package carries: no system protoc is needed.
#
# Usage: examples/python/generate.sh   (with the requirements installed in
# the python3 on PATH, e.g. an activated venv; or PYTHON=/path/to/python)
#
# google.rpc (error_details_pb2 for BadRequest, status_pb2) is not
# generated: googleapis-common-protos, which grpcio-status depends on, ships
# it, and proto/google/rpc/error_details.proto is a copy of the same file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=$HERE/gen

rm -rf "$OUT"
mkdir -p "$OUT"
cd "$ROOT"
# grpc_tools.protoc adds the include path of its bundled well-known types
# (google/protobuf/timestamp.proto) by itself.
"$PYTHON" -m grpc_tools.protoc -I proto \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    proto/tradewatch/v1/*.proto
echo "generated in ${OUT#"$ROOT"/}/: $(cd "$OUT" && find tradewatch -name '*.py' | sort | paste -sd ' ' -)"
