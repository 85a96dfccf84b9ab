"""The one exception hierarchy of liftshift, and its mapping to gRPC.

Servicers never choose status codes: they raise one of these, and
:func:`guard_handlers` (installed on every server) turns it into the status
and message a person can act on, logs it, and attaches the error's class name
as trailing metadata so that :func:`from_rpc_error` rebuilds the same typed
error on the client side.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger("liftshift.errors")

ERROR_KEY = "liftshift-error"
HINT_KEY = "liftshift-hint"


class LiftshiftError(Exception):
    """Base of every error liftshift reports; ``hint`` says what to do."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


class InvalidArgument(LiftshiftError):
    """A request or frame is malformed (bad name, bad field, bad layout)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ChecksumMismatch(LiftshiftError):
    """Data does not match its XXH3 checksum: nothing of it was applied."""

    code = grpc.StatusCode.DATA_LOSS


class OutOfRange(LiftshiftError):
    """An offset or length falls outside the vdisk."""

    code = grpc.StatusCode.OUT_OF_RANGE


class SequenceError(LiftshiftError):
    """Records arrived with a gap or out of order."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(LiftshiftError):
    """An unknown vdisk, VM or migration id."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LiftshiftError):
    """The thing to create exists already (with different parameters)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LiftshiftError):
    """The operation is not allowed in the current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class TooLarge(LiftshiftError):
    """A message or request exceeds a configured limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(LiftshiftError):
    """A peer (sink, vCenter, platform) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(LiftshiftError):
    """The caller presented no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LiftshiftError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ConfigError(LiftshiftError):
    """A configuration file or environment override is invalid (names the key and file)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


_BY_NAME: dict[str, type[LiftshiftError]] = {}
_GENERAL_BY_CODE: dict[grpc.StatusCode, type[LiftshiftError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def _register(cls: type[LiftshiftError]) -> None:
    _BY_NAME[cls.__name__] = cls
    for sub in cls.__subclasses__():
        _register(sub)


def error_class(name: str) -> type[LiftshiftError] | None:
    """The error class called ``name`` (including subclasses defined later)."""
    if name not in _BY_NAME:
        # Subclasses defined in other modules exist only once imported: make
        # sure every module that defines one is, whoever the caller is.  The
        # vSphere ones pull in pyvmomi, so only when the name is still unknown.
        from . import audit, lifecycle, seedfile, vmdk  # noqa: F401

        _register(LiftshiftError)
        if name not in _BY_NAME:
            from . import vsphere_inventory, vsphere_session  # noqa: F401

            _register(LiftshiftError)
    return _BY_NAME.get(name)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message, error class name) for any exception."""
    if isinstance(exc, LiftshiftError):
        return exc.code, str(exc), type(exc).__name__
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "LiftshiftError"


def from_rpc_error(err: grpc.RpcError) -> LiftshiftError:
    """Rebuild the typed error a server raised from the RPC error the client got."""
    name = hint = None
    md = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in md or ():
        if key == ERROR_KEY:
            name = value
        elif key == HINT_KEY:
            hint = value
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    cls = error_class(name) if name else None
    if cls is None:
        if not _BY_NAME:
            _register(LiftshiftError)
        # Several classes share a code: without the server's class name pick
        # the general one, not whichever subclass happened to register first.
        cls = Unavailable if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else \
            _GENERAL_BY_CODE.get(code) or next((c for c in _BY_NAME.values() if c.code == code), LiftshiftError)
    if hint:
        # The status message carries the hint too, for clients that only see it.
        details = details.removesuffix(f" (hint: {hint})")
    # Built without the subclass's own __init__ (IllegalTransition takes a
    # state and an event): the client gets the class, message and hint.
    err = cls.__new__(cls)
    LiftshiftError.__init__(err, details, hint=hint)
    return err


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    code, message, name = status_of(exc)
    if isinstance(exc, LiftshiftError):
        log.warning("%s refused: %s: %s", method, name, message)
    else:
        log.exception("%s failed", method, exc_info=exc)
    md: tuple[tuple[str, str], ...] = ((ERROR_KEY, name),)
    if isinstance(exc, LiftshiftError) and exc.hint:
        md += ((HINT_KEY, exc.hint),)
    context.set_trailing_metadata(md)
    await context.abort(code, message)


def _wrap_unary(fn: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, method, exc)

    return wrapper


def _wrap_stream(fn: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(fn)
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        items = fn(request, context)
        try:
            if inspect.isawaitable(items):
                # A handler may also be a coroutine that streams with
                # context.write() (grpc_health's Watch does): just run it.
                await items
                return
            async for item in items:
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, method, exc)
        finally:
            # When gRPC closes this wrapper, close the handler too, so its own
            # finally blocks run now rather than whenever the garbage
            # collector finalises it.
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps every handler's exceptions to statuses in one place."""

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, method),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream, method),
                                                         handler.request_deserializer, handler.response_serializer)
        return handler
