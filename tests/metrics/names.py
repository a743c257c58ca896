"""Metric names: the ones PromQL expressions (rules, dashboard) refer to, and the ones a live
exposition has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = sorted(p for p in (REPO / "deploy" / "prometheus").glob("*.yaml") if not p.name.endswith(".test.yaml"))
RULE_TESTS = sorted((REPO / "deploy" / "prometheus").glob("*.test.yaml"))
DASHBOARD = REPO / "deploy" / "grafana" / "cellserve-dashboard.json"

# A name of ours in PromQL: not part of a recorded-rule name (those have colons), not a label.
_REFERENCED = re.compile(r"(?<![\w:])((?:cellserve|process)_[a-zA-Z0-9_]+)(?![\w:])")
_RECORDED = re.compile(r"(?<![\w:])([a-zA-Z_][\w]*:[\w:]+)")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")


def referenced(expr: str) -> set[str]:
    """Exported metric names an expression reads (cellserve_* and process_*)."""
    return set(_REFERENCED.findall(expr))


def recorded_references(expr: str) -> set[str]:
    return set(_RECORDED.findall(expr))


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in RULES:
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for group in rule_groups() for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


def dashboard_expressions() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return exprs


def exposed(exposition: str) -> set[str]:
    """Sample names in a text exposition (histograms as _bucket/_sum/_count, counters _total)."""
    return {
        m.group(1)
        for line in exposition.splitlines()
        if line and not line.startswith("#") and (m := _SAMPLE.match(line))
    }
