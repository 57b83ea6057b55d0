#!/usr/bin/env bash
# The one way to (re)generate code: the Python bindings of proto/accord/v1 beside the
# .proto files, and the blocking client (client/sync.py) from the async client's classes.
# The output is committed; CI runs this with --check and fails on any difference.
# proto/google/rpc is shipped for other languages only: Python has googleapis-common-protos.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python -m grpc_tools.protoc -I "$here" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  "$here"/accord/v1/*.proto 2> >(grep -v "^Writing mypy to" >&2)
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -x '__pycache__' -x '*.proto' -x '__init__.py' "$out/accord/v1" "$here/accord/v1" >/dev/null; then
    diff -r -x '__pycache__' -x '*.proto' -x '__init__.py' "$out/accord/v1" "$here/accord/v1" | head -40
    echo "generated code in proto/accord/v1 is stale: run proto/generate.sh" >&2
    exit 1
  fi
  python -m accord.client.codegen --check
  echo "generated code is fresh"
else
  find "$here/accord/v1" -name '*_pb2*' -delete
  cp "$out"/accord/v1/* "$here/accord/v1/"
  python -m accord.client.codegen
fi
