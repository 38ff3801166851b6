"""Templates: plain substitution in process exactly as Jinja renders it, the rest in the
sandboxed child within its limits, and every failure a one-line problem."""

from __future__ import annotations

import subprocess
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from scaler import child_limits, template_sandbox, templates
from scaler.templates import Failure, Job, render_all

VARIABLES = {"queue": 'we"ird\\q\nx', "n": 3, "f": 1.5, "nothing": None, "yes": True,
             "empty": "", "loop": "L", "range": "R", "spaced": "\u00a0 straße\tİ \n"}

PLAIN = [
    "celery-{{ queue }}", "{{queue}}", "{{\tqueue\n}}", "a\r\nb\rc\n{{ n }}\n", "text\n\n",
    'x{q="{{ queue }}"} + {{ n }} * {{ f }}', "{{ nothing }}-{{ yes }}-{{ empty }}",
    "{ a } }} {{ loop }} {{ range }}", "ünïcödé {{ queue }} ✓", "{{ n }}{{ n }}",
    # Filters that compute nothing worth a sandbox, on str(value) as Jinja's do.
    "{{ queue | upper }}", "{{queue|lower}}", "{{ queue | trim | upper }}",
    "{{ queue | replace('\"', 'Q') }}", '{{ queue|replace("e", "EE")|lower }}',
    "{{ n | replace('3', '33') }}", "{{ nothing | upper }}-{{ yes | lower }}",
    "{{ queue | replace('', '-') }}", "{{ f|replace('.', ',') }}", "{{ empty | trim }}",
    "{{ spaced | trim | upper }}", "{{ spaced | lower }}", "{{ spaced|replace('ß', 'ss') }}",
    "x{q=\"{{ queue | lower | replace('_', '-') }}\"}",
]


@pytest.mark.parametrize("text", PLAIN)
@pytest.mark.parametrize("promql", [True, False])
def test_plain_templates_render_in_process_as_jinja_does(text, promql):
    assert templates.plain(text) is not None
    jinja = template_sandbox.environment(promql).from_string(text).render(VARIABLES)
    assert render_all([Job(text, promql, 0)], [VARIABLES]) == [jinja]


@pytest.mark.parametrize("text", [
    "{{ 'x' }}", "{{ true }}", "{{ self }}", "{{- queue }}",
    "{{ queue -}}", "{% if n %}x{% endif %}", "{# comment #}", "{{ q.a }}", "{{{ x }}}",
    "{{ queue }", "{{ dict }}", "{{ queue | title }}", "{{ queue | lower() }}",
    "{{ queue | lowercase }}", "{{ queue | replace('a', 'b', 1) }}",
    "{{ queue | replace('\\n', 'b') }}", "{{ queue | replace(x, 'b') }}",
    "{{ queue | replace('{', 'b') }}", "{{ queue | upper | center(9) }}",
])
def test_anything_else_is_not_plain_or_needs_the_sandbox(text):
    plan = templates.plain(text)
    assert plan is None or "dict" in [v.name for v in plan.variables()]


def test_a_replace_that_would_render_too_much_is_refused_before_it_is_built():
    result = render_all([Job("{{ v | replace('', 'xxxxxxxxxx') }}", False, 0)],
                        [{"v": "y" * 10_000}])
    assert result == [Failure("template: renders more than the 65536 characters allowed")]


def test_5000_services_of_lower_filters_need_no_sandbox(monkeypatch):
    def no_child(*args):
        raise AssertionError("the sandbox started")

    monkeypatch.setattr(templates, "_in_child", no_child)
    stamps = [{"item": f"Queue_{i}"} for i in range(5000)]
    jobs = [Job(f'x{{q="{{{{ item | lower }}}}", r="{i}"}}', True, stamp)
            for stamp in range(5000) for i in range(4)]
    assert render_all(jobs, stamps)[-1] == 'x{q="queue_4999", r="3"}'


def test_the_sandbox_renders_what_computes_and_escapes_for_promql():
    jobs = [Job('{{ queue | upper }}', True, 0), Job("{{ n * 2 }}", False, 0),
            Job("{% for q in qs %}{{ q }},{% endfor %}", False, 1)]
    stamps = [VARIABLES, {"qs": ["a", "b"]}]
    assert render_all(jobs, stamps) == ['WE\\"IRD\\\\Q\\nX', "6", "a,b,"]


def test_a_variable_of_any_size_is_refused_before_it_is_copied():
    huge = "y" * 40_000
    result = render_all([Job("{{ v }}{{ v }}", True, 0)], [{"v": huge}])
    assert result == [Failure("template: renders 80000 characters, more than the 65536 "
                              "allowed")]


def test_the_whole_configs_templates_have_a_budget():
    # 300 services each rendering 60,000 characters: 18 MB, more than the 16 MiB allowed.
    stamps = [{"v": "y" * 60_000, "i": i} for i in range(300)]
    results = render_all([Job("{{ i }}{{ v }}", False, i) for i in range(300)], stamps)
    spent = next(i for i, result in enumerate(results) if not isinstance(result, str))
    used = sum(len(r) + len("{{ i }}{{ v }}") for r in results[:spent])
    # Refused only when it would not fit.
    assert used <= templates.MAX_TOTAL < used + len("{{ i }}{{ v }}") + 60_003
    assert results[spent] == Failure("template: the config's templates render more than the "
                                     "16777216 characters allowed in all")
    assert results[spent + 1:] == [None] * (299 - spent)  # rendering stopped


def test_equal_jobs_render_once():
    jobs = [Job("{{ n | string }}", False, 0)] * 3
    assert render_all(jobs, [VARIABLES]) == ["3"] * 3


def test_after_the_sandbox_is_killed_the_culprit_is_named_and_later_jobs_are_not_rendered():
    jobs = [Job("{{ n + 1 }}", False, 0),
            Job("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                "{% endfor %}", False, 0),
            Job("{{ n + 2 }}", False, 0)]
    assert render_all(jobs, [VARIABLES]) == [
        "4", Failure("template: still computing after 0.4 s of CPU time (a long loop, deep "
                     "recursion or a huge number?)"), None]


def test_the_sandbox_gets_none_of_our_environment(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "s3cret")
    environments = []
    popen = subprocess.Popen

    def spy(*args, **kwargs):
        child = popen(*args, **kwargs)  # returns once the child has exec'd: its own env
        with open(f"/proc/{child.pid}/environ", "rb") as environ:
            environments.append(environ.read())
        return child

    monkeypatch.setattr(child_limits.subprocess, "Popen", spy)
    assert render_all([Job("{{ n + 1 }}", False, 0)], [VARIABLES]) == ["4"]
    assert len(environments) == 1
    assert b"s3cret" not in environments[0] and b"SECRET_TOKEN" not in environments[0]


def test_a_sandbox_that_cannot_start_is_one_failure(monkeypatch):
    monkeypatch.setattr(templates.sys, "executable", "/nonexistent/python")
    assert render_all([Job("{{ n + 1 }}", False, 0)], [VARIABLES]) == [
        Failure("template: cannot start the sandbox: No such file or directory")]


def test_rendering_thousands_of_plain_templates_stays_in_process():
    stamps = [{"queue": f"q{i}"} for i in range(2000)]
    jobs = [Job('sum(x{queue="{{ queue }}"})', True, i) for i in range(2000)]
    started = time.perf_counter()
    results = render_all(jobs, stamps)
    assert results[1999] == 'sum(x{queue="q1999"})'
    # No child process (which takes tens of milliseconds to start) for these.
    assert time.perf_counter() - started < 5


def test_templates_that_compute_share_one_cpu_budget_and_the_error_says_so():
    # Cheap ones, but so many that together they pass 0.4 s of CPU time.
    stamps = [{"queue": f"q{i}"} for i in range(100_000)]
    results = render_all([Job("{{ queue | title }}", False, i) for i in range(100_000)], stamps)
    failed = next(i for i, result in enumerate(results) if not isinstance(result, str))
    assert results[failed] == Failure(
        f"template: the config's {failed} templates before this one that compute (filters, "
        "expressions, statements) took most of the 0.4 s of CPU time they may have together")
    assert results[failed - 1] == f"Q{failed - 1}"


def test_jinja2_has_the_sandbox_fixes():
    # Before 3.1.6 a sandboxed template could reach str.format or attr() and escape.
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "Jinja2>=3.1.6" in project["project"]["dependencies"]
    installed = tuple(int(part) for part in metadata.version("Jinja2").split(".")[:3])
    assert installed >= (3, 1, 6)
