#!/usr/bin/env bash
# Installs tritonclient[grpc] 2.73 into the project's .venv for tests/kserve, then proves the
# environment is unchanged. tritonclient declares protobuf<7 while cellserve's generated code
# needs protobuf 7 (tritonclient's own generated code runs on 7), so it goes in without its
# dependencies, followed by the ones its gRPC client imports. A plain `pip install tritonclient`
# would silently downgrade protobuf and break every cellserve import.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
protobuf_before="$(.venv/bin/python -c 'import google.protobuf as p; print(p.__version__)')"
.venv/bin/pip install -q --no-deps 'tritonclient[grpc]==2.73.0'
.venv/bin/pip install -q 'ml-dtypes<=0.5.4' 'numpy>=1.19.1' 'python-rapidjson>=0.9.1' 'urllib3>=2.0.7' 'packaging>=14.1'
.venv/bin/python -c '
import sys
import google.protobuf, cellserve, cellserve.api, cellserve_client, tritonclient.grpc, tritonclient.grpc.aio
assert google.protobuf.__version__ == sys.argv[1], f"protobuf changed: {sys.argv[1]} -> {google.protobuf.__version__}"
print(f"tritonclient installed; protobuf {google.protobuf.__version__} unchanged; cellserve imports")
' "${protobuf_before}"
