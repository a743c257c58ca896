"""The KServe v2 / Open Inference Protocol surface (``inference.GRPCInferenceService``), which
lets tritonclient, perf_analyzer and other Triton/KServe clients drive cellserve unchanged.

Modules:
    pb          the generated ``inference`` modules, imported once
    params      request parameters: sequence id and flags, top_k, completion
    tensors     the tensor contract: TEXT/OFFSET in, TOP_CHARS/TOP_PROBS/POSITION/COMPLETION out
    sequences   Triton sequences as sessions of the caller's owner (START/END rules)
    statistics  per-model counters behind ModelStatistics
    infer       one ModelInfer request, shared by the unary call and the stream
    stream      one ModelStreamInfer stream: pipelined, ordered, in-band errors
    servicer    the service: health, metadata, config, statistics, index, inference
"""

from __future__ import annotations

from .pb import KSERVE_SERVICE_NAME
from .servicer import KServeServicer

__all__ = ["KSERVE_SERVICE_NAME", "KServeServicer"]
