"""Units that track something a reader can name: found offline, stored with the model, shown
beside the gate means (InspectGates, ``cellserve inspect``, the browser's gate viewer).

Gate means over 512 units sit near 0.5 everywhere; what the LSTM/GRU literature shows instead
(Karpathy, Johnson & Fei-Fei, "Visualizing and Understanding Recurrent Networks", 2015) is
single units whose state follows the text: inside a string, inside a comment, bracket depth,
indentation, position in the line. ``find_units`` finds them automatically: it runs the model
over a sample of text, computes these features after every character, and picks for each
feature the unit (any layer) whose state correlates most with it (Pearson's r). The state is
the LSTM's cell state c, the GRU's hidden state h. ``cellserve units`` writes the result to
``models/<name>/units.json``; the server reads it with the model (``read_units``), so a model
without it simply has no tracked units.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .nn.checkpoint import LoadedModel

log = logging.getLogger("cellserve.units")

UNITS_FILE = "units.json"
FEATURES: dict[str, str] = {
    "in_string": "inside a string literal",
    "in_comment": "inside a comment",
    "bracket_depth": "bracket depth",
    "indent": "indentation of the line",
    "column": "position in the line",
}
STATE_NAME = {"lstm": "c", "gru": "h"}  # the state a unit's value is read from
STREAMS = 16  # the sample runs as this many parallel streams (a batch), each from the zero state


class TrackedUnitSpec(BaseModel):
    """One unit and the feature it tracks (an entry of ``units.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str = Field(description="the feature's key, one of FEATURES")
    label: str = Field(description="what a reader calls it, e.g. 'inside a string literal'")
    layer: int = Field(ge=0, description="the unit's layer, first layer 0")
    unit: int = Field(ge=0, description="the unit's index in its layer")
    correlation: float = Field(ge=-1.0, le=1.0, description="Pearson's r of its state with the feature")


class UnitsFile(BaseModel):
    """``models/<name>/units.json``: the tracked units of one set of weights, and how they were found."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = Field(1, description="this schema's version")
    weights_sha256: str = Field(description="the weights the units belong to: a retrained model needs a new file")
    state: str = Field(description="'c' (LSTM cell state) or 'h' (GRU hidden state)")
    sample: str = Field(description="the text the correlations were measured on")
    sample_chars: int = Field(ge=1, description="its length in characters")
    command: str = Field(description="the command that wrote the file")
    git_commit: str = Field(description="the commit it ran at")
    created: str = Field(description="UTC date and time it ran")
    units: list[TrackedUnitSpec] = Field(description="one per feature, strongest correlation first")


@dataclass(frozen=True)
class Features:
    """The features after reading each character of a text: ``values[key]`` is [T]."""

    values: dict[str, np.ndarray]


def text_features(text: str) -> Features:
    """Each feature after reading each character, by a small Python-like scanner: quotes
    (single, double, triple; backslash escapes), ``#`` comments, brackets outside both, the
    line's indentation (its leading spaces and tabs so far) and the column."""
    n = len(text)
    out = {k: np.zeros(n, dtype=np.float32) for k in FEATURES}
    quote = ""  # the open string's delimiter: "", "'", '"', "'''" or '"""'
    comment = escaped = False
    leading = True  # still in the line's leading whitespace
    depth = column = indent = 0
    i = 0
    while i < n:
        ch = text[i]
        span = 1  # characters read as one token (a triple quote is three)
        if ch == "\n":
            column, indent, leading, comment = 0, 0, True, False
            if len(quote) == 1:  # an unterminated one-line string ends with its line
                quote = ""
            in_string = bool(quote)
        else:
            column += 1
            leading = leading and ch in " \t"
            indent += leading
            in_string = bool(quote)  # a delimiter belongs to its string, the closing one too
            if quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif text.startswith(quote, i):
                    span, quote = len(quote), ""
            elif comment:
                pass
            elif ch == "#":
                comment = True
            elif ch in "'\"":
                quote = ch * 3 if text.startswith(ch * 3, i) else ch
                span, in_string = len(quote), True
            elif ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth = max(0, depth - 1)
        for j in range(i, min(n, i + span)):
            out["in_string"][j] = in_string
            out["in_comment"][j] = comment
            out["bracket_depth"][j] = depth
            out["indent"][j] = indent
            out["column"][j] = column + (j - i)
        column += span - 1
        i += span
    return Features(out)


@torch.no_grad()
def states_along(loaded: LoadedModel, text: str, streams: int = STREAMS) -> np.ndarray:
    """The tracked state (LSTM c, GRU h) after each character of ``text``: [T', layers, hidden],
    T' = ``streams`` * (len(text) // streams). The text is cut into ``streams`` pieces run side
    by side as one batch, each from the zero state, one character per step."""
    model = loaded.model
    per = len(text) // streams
    if per == 0:
        raise ValueError(f"the sample needs at least {streams} characters")
    ids = loaded.vocab.encode_tensor(text[: per * streams]).to(model.head.weight.device).view(streams, per)
    state = model.init_state(streams)
    which = 1 if model.cell == "lstm" else 0
    out = torch.empty(streams, per, model.layers, model.hidden)
    emb = model.embed(ids)  # [S, T, E]
    for t in range(per):
        _, state = model.rnn_forward(emb[:, t : t + 1], state)
        out[:, t] = state[which].permute(1, 0, 2).float().cpu()  # [S, L, H]
    states: np.ndarray = out.reshape(streams * per, model.layers, model.hidden).numpy()
    return states


def correlations(states: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson's r of every unit's state with ``feature``: states [T, L, H], feature [T] -> [L, H]
    (0 for a unit or a feature that never changes)."""
    x = states.reshape(len(states), -1).astype(np.float64)
    f = feature.astype(np.float64)
    x = x - x.mean(0)
    f = f - f.mean()
    denom = np.sqrt((x * x).sum(0) * (f * f).sum())
    r = np.divide(x.T @ f, denom, out=np.zeros(x.shape[1]), where=denom > 0)
    clipped: np.ndarray = np.clip(r, -1.0, 1.0).reshape(states.shape[1:])
    return clipped


def find_units(loaded: LoadedModel, text: str, streams: int = STREAMS) -> list[TrackedUnitSpec]:
    """For each feature, the unit whose state correlates most (|r|) with it on ``text``; a unit
    is used for one feature only. Strongest first."""
    states = states_along(loaded, text, streams)
    per = len(states) // streams
    feats = {k: v[: per * streams] for k, v in _stream_features(text, streams, per).items()}
    taken: set[tuple[int, int]] = set()
    found = []
    scored = {k: correlations(states, f) for k, f in feats.items()}
    # The clearest features pick first, so a unit that tracks two goes to the stronger one.
    for key in sorted(scored, key=lambda k: -float(np.abs(scored[k]).max())):
        r = scored[key]
        for flat in np.argsort(-np.abs(r), axis=None):
            layer, unit = (int(v) for v in np.unravel_index(flat, r.shape))
            if (layer, unit) not in taken:
                taken.add((layer, unit))
                found.append(
                    TrackedUnitSpec(
                        feature=key, label=FEATURES[key], layer=layer, unit=unit, correlation=float(r[layer, unit])
                    )
                )
                break
    return sorted(found, key=lambda u: -abs(u.correlation))


def _stream_features(text: str, streams: int, per: int) -> dict[str, np.ndarray]:
    """The features of each stream's piece, scanned on its own (as the model reads it)."""
    parts = [text_features(text[s * per : (s + 1) * per]).values for s in range(streams)]
    return {k: np.concatenate([p[k] for p in parts]) for k in FEATURES}


def write_units(
    folder: Path, loaded: LoadedModel, units: list[TrackedUnitSpec], sample: str, chars: int, command: str, commit: str
) -> Path:
    path = folder / UNITS_FILE
    doc = UnitsFile(
        format_version=1,
        weights_sha256=loaded.weights_sha256,
        state=STATE_NAME[loaded.spec.cell],
        sample=sample,
        sample_chars=chars,
        command=command,
        git_commit=commit,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        units=units,
    )
    path.write_text(json.dumps(doc.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    path.chmod(0o644)
    return path


def read_units(loaded: LoadedModel) -> tuple[TrackedUnitSpec, ...]:
    """The tracked units stored with the model; none when there is no ``units.json``, or it
    belongs to other weights (a retrained model), or names units the model does not have."""
    folder: Path | None = getattr(loaded, "folder", None)  # stand-ins of a model (tests) may have none
    if folder is None or not (folder / UNITS_FILE).is_file():
        return ()
    try:
        doc = UnitsFile.model_validate_json((folder / UNITS_FILE).read_text())
    except (OSError, ValueError) as e:  # a broken file costs the traces, never the call
        log.warning("%s: ignored: %s", folder / UNITS_FILE, str(e).splitlines()[0])
        return ()
    if doc.weights_sha256 != loaded.weights_sha256:
        return ()
    spec = loaded.spec
    return tuple(u for u in doc.units if u.layer < spec.layers and u.unit < spec.hidden)


def format_units(units: tuple[TrackedUnitSpec, ...] | list[TrackedUnitSpec]) -> str:
    return "\n".join(f"L{u.layer} #{u.unit:<4} r={u.correlation:+.2f}  {u.label}" for u in units)


@torch.no_grad()
def unit_traces(loaded: LoadedModel, text: str, start: int, units: tuple[TrackedUnitSpec, ...]) -> list[list[float]]:
    """Each unit's state after each character of ``text[start:]``, read from the initial state
    (the characters before ``start`` only build it up): one list per unit."""
    if not units or start >= len(text):
        return [[] for _ in units]
    model = loaded.model
    ids = loaded.vocab.encode_tensor(text).to(model.head.weight.device)[None]  # [1, T]
    state = model(ids[:, :start])[1] if start > 0 else model.init_state(1)
    which = 1 if model.cell == "lstm" else 0
    emb = model.embed(ids[:, start:])
    layers = torch.tensor([u.layer for u in units])
    cols = torch.tensor([u.unit for u in units])
    rows = []
    for t in range(emb.shape[1]):
        _, state = model.rnn_forward(emb[:, t : t + 1], state)
        rows.append(state[which][layers, 0, cols].float().cpu())  # [U]
    return torch.stack(rows, dim=1).tolist()  # [U, T]
