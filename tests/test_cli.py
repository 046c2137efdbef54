"""The command line: flags, environment, config merging, and one-line errors for bad input."""

import re
import subprocess
import sys
import textwrap

import pytest

from xtrace_agent import cli
from xtrace_agent.errors import UsageError

AGENT = [sys.executable, "-m", "xtrace_agent"]


def run(*args, env=None):
    import os
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIAMETRICS", "NETWORK_INTERFACE"))}
    full_env.update(env or {})
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, env=full_env, timeout=60)


@pytest.mark.parametrize("args, needle", [
    (["--interval", "0"], "--interval"),
    (["--interval", "abc"], "--interval"),
    (["--count", "0"], "--count"),
    (["--count", "-3"], "--count"),
    (["-m", "tcp"], "-m"),
    (["--output", "xml"], "--output"),
    (["--bogus"], "--bogus"),
    (["-i", "eth0,,eth1"], "empty name"),
    (["--http-listen", "nonsense"], "httpListen"),
    (["--remote-write-url", "ftp://x"], "http://"),
    (["-i", "xt-no-such-if0"], "unknown interface 'xt-no-such-if0'"),
    (["--direction", "sideways"], "--direction"),
    (["--direction", "ingress,,egress"], "empty name"),
])
def test_bad_flags_give_one_line_and_exit_2(args, needle):
    r = run(*args, "--http-listen", "") if "--http-listen" not in args else run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and lines[0].startswith("xtrace-agent: error:")
    assert "Traceback" not in r.stderr


def test_victoriametrics_enabled_without_url_is_usage_error():
    r = run("-i", "lo", env={"VICTORIAMETRICS_ENABLED": "true"})
    assert r.returncode == 2
    assert "VICTORIAMETRICS_REMOTE_WRITE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_config_file_names_the_field(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("mode: xdp\nxdp:\n  sampling: 0\n")
    r = run("--config", str(bad))
    assert r.returncode == 2 and "xdp.sampling" in r.stderr
    bad.write_text("mode: [unclosed\n")
    r = run("--config", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    r = run("--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    bad.write_text("mode: xdp\nflowTable: 3\n")
    r = run("--config", str(bad))
    assert r.returncode == 2 and "flowTable: unknown field" in r.stderr


def test_list_prints_interfaces_and_rdma_devices():
    from tests.rdma.util import FIXTURE

    r = run("-l", "--sysfs", FIXTURE)
    assert r.returncode == 0, r.stderr
    interfaces, rdma = r.stdout.split("RDMA devices:\n")
    assert interfaces.startswith("Network interfaces:\n") and re.search(r"^  lo +state=", interfaces, re.M)
    # every port of the fixture tree, with the net device its GID table names
    assert re.search(r"^  mlx5_1 +port=1 link_layer=Ethernet state=ACTIVE .*netdev=ens1f0np0$", rdma, re.M)
    assert re.search(r"^  mlx4_0 +port=2 link_layer=InfiniBand state=DOWN ", rdma, re.M)
    assert len(re.findall(r"^  \S+ +port=\d", rdma, re.M)) == 6
    none = run("-l", "--sysfs", "/nonexistent")
    assert none.returncode == 0 and "RDMA devices:\n  (none)\n" in none.stdout


def test_help_exits_0():
    r = run("-h")
    assert r.returncode == 0 and "-m" in r.stdout and "NETWORK_INTERFACE" in r.stdout


def _cfg(argv, env=None):
    return cli.build_config(cli.parser().parse_args(argv), env or {})


def test_interfaces_from_flags_env_and_default():
    assert _cfg(["-i", "eth1,eth2", "-i", "eth3"]).interfaces == ("eth1", "eth2", "eth3")
    assert _cfg([], {"NETWORK_INTERFACE": "ens5,ens6"}).interfaces == ("ens5", "ens6")
    assert _cfg([]).interfaces == ("eth0",)


def test_heritage_environment_enables_remote_write():
    cfg = _cfg([], {"VICTORIAMETRICS_ENABLED": "true",
                    "VICTORIAMETRICS_REMOTE_WRITE": "http://vm:8428/api/v1/import/prometheus"})
    assert [t.url for t in cfg.remote_write] == ["http://vm:8428/api/v1/import/prometheus"]
    assert _cfg([], {"VICTORIAMETRICS_ENABLED": "false", "VICTORIAMETRICS_REMOTE_WRITE": "http://x"}).remote_write == ()
    with pytest.raises(UsageError):
        _cfg([], {"VICTORIAMETRICS_ENABLED": "maybe"})


def test_flags_override_config_file(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("mode: rdma\ninterval: 2\ndevices: [mlx5_0]\nxdp: {attachMode: native}\n")
    cfg = _cfg(["--config", str(f), "--interval", "0.5", "--attach-mode", "generic"])
    assert cfg.mode == "rdma" and cfg.interval == 0.5 and cfg.devices == ("mlx5_0",)
    assert cfg.xdp.attach_mode == "generic" and cfg.from_file


def test_config_file_in_xdp_mode_needs_interfaces(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("mode: xdp\ninterval: 1\n")
    r = run("--config", str(f), "--http-listen", "")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "interfaces: required in xdp mode" in lines[0], r.stderr
    # the eth0 default stays for the command line, and -i completes a file
    assert _cfg([]).interfaces == ("eth0",)
    assert _cfg(["--config", str(f), "-i", "lo"]).interfaces == ("lo",)


def test_sysfs_that_does_not_exist_says_so():
    r = run("-m", "rdma", "--sysfs", "/nonexistent", "--count", "1", "--http-listen", "")
    assert r.returncode == 2
    assert r.stderr.strip() == "xtrace-agent: error: --sysfs /nonexistent: the path does not exist"


def test_flow_gauges_switch():
    assert _cfg([]).xdp.flow_gauges is True
    assert _cfg(["--no-flow-gauges", "--attach-mode", "native"]).xdp.flow_gauges is False


def test_directions_from_flags_and_config(tmp_path):
    assert _cfg([]).xdp.directions == ("ingress",)
    assert _cfg(["--direction", "egress,ingress"]).xdp.directions == ("ingress", "egress")
    assert _cfg(["--direction", "egress", "--direction", "egress"]).xdp.directions == ("egress",)
    f = tmp_path / "agent.yaml"
    f.write_text("interfaces: [lo]\nxdp:\n  directions: [ingress, egress]\n")
    assert _cfg(["--config", str(f)]).xdp.directions == ("ingress", "egress")
    f.write_text("interfaces: [lo]\nxdp:\n  directions: []\n")
    with pytest.raises(UsageError, match="xdp.directions: must be a non-empty list"):
        _cfg(["--config", str(f)])


def test_a_stop_signal_arriving_while_the_main_thread_holds_the_stop_events_lock_still_stops():
    """The agent stopped on SIGTERM by setting a threading.Event from the signal handler. Python runs
    a handler in the main thread between two bytecodes, so one arriving while that thread held the
    event's lock (entering or leaving stop.wait(), likelier on a busy machine) waited for the lock
    forever: an agent that never exited (seen twice in full test runs). Here the lock is held on
    purpose while the signal comes; the stop must still arrive, and the process must not hang."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        from xtrace_agent.cli import stop_on_signals
        stop = threading.Event()
        stop_on_signals(stop)
        with stop._cond:  # what stop.wait() holds around its wait
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(200):  # bytecodes: the handler runs here, inside the lock
                time.sleep(0.001)
        print("stopped" if stop.wait(5) else "not stopped")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split() == ["stopped"], out.stderr
