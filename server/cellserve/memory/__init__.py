"""Session memory: statistics of a session's own text that sharpen the model's predictions.

- ``window.SessionMemory``: hashed contexts of several orders and a match model over the last
  ``window`` characters; its predictions are a pure function of that text (rewind, snapshot,
  fork, chunking and process count cannot change them).
- ``mixer.Mixer``: a small learned gate that mixes the model's distribution with the memory's.
- ``reference``: the offline "model + memory over this text" that served output must equal.
"""
