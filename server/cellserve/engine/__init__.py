"""The session engine: the part that makes cellserve fast. Nothing below here imports grpc.

The API layer depends only on the ``EngineClient`` protocol (``engine/client.py``): every
session operation takes the caller's owner (tenant key) first and is submitted when called,
returning an awaitable; one session's operations apply in call order. In one process::

    engine = Engine(settings, repository)        # repository: cellserve.repository.ModelRepository
    client = InProcessEngineClient(engine)       # engine/inprocess.py: the EngineClient
    await client.start()                          # the loop and its one device worker thread
    pred = await client.append(owner, session_id, offset, text, AppendOptions())
    await client.drain(); await client.stop()

``Engine`` (``engine/engine.py``) is the async frontend: futures, admission, the TTL sweep and
the core thread, which calls ``EngineCore.step()`` (``engine/core.py``: schedule -> execute ->
stage -> commit in ``engine/update.py``, synchronous, plain dataclasses out) while work remains. It keeps the
``submit_*`` methods (future now, applied in order) and awaitable wrappers (``append``,
``rewind``...) the engine tests use; ``engine/scheduler.py`` plans each iteration within the
character budget, ``engine/runner.py`` executes it.
"""
