"""The two ways in from a fresh shell: ``xenoffload conformance`` and the pytest plugin, each
starting implementations as commands (our agents pass; a broken one fails, named)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MUTANTS = Path(__file__).with_name("mutants.py")
BACKEND = (f"{sys.executable} -m xenoffload backend-agent --mode {{mode}} --toggles dry-run "
           "--config {config} --device-log {device-log}")
FRONTEND = (f"{sys.executable} -m xenoffload guest-agent --mode {{mode}} --toggles dry-run "
            "--config {config} --domid 1")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def conformance(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "xenoffload", "conformance", *args], cwd)


def test_cli_passes_our_backend_agent_and_writes_junit(tmp_path: Path) -> None:
    report = tmp_path / "backend.xml"
    done = conformance("--role", "backend", "--impl", BACKEND, "--junit", str(report),
                       "--scenario", "R9-keys-before-state", "--scenario",
                       "R10-companion-stock-linux", "--scenario", "R7-default-computes",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed, 0 failed" in done.stdout
    assert "xenstore+device-log" in done.stdout  # the agent fills {device-log}
    suite = ET.parse(report).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"
    assert {case.get("name") for case in suite} == {
        "R9-keys-before-state", "R10-companion-stock-linux", "R7-default-computes"}


def test_cli_passes_our_guest_agent(tmp_path: Path) -> None:
    done = conformance("--role", "frontend", "--impl", FRONTEND, "--scenario",
                       "R12-renegotiate-from-scratch", "--scenario", "R10-companion-stock-linux",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "frontend:R12-renegotiate-from-scratch" in done.stdout
    assert "xenstore+result" in done.stdout  # no {device-log}: its published result


def test_cli_changes_our_agents_policy_through_config_and_sighup(tmp_path: Path) -> None:
    done = conformance("--role", "frontend", "--impl", FRONTEND, "--scenario",
                       "R12-own-policy-change", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_cli_fails_a_command_that_writes_state_before_its_features(tmp_path: Path) -> None:
    report = tmp_path / "broken.xml"
    done = conformance("--role", "backend", "--impl",
                       f"{sys.executable} {MUTANTS} backend state-before-features",
                       "--junit", str(report), "--scenario", "R9-keys-before-state",
                       "--scenario", "R7-default-computes", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "backend:R9-keys-before-state [R9] FAIL" in done.stdout
    assert "not written" in done.stdout and "at: step" in done.stdout
    suite = ET.parse(report).getroot()
    assert suite.get("failures") == "1" and suite.get("skipped") == "1"  # no {config}
    failure = suite.find("testcase[@name='R9-keys-before-state']/failure")
    assert failure is not None and "[R9]" in (failure.get("message") or "")


def test_cli_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    done = conformance("--role", "backend", "--impl", BACKEND, "--scenario", "R99-nope",
                       cwd=tmp_path)
    assert done.returncode == 2 and "R99-nope" in done.stderr


def test_cli_refuses_a_selection_that_matches_nothing(tmp_path: Path) -> None:
    done = conformance("--role", "frontend", "--impl", FRONTEND, "--mode", "companion",
                       "--scenario", "R2-companion-hostile-frontend", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no scenario for a frontend in companion mode" in done.stderr
    assert not done.stdout


def test_cli_reports_an_implementation_that_exits_at_start(tmp_path: Path) -> None:
    impl = (f"{sys.executable} -c \"import sys; sys.stderr.write('xsfoo: unknown option "
            "--mode\\n'); sys.exit(3)\" --mode {mode}")
    report = tmp_path / "exits.xml"
    done = conformance("--role", "backend", "--impl", impl, "--scenario",
                       "R9-keys-before-state", "--scenario", "R10-companion-stock-linux",
                       "--junit", str(report), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0 passed, 0 failed, 2 errors" in done.stdout
    assert "ERROR" in done.stdout and "the implementation exited with status 3" in done.stdout
    assert "xsfoo: unknown option --mode" in done.stdout  # its standard error's tail
    assert "[R9]" not in done.stdout and "[R10]" not in done.stdout
    suite = ET.parse(report).getroot()
    assert suite.get("errors") == "2" and suite.get("failures") == "0"


def test_cli_keeps_the_lab_and_the_implementations_output(tmp_path: Path) -> None:
    done = conformance("--role", "backend", "--impl", BACKEND, "--keep-workdir",
                       "--scenario", "R5-negotiates-offload", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    kept = Path(done.stdout.split("backend:R5-negotiates-offload: ")[-1].split()[0])
    try:
        assert {"requests.log", "policy.toml", "implementation.err", "implementation.out",
                "device.log"} <= {path.name for path in kept.iterdir()}
        assert " IUT " in (kept / "requests.log").read_text()
        assert "to-guest=ipv4+ipv6" in (kept / "device.log").read_text()
    finally:
        shutil.rmtree(kept)


def test_pytest_plugin_runs_the_scenarios_against_a_command(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "pytest", "-p", "xenoffload.conformance", "-q",
            "-p", "no:cacheprovider", "--conformance-scenario", "R1-own-directory-only"]
    good = run([*base, "--conformance-impl", f"backend:{BACKEND}", "--conformance-impl",
                f"frontend:{FRONTEND}"],
               tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "2 passed" in good.stdout
    bad = run([*base, "--conformance-impl",
               f"backend:{sys.executable} {MUTANTS} backend outside-dir"],
              tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "conformance[backend:R1-own-directory-only]" in bad.stdout
    assert "[R1] FAIL" in bad.stdout and "data/xenoffload-mirror" in bad.stdout
