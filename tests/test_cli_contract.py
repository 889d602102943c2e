"""The interface promises kept in one place and checked: every command and option
documented, the README's exit-code table and JSON schema equal to the code."""

from __future__ import annotations

import json
import re

import click

from tests.cli_helpers import ROOT
from tests.test_render import leak, summary
from tracer.cli.app import cli
from tracer.core.exitcodes import ExitStatus
from tracer.core.model import LeakEnded
from tracer.report.jsonl import JsonRenderer

README = (ROOT / "README.md").read_text()


def _commands() -> list[click.Command]:
    return [cli, *cli.commands.values()]


def test_every_command_and_option_has_help() -> None:
    for cmd in _commands():
        assert cmd.help, f"{cmd.name} has no help"
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.help, f"{cmd.name} {p.opts} has no help"


def test_readme_exit_code_table_matches_the_enum() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", README, re.MULTILINE)
    assert {int(code): text for code, text in rows} == {int(s): s.meaning for s in ExitStatus}


def _documented_fields(section_start: str, section_end: str) -> set[str]:
    text = README[README.index(section_start) : README.index(section_end)]
    return set(re.findall(r"`([a-z_]+)`", text))


def test_readme_documents_every_json_field() -> None:
    lines = list(JsonRenderer().report([leak()], summary()))
    leak_obj, summary_obj = json.loads(lines[0]), json.loads(lines[1])
    ended = LeakEnded(leak(), 0, "closed", exact=True)
    ended_obj = json.loads(JsonRenderer().ended(ended, 0.0))
    notice_obj = json.loads(JsonRenderer().notice("x", 0.0))
    documented = _documented_fields("### JSON lines", "### Exit status")
    for obj in (leak_obj, summary_obj, ended_obj, notice_obj):
        missing = set(obj) - documented
        assert not missing, f"{obj['type']} fields not in README: {missing}"


def test_help_lists_exit_codes() -> None:
    from click.testing import CliRunner

    out = CliRunner().invoke(cli, ["watch", "--help"]).output
    for s in ExitStatus:
        assert re.search(rf"^\s*{int(s)}\s+{re.escape(s.meaning[:30])}", out, re.MULTILINE), s
