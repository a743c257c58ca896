"""The one thing pyproject.toml cannot say: the C extensions, the session memory's loops
(server/cellserve/memory/_window.c) and the keystroke answer's serialization
(server/cellserve/api/_wire.c). Optional: where no C compiler is found the build goes on and
each runs its Python reference (memory/window.py; protobuf in api/stream.py), slower.
tests/memory/test_native.py and tests/api/test_wire.py then fail wherever a compiler and
Python's headers are, and also when a source changed since the build (`pip install -e .`
rebuilds)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cellserve.memory._window",
            ["server/cellserve/memory/_window.c"],
            optional=True,
        ),
        Extension(
            "cellserve.api._wire",
            ["server/cellserve/api/_wire.c"],
            optional=True,
        ),
    ]
)
