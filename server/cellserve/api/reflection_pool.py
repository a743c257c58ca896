"""The descriptor pool that server reflection answers from.

The services' files live in two pools: ``cellserve.v1``, health and reflection in protobuf's
default pool, ``inference`` in a pool of its own (see scripts/gen_proto.py). Reflection reads
one pool, so this builds one holding every served file and its dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor


def reflection_pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(fd.name)

    for fd in files:
        add(fd)
    return pool
