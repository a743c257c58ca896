"""`cellserve serve --precision int8` over the wire, in both server shapes: ListModels and the
client CLI report the precision; keystrokes, pastes, completions and suggestions are served by
the int8 module (near the fp32 oracle, not equal to it); gates stay fp32. A bad --precision is a
one-line error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cellserve.nn import precision as prec
from cellserve.nn.cells import run_with_gates
from cellserve.nn.checkpoint import load_model
from cellserve.nn.decode import beam_search, complete
from cellserve_client import Client

from .conftest import SHAPES, ServerProcess, start_server

pytestmark = pytest.mark.skipif(
    "int8" not in prec.available(torch.device("cpu")), reason="this torch has no quantized CPU engine"
)
TEXT = "def main(argv):\n    for i, x in enumerate(argv):\n        print(i, x.strip())\n"


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def int8_server(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    s = start_server(model_dir, "--precision", "int8", *SHAPES[request.param])
    try:
        yield s
    finally:
        s.terminate()


def test_int8_served_over_the_wire(int8_server: ServerProcess, model_dir: Path) -> None:
    lm = load_model(model_dir / "tiny-lstm")
    q = prec.convert(lm.model, "int8")
    ids = lm.vocab.encode_tensor(TEXT)
    with torch.inference_mode():
        ref = torch.log_softmax(lm.model(ids[None])[0][0].double(), -1)
        own = torch.log_softmax(q(ids[None])[0][0].double(), -1)
    noise = (own - ref).abs().max().item()
    with Client(int8_server.target) as client:
        models = {m.name: m for m in client.models()}
        assert models["tiny-lstm"].precision == models["tiny-gru"].precision == "int8"
        assert models["tiny-lstm"].precision_loss is None  # the test models record no measurement
        with client.open("tiny-lstm") as s:
            # keystrokes then a paste (one prefill), log-probs of every character
            lps = [s.append(ch, logprobs=True).logprobs[0] for ch in TEXT[:20]]
            lps += list(s.append(TEXT[20:], logprobs=True).logprobs)
            want = [ref[p - 1, ids[p]].item() for p in range(1, len(TEXT))]
            dev = [abs(a - b) for a, b in zip(lps[1:], want, strict=True)]
            assert max(dev) < 3 * noise + 1e-3  # near fp32 ...
            assert max(dev) > 1e-4  # ... and not fp32: the int8 module served it
        with client.open("tiny-lstm") as s:
            # one full-sequence call (within the 64-character budget: one chunk), the shapes of
            # the offline decoders: int8 results depend on how the text was cut into calls
            context = TEXT[:60]
            s.append(context)
            got = "".join(c.text for c in s.complete(max_chars=10).collect())
            assert got == complete(q, lm.vocab, context, max_chars=10)[0]
            sugg = s.suggest(3, "line", 6)
            want_s = beam_search(q, lm.vocab, context, n=3, until="line", max_chars=6)
            assert [x.text for x in sugg] == [x.text for x in want_s]
        with client.open("tiny-lstm") as s:
            gates = s.append("ab(", gates=True).gates  # fp32 reference cells, from the zero state
            with torch.inference_mode():
                _, _, trace = run_with_gates(lm.model, lm.vocab.encode_tensor("ab(")[None])
            first = trace[0].gates[trace[0].names[0]][:, 0].mean(dim=-1).tolist()
            assert len(gates) == 3
            assert max(abs(a - b) for a, b in zip(gates[0][0].layers, first, strict=True)) < 1e-5


def test_client_cli_lists_the_precision(int8_server: ServerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cellserve_client._cli", "--target", int8_server.target, "models"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert any(line.startswith("tiny-lstm") and line.endswith("\tint8") for line in lines), lines


@pytest.mark.parametrize(
    ("args", "env"), [(["--precision", "int4"], {}), ([], {"CELLSERVE_PRECISION": "half"})], ids=["flag", "env"]
)
def test_bad_precision_is_a_one_line_error(args: list[str], env: dict[str, str]) -> None:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "cellserve.cli", "serve", "--port", "0", *args],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert (
        "precision" in lines[0]
        and "'int8'" in lines[0]
        and ("--precision" in lines[0] or "CELLSERVE_PRECISION" in lines[0])
    )
