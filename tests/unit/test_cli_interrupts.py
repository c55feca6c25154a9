"""A signal that lands inside code which wraps it (an import's class creation turns it into
``RuntimeError("Error calling __set_name__ ...")``) still ends the CLI in one line with 128 + signum."""

from __future__ import annotations

import signal

import pytest

import dqnrun.cli as cli
from dqnrun.errors import Interrupted


def _wrapped(inner: BaseException) -> None:
    try:
        raise inner
    except BaseException as exc:
        raise RuntimeError("Error calling __set_name__ on 'cached_property' instance") from exc


@pytest.mark.parametrize(("inner", "code", "name"), [(Interrupted(signal.SIGINT), 130, "SIGINT"),
                                                     (Interrupted(signal.SIGTERM), 143, "SIGTERM"),
                                                     (KeyboardInterrupt(), 130, "SIGINT")])
def test_a_wrapped_signal_is_an_interrupt_in_one_line(inner: BaseException, code: int, name: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_main", lambda args: _wrapped(inner))
    with pytest.raises(SystemExit) as ended:
        cli.main(["train"])
    assert ended.value.code == code
    assert capsys.readouterr().err.strip() == f"dqnrun train: interrupted ({name})"


def test_an_error_without_a_signal_behind_it_is_not_an_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: list[str]) -> None:
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "_main", fail)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["train"])
