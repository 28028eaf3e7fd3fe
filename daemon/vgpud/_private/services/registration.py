"""Register servicers with request parsing that cannot fail loudly: an undecodable body is INVALID_ARGUMENT.

grpc's generated `add_*_to_server` parse with `FromString`; a body that does not parse ends the call as
UNKNOWN and writes a full traceback at ERROR, so any local user could flood the log. Here a body that does
not parse becomes an `Undecodable` marker, and the call is refused with ErrorInfo INVALID_REQUEST and one
rate-limited log line.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from vgpu._private import reasons
from vgpud._private.log_limit import LogLimit
from vgpud._private.refusal import Refusal
from vgpud._private.services.status import abort

Ctx = grpc.aio.ServicerContext[Any, Any]
_MAX_DETAIL: Final = 120


class Undecodable:
    """A request body that is not a valid message of the method's request type."""

    __slots__ = ("detail", "type_name")

    def __init__(self, type_name: str, detail: str) -> None:
        self.type_name = type_name
        self.detail = detail


def _parser(method: MethodDescriptor) -> Callable[[bytes], object]:
    parse = message_factory.GetMessageClass(method.input_type).FromString
    type_name = method.input_type.full_name

    def parse_or_mark(raw: bytes) -> object:
        try:
            return parse(raw)
        except (DecodeError, ValueError, RuntimeError) as exc:  # RuntimeError: protobuf's recursion limit
            return Undecodable(type_name, str(exc)[:_MAX_DETAIL])

    return parse_or_mark


class BadBodies:
    """What happens to an undecodable body: counted, logged at a bounded rate, refused."""

    def __init__(self, log_limit: LogLimit, on_error: Callable[[str, str], object]) -> None:
        self._log = log_limit
        self._on_error = on_error

    async def refuse(self, method: str, bad: Undecodable, context: Ctx) -> None:
        """End the call with INVALID_ARGUMENT naming the type the method takes."""
        self._on_error(method, grpc.StatusCode.INVALID_ARGUMENT.name)
        self._log.info("undecodable request refused", event=f"undecodable:{method}", method=method, error=bad.detail)
        await abort(
            context,
            Refusal(
                reasons.INVALID_REQUEST,
                f"the request body is not a valid {bad.type_name} message ({bad.detail}); "
                "send the message this method takes",
            ),
        )


def add_service(
    server: grpc.aio.Server,
    servicer: object,
    service: Any,
    bad: BadBodies,
) -> None:
    """Serve `servicer`'s methods of `service`, refusing undecodable bodies before the handler runs."""
    handlers = {}
    for method in service.methods:
        impl = getattr(servicer, method.name)
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        parse = _parser(method)
        name = f"{service.full_name}/{method.name}"
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _bidi(impl, name, bad), request_deserializer=parse, response_serializer=serialize
            )
        elif method.client_streaming:
            raise ValueError(f"{name}: client-streaming methods are not served by vgpud")
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(impl, name, bad), request_deserializer=parse, response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(impl, name, bad), request_deserializer=parse, response_serializer=serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _unary(impl: Any, name: str, bad: BadBodies) -> Callable[[object, Ctx], Any]:
    async def call(request: object, context: Ctx) -> Any:
        if isinstance(request, Undecodable):
            await bad.refuse(name, request, context)
        return await impl(request, context)

    return call


def _streaming(impl: Any, name: str, bad: BadBodies) -> Callable[[object, Ctx], Any]:
    if not inspect.isasyncgenfunction(impl):  # a coroutine that answers with context.write (grpc_health's Watch)
        return _unary(impl, name, bad)

    async def call(request: object, context: Ctx) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await bad.refuse(name, request, context)
        async for item in impl(request, context):
            yield item

    return call


def _bidi(impl: Any, name: str, bad: BadBodies) -> Callable[[AsyncIterator[object], Ctx], AsyncIterator[Any]]:
    async def call(requests: AsyncIterator[object], context: Ctx) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[object]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    await bad.refuse(name, request, context)
                yield request

        async for item in impl(checked(), context):
            yield item

    return call
