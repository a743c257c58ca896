"""The one thing pyproject.toml cannot say: the session memory's C loops
(server/cellserve/memory/_window.c). Optional: where no C compiler is found the build goes on
and the memory runs its Python reference of the same loops (memory/window.py), slower.
tests/memory/test_native.py then fails wherever a compiler and Python's headers are, and also
when _window.c changed since the build (`pip install -e .` rebuilds)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cellserve.memory._window",
            ["server/cellserve/memory/_window.c"],
            optional=True,
        )
    ]
)
