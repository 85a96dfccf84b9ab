"""Typed errors survive the wire: the client rebuilds the server's class by name."""

from __future__ import annotations

import grpc
import pytest

from liftshift.daemon.errors import ERROR_KEY, HINT_KEY, FailedPrecondition, from_rpc_error


class _Rpc(grpc.RpcError):
    """What a client sees after a refused call (the parts from_rpc_error reads)."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self._code, self._details, self._md = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


@pytest.mark.parametrize("name, module", [("IllegalTransition", "liftshift.daemon.lifecycle"),
                                          ("NotCapturable", "liftshift.daemon.vsphere_inventory"),
                                          ("UntrustedCertificate", "liftshift.daemon.vsphere_session")])
def test_classes_from_other_modules_are_rebuilt_with_message_and_hint(name: str, module: str) -> None:
    err = from_rpc_error(_Rpc(grpc.StatusCode.FAILED_PRECONDITION, "it is refused (hint: do this)",
                              ((ERROR_KEY, name), (HINT_KEY, "do this"))))
    assert type(err).__name__ == name and type(err).__module__ == module
    assert isinstance(err, FailedPrecondition)
    assert err.message == "it is refused" and err.hint == "do this"


def test_an_unknown_class_name_falls_back_to_the_status_code() -> None:
    err = from_rpc_error(_Rpc(grpc.StatusCode.FAILED_PRECONDITION, "no", ((ERROR_KEY, "FromTheFuture"),)))
    assert type(err) is FailedPrecondition and err.message == "no" and err.hint is None
