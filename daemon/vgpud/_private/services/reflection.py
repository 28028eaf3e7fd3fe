"""Server reflection under both names clients ask for: grpc.reflection.v1 (grpcurl, buf curl) and v1alpha.

grpcio-reflection ships only v1alpha. v1 is the same protocol in another package (same messages, same field
numbers), so its descriptor is derived here from v1alpha's, and the v1 service hands each message, through
its bytes, to the library's v1alpha servicer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_PACKAGE: Final = "grpc.reflection.v1alpha"
V1_PACKAGE: Final = "grpc.reflection.v1"
V1_FILE: Final = "grpc/reflection/v1/reflection.proto"
V1_SERVICE: Final = f"{V1_PACKAGE}.ServerReflection"


def _v1_descriptor() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto in the default pool (reflection answers from it), added once."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)  # another library registered it already
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.ClearField("options")  # java/go package names of v1alpha
    old, new = f".{V1ALPHA_PACKAGE}.", f".{V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # set only on message and enum fields
                field.type_name = field.type_name.replace(old, new, 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(V1_FILE)


DESCRIPTOR: Final = _v1_descriptor()
"""The v1 file, with its ServerReflection service (what grpc_server registers and the auth table covers)."""

_V1_RESPONSE: Final[Callable[[bytes], Message]] = message_factory.GetMessageClass(
    DESCRIPTOR.message_types_by_name["ServerReflectionResponse"]
).FromString


class ReflectionV1:
    """grpc.reflection.v1.ServerReflection answered by the v1alpha servicer (which lists both names)."""

    def __init__(self, v1alpha: reflection.aio.ReflectionServicer) -> None:
        self._v1alpha = v1alpha

    async def ServerReflectionInfo(  # noqa: N802 -- gRPC method name
        self, requests: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Message]:
        """Each v1 request as its v1alpha twin, each answer back as v1."""

        async def as_v1alpha() -> AsyncIterator[Message]:
            async for request in requests:
                yield reflection_pb2.ServerReflectionRequest.FromString(request.SerializeToString())

        async for response in self._v1alpha.ServerReflectionInfo(as_v1alpha(), context):
            yield _V1_RESPONSE(response.SerializeToString())
