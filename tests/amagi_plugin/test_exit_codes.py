"""One table maps every error that ends a command to its exit status (amagi_plugin.errors)."""

from __future__ import annotations

import socket

import pytest

from amagi_plugin.errors import ConfigError, ExitCode, InputError, exit_code_for
from amagi_plugin.synth.errors import SynthError
from db.errors import (
    AmbiguousCaseError,
    DatabaseMissingError,
    DatabaseUnavailableError,
    DatabaseURLError,
    JobStateError,
    LeaseLostError,
    NotFoundError,
    SchemaError,
)
from dicom_io.errors import (
    InvalidInstanceError,
    NetworkError,
    TruncatedVideoError,
    UnsupportedTransferSyntaxError,
    WriterError,
)
from dicom_io.validate import ValidatorUnavailableError
from models.errors import CheckpointError, UnknownModelError
from models.training.data import TrainingDataError


@pytest.mark.parametrize(("error", "code"), [
    (NetworkError("peer gone"), 69),
    (DatabaseUnavailableError("cannot reach"), 69),
    (ValidatorUnavailableError("no dciodvfy"), 69),
    (DatabaseURLError("not a URL"), 2),
    (DatabaseMissingError("no database yet"), 1),
    (SchemaError("too old"), 1),
    (LeaseLostError("lost"), 1),
    (WriterError("cannot write"), 1),
    (NotFoundError("no case"), 3),
    (AmbiguousCaseError("2 cases"), 3),
    (JobStateError("done, not failed"), 3),
    (InvalidInstanceError("bad"), 3),
    (UnsupportedTransferSyntaxError("jpeg 2000"), 3),
    (TruncatedVideoError("short"), 3),
    (UnknownModelError("nope"), 3),
    (CheckpointError("bad weights"), 3),
    (TrainingDataError("no frames"), 3),
    (FileNotFoundError("x"), 3),
    (NotADirectoryError("x"), 3),
    (ConfigError("bad key"), 2),
    (InputError("bad file"), 3),
    (SynthError("bad range"), 2),
    (RuntimeError("a bug"), 70),
    (KeyError("a bug"), 70),
])
def test_each_error_class_has_one_exit_status(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code
    assert ExitCode(code).name  # every status used is a named one


def test_an_unreachable_peer_is_not_reported_as_bad_input(run_cli) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("cases", "list", "--database-url",
                f"postgresql+psycopg://amagi:secret@127.0.0.1:{port}/amagi")
    assert r.code == ExitCode.UNAVAILABLE, r.stderr
    assert "cannot reach database" in r.stderr and "secret" not in r.stderr
    r = run_cli("cases", "list", "--database-url", "::not a url")
    assert r.code == ExitCode.USAGE and "not a database URL" in r.stderr


def test_usage_errors_and_help_go_to_the_injected_streams(run_cli, capsys) -> None:
    r = run_cli("cases", "list", "--no-such-flag")
    assert r.code == ExitCode.USAGE and "unrecognized arguments: --no-such-flag" in r.stderr
    r = run_cli("--help")
    assert r.code == 0 and "usage: amagi" in r.stdout
    assert capsys.readouterr() == ("", "")  # nothing leaked to the process's own streams
