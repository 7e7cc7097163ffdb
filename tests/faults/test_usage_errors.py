"""click's own usage errors (an unknown flag or command, a missing argument, a bad choice, a value of
the wrong type) are the same single `error:` line and exit 2 as every other bad input, generated
for every subcommand and every choice and typed option it has."""

from __future__ import annotations

import click
import pytest

from bertprep.cli import cli
from conftest import one_line

COMMANDS = sorted(cli.commands)


def test_an_unknown_command_is_one_line(capsys):
    assert "nosuch" in one_line(capsys, ["nosuch"])


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_flag_is_one_line(capsys, command):
    err = one_line(capsys, [command, "--no-such-flag"])
    assert "--no-such-flag" in err and command in err


def typed_options():
    for name in COMMANDS:
        for p in cli.commands[name].params:
            if isinstance(p, click.Option) and not p.is_flag:
                if isinstance(p.type, click.Choice):
                    yield name, max(p.opts, key=len), "not-a-choice"
                elif isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
                    yield name, max(p.opts, key=len), "twelve"


CASES = list(typed_options())


@pytest.mark.parametrize("command,flag,value", CASES, ids=[f"{c} {f}" for c, f, _ in CASES])
def test_a_bad_choice_or_type_is_one_line_naming_the_flag(capsys, command, flag, value):
    assert flag in one_line(capsys, [command, flag, value])


@pytest.mark.parametrize("command", [c for c in COMMANDS
                                     if any(isinstance(p, click.Argument) and p.required for p in cli.commands[c].params)])
def test_a_missing_argument_is_one_line(capsys, command):
    assert "Missing argument" in one_line(capsys, [command])
