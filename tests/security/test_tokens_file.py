"""The tokens file (``cellserve.tokens``): YAML and JSON, validation messages, lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cellserve.engine.admission import Limits
from cellserve.tokens import TokensFileError, TokenTable, new_token, parse

DEFAULTS = Limits(10, 5, 4, 100.0, 4096)


def test_yaml_and_json_give_the_same_table(tmp_path: Path) -> None:
    token, stored = new_token()
    y = tmp_path / "t.yaml"
    y.write_text(f"tenants:\n  - name: alice\n    tokens: [{stored}]\n    quota: {{max_sessions: 3}}\n")
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"tenants": [{"name": "alice", "tokens": [stored], "quota": {"max_sessions": 3}}]}))
    for path in (y, j):
        table = TokenTable(parse(path), DEFAULTS)
        tenant = table.lookup(token)
        assert tenant is not None and tenant.name == "alice"
        assert tenant.limits.max_sessions == 3 and tenant.limits.max_streams == 5  # the rest: defaults
        assert table.lookup(token + "x") is None and table.lookup("") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tenants: [ {name: ", "not valid YAML"),
        ("tenants:\n  - name: a\n    tokens: [abc]\n", "sha256:"),
        ("tenants:\n  - name: 'has space'\n", "tenants.0.name"),
        ("tenants:\n  - name: a\n  - name: a\n", "repeated: a"),
        ("tenants:\n  - name: a\n    quota: {max_sessions: 0}\n", "max_sessions"),
        ("tenants:\n  - name: a\n    quota: {bogus: 1}\n", "bogus"),
        ("users: []\n", "tenants"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(TokensFileError) as info:
        parse(path)
    assert problem in str(info.value) and "tokens.yaml" in str(info.value)


def test_tokens_are_random_and_stored_as_hashes() -> None:
    a, b = new_token(), new_token()
    assert a[0] != b[0] and a[1].startswith("sha256:") and a[0] not in a[1]


def test_the_cores_copy_keeps_the_last_version_that_parsed(tmp_path: Path) -> None:
    from cellserve.errors import Unavailable
    from cellserve.multiproc.tokens import TokensKeeper
    from cellserve.tokens import TokensFile

    path = tmp_path / "tokens.json"
    keeper = TokensKeeper(path)
    with pytest.raises(Unavailable):  # never read with success: a frontend keeps what it has
        keeper.current(False)
    _, stored = new_token()
    path.write_text(json.dumps({"tenants": [{"name": "alice", "tokens": [stored]}]}))
    first = TokensFile.model_validate_json(keeper.current(False))
    assert [t.name for t in first.tenants] == ["alice"]
    path.write_text("tenants: [ {name: ")  # broken: every frontend gets the same last good version
    assert TokensFile.model_validate_json(keeper.current(True)) == first
