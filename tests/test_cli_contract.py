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


def _documented_by_type() -> dict[str, set[str]]:
    """Per JSON object type, the `field` names its README paragraph names.

    The paragraph of type X runs from `type: "X"` to the next type's; the
    ended and fd_closed objects say they carry "the identity fields of a
    leak", which are then read from the leak paragraph's first sentence."""
    text = README[README.index("### JSON lines") : README.index("### Exit status")]
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'`type: "([a-z_]+)"`', text)]
    out: dict[str, set[str]] = {}
    for i, (pos, kind) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        out[kind] = set(re.findall(r"`([a-z_]+)`", text[pos:end])) | {"type", "ts"}
    return out


def _every_object_type() -> dict[str, dict]:
    from tracer.core.model import FdReleased, Holder, LatencyBucket
    from tracer.core.summary import ProcessRank
    from tracer.core.trends import Group

    r = JsonRenderer()
    lk = leak()
    group = Group("remote", "[::1]:8080", 7, 252.0, 2.0, 30.0, "pool-1-thread-*")
    lat = [LatencyBucket(100, "remote", 8080, 15, 50)]
    lines = list(r.report([lk], summary(final=True, groups=[group], latency=lat)))
    objs = {o["type"]: o for o in map(json.loads, lines)}
    objs["ended"] = json.loads(r.ended(LeakEnded(lk, 0, "closed", exact=True), 0.0))
    objs["notice"] = json.loads(r.notice("x", 0.0))
    released = FdReleased(lk, 0, 100, 101, "w", 7, "close", [Holder(200, 7)])
    objs["fd_closed"] = json.loads(r.fd_released(released, 0.0))
    rank = ProcessRank(100, "java", 4, 30.0, 10, 1024, None)
    objs["process"] = json.loads(r.processes([rank], 0.0)[0])
    return objs


def test_readme_documents_every_json_field_of_every_object_type() -> None:
    documented = _documented_by_type()
    objs = _every_object_type()
    assert set(objs) == set(documented), "an object type the README does not describe"
    for kind, obj in objs.items():
        missing = set(obj) - documented[kind]
        assert not missing, f"{kind} fields not in its README paragraph: {missing}"


def test_help_lists_exit_codes() -> None:
    from click.testing import CliRunner

    out = CliRunner().invoke(cli, ["watch", "--help"]).output
    for s in ExitStatus:
        assert re.search(rf"^\s*{int(s)}\s+{re.escape(s.meaning[:30])}", out, re.MULTILINE), s
