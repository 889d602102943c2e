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
    for obj in (leak_obj, summary_obj, ended_obj, notice_obj, *_pool_objects()):
        missing = set(obj) - documented
        assert not missing, f"{obj['type']} fields not in README: {missing}"
    for target in summary_obj["targets"]:
        assert not set(target) - documented, set(target) - documented


def _pool_objects() -> list[dict]:
    """A group with its verdict, a threads object, and every nested object of it."""
    from tests.test_render_pool import S, exhausted_summary, java_dump, opened_by_seed_1
    from tracer.core.threaddump import OpenerState, ProcessThreads

    now = 262 * S
    failed = ProcessThreads(
        100, "other", now, problem="x", openers=(OpenerState(1, "a", "S", "f"),)
    )
    s = exhausted_summary(now, [java_dump(now), failed])
    objs = [json.loads(x) for x in JsonRenderer().report([opened_by_seed_1()], s)]
    out = [o for o in objs if o["type"] in ("group", "threads")]
    assert {o["type"] for o in out} == {"group", "threads"} and len(out) == 3
    for t in [o for o in out if o["type"] == "threads"]:
        for w in t["waiting"]:
            out.append(w)
            out.extend(w["threads"])
        out.extend(t["openers"])
    return [{"type": "nested", **o} for o in out]


def test_help_lists_exit_codes() -> None:
    from click.testing import CliRunner

    out = CliRunner().invoke(cli, ["watch", "--help"]).output
    for s in ExitStatus:
        assert re.search(rf"^\s*{int(s)}\s+{re.escape(s.meaning[:30])}", out, re.MULTILINE), s
