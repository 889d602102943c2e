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


def _every_object_type() -> list[tuple[str, dict]]:
    """(type, object) for every JSON object type closewait writes; the
    objects nested in a threads object count as that type's fields."""
    from tracer.core.model import FdReleased, Holder, LatencyBucket
    from tracer.core.summary import ProcessRank

    r = JsonRenderer()
    lk = leak()
    lat = [LatencyBucket(100, "remote", 8080, 15, 50)]
    lines = list(r.report([lk], summary(final=True, latency=lat)))
    objs = [(o["type"], o) for o in map(json.loads, lines)]
    objs.append(("ended", json.loads(r.ended(LeakEnded(lk, 0, "closed", exact=True), 0.0))))
    objs.append(("notice", json.loads(r.notice("x", 0.0))))
    released = FdReleased(lk, 0, 100, 101, "w", 7, "close", [Holder(200, 7)])
    objs.append(("fd_closed", json.loads(r.fd_released(released, 0.0))))
    rank = ProcessRank(100, "java", 4, 30.0, 10, 1024, None)
    objs.append(("process", json.loads(r.processes([rank], 0.0)[0])))
    for _kind, o in list(objs):
        if o["type"] == "summary":
            objs += [("summary", target) for target in o["targets"]]
    return objs + _pool_objects()


def _pool_objects() -> list[tuple[str, dict]]:
    """A group with its verdict, a threads object, and every nested object of it."""
    from tests.test_render_pool import S, exhausted_summary, java_dump, opened_by_seed_1
    from tracer.core.poolwaits import OpenerState, ProcessThreads

    now = 262 * S
    failed = ProcessThreads(
        100, "other", now, problem="x", openers=(OpenerState(1, "a", "S", "f"),)
    )
    s = exhausted_summary(now, [java_dump(now), failed])
    objs = [json.loads(x) for x in JsonRenderer().report([opened_by_seed_1()], s)]
    out = [(o["type"], o) for o in objs if o["type"] in ("group", "threads")]
    assert {k for k, _ in out} == {"group", "threads"} and len(out) == 3
    for _kind, t in [x for x in out if x[0] == "threads"]:
        for w in t["waiting"]:
            out.append(("threads", w))
            out.extend(("threads", x) for x in w["threads"])
        out.extend(("threads", x) for x in t["openers"])
    return out


def test_readme_documents_every_json_field_of_every_object_type() -> None:
    documented = _documented_by_type()
    objs = _every_object_type()
    assert {k for k, _ in objs} == set(documented), "an object type the README does not describe"
    for kind, obj in objs:
        missing = set(obj) - documented[kind]
        assert not missing, f"{kind} fields not in its README paragraph: {missing}"


def test_help_lists_exit_codes() -> None:
    from click.testing import CliRunner

    out = CliRunner().invoke(cli, ["watch", "--help"]).output
    for s in ExitStatus:
        assert re.search(rf"^\s*{int(s)}\s+{re.escape(s.meaning[:30])}", out, re.MULTILINE), s
