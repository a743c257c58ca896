"""The session engine: the part that makes cellserve fast. Nothing below here imports grpc.

Contract with the API layer (``cellserve.api``), all on the asyncio loop of the server;
errors are ``cellserve.errors`` exceptions, data are ``cellserve.engine.types`` dataclasses::

    engine = Engine(settings, repository)        # repository: cellserve.repository.ModelRepository
    await engine.start()                          # starts the loop and its one device worker thread
    engine.models() -> list[ModelInfo]
    engine.open_session(model: str | None, owner="") -> SessionInfo
    engine.get_session(session_id, owner="") -> SessionInfo
    await engine.append(session_id, offset, text, AppendOptions, owner="") -> Prediction
    engine.complete(session_id, CompletionRequest, owner="") -> AsyncIterator[CompletionChunk]
    await engine.rewind(session_id, chars, owner="") -> SessionInfo
    await engine.reset(session_id, owner="") -> SessionInfo
    await engine.snapshot(session_id, owner="") -> bytes
    await engine.resume(blob, replay="", options=AppendOptions(), owner="") -> (SessionInfo, Prediction | None)
    await engine.close_session(session_id, owner="") -> None
    engine.stats() -> EngineStats
    await engine.drain()                          # new sessions -> Unavailable; in-flight work finishes
    await engine.stop()
"""
