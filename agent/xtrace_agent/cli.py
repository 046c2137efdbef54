"""The `xtrace-agent` command: flags and environment (XTrace-Catch compatible), then the pipeline.

    source -> accounting -> Report each interval -> sinks (stdout, remote write, /metrics, pod status)

What each mode's source and accounting are is pipeline.MODES; run() wires every stage, in that
order, the same way for every mode, and nothing else does.

Exit codes: 0 done, 2 bad usage or config, 1 runtime failure; always one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import threading
import time

from xtrace_agent import config as config_mod
from xtrace_agent import environ
from xtrace_agent import selfmetrics as sm
from xtrace_agent.config import AgentConfig, RemoteWriteTarget
from xtrace_agent.errors import AgentFailure, UsageError
from xtrace_agent.fields import http_url
from xtrace_agent.health import Health
from xtrace_agent.pipeline import MODES
from xtrace_agent.readiness import Kind
from xtrace_agent.samples import Report
from xtrace_agent.sinks.stdout import StdoutSink

PROG = "xtrace-agent"
log = logging.getLogger("xtrace")
FLUSH_TIMEOUT = 10.0  # seconds the sinks get to deliver on shutdown (the pod's grace period is longer)



class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage otherwise)
        raise UsageError(f"{message} (see {PROG} -h)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    lo, hi = config_mod.BOUNDS["interval"]
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g} seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="XTrace agent: per-flow XDP traffic counts and RDMA/InfiniBand counters, "
                    "printed and pushed to VictoriaMetrics.",
        epilog="Environment: NETWORK_INTERFACE (default -i), VICTORIAMETRICS_ENABLED=true with "
               "VICTORIAMETRICS_REMOTE_WRITE=URL (same as --remote-write-url), NODE_NAME (node label).",
    )
    p.add_argument("-m", "--mode", choices=config_mod.MODES, default=None, help="xdp (default), rdma or nccl")
    p.add_argument("-i", "--interface", action="append", metavar="IFACE[,IFACE...]",
                   help="network interface(s) for xdp mode; repeatable (default: $NETWORK_INTERFACE, else eth0)")
    p.add_argument("-d", "--device", action="append", metavar="DEV[,DEV...]",
                   help="RDMA device(s) for rdma/nccl mode; repeatable (default: every device found)")
    p.add_argument("-l", "--list", action="store_true", help="list network interfaces and RDMA devices, then exit")
    p.add_argument("--interval", type=_positive_float, default=None, metavar="SECONDS",
                   help="seconds between reports (default 5; fractions allowed)")
    p.add_argument("--count", type=_positive_int, default=None, metavar="N",
                   help="exit after N reports (every sink flushed first)")
    p.add_argument("--output", choices=config_mod.OUTPUTS, default=None, help="stdout format: text (default), json, or none")
    p.add_argument("--sysfs", default=None, metavar="PATH", help="sysfs root for rdma/nccl (default /sys)")
    p.add_argument("--ethtool-dir", default=None, metavar="DIR",
                   help="rdma/nccl: read NIC statistics from DIR/<netdev>.txt (`ethtool -S` dumps), not the live NICs")
    p.add_argument("--remote-write-url", action="append", default=None, metavar="URL",
                   help="Prometheus remote-write URL (VictoriaMetrics /api/v1/write); repeatable")
    p.add_argument("--config", default=None, metavar="FILE", help="agent YAML config (as the operator renders it)")
    p.add_argument("--attach-mode", choices=config_mod.ATTACH_MODES, default=None,
                   help="XDP attach mode: auto (native, else generic), native or generic")
    p.add_argument("--http-listen", default=None, metavar="HOST:PORT",
                   help="address for /metrics, /healthz, /readyz (default 0.0.0.0:9435; '' disables)")
    p.add_argument("--no-flow-gauges", action="store_true",
                   help="do not export XTrace-Catch's per-interval gauges xtrace_network_flow_{packets,bytes}")
    p.add_argument("--direction", action="append", metavar="DIR[,DIR...]",
                   help="xdp mode: ingress (default: what the interfaces receive), egress (what they send), "
                        "or both; repeatable")
    p.add_argument("--drops", action="store_true",
                   help="xdp: count dropped packets per flow with the kernel's reason (needs the kernel's BTF)")
    p.add_argument("--tcp", action="store_true",
                   help="xdp: TCP retransmits per flow and the sockets' RTT (needs the kernel's BTF)")
    p.add_argument("--pod-attribution", action="store_true",
                   help="rdma/nccl: label each device a pod holds with that pod, from the kubelet's pod-resources API")
    p.add_argument("--pod-resources-socket", default=None, metavar="PATH",
                   help=f"the kubelet's pod-resources socket (default {config_mod.DEFAULT_POD_RESOURCES_SOCKET})")
    p.add_argument("--spool-dir", default=None, metavar="DIR", help="remote-write spool directory (survives restarts)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def _split(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or ():
        for part in v.split(","):
            part = part.strip()
            if not part:
                raise UsageError(f"empty name in {v!r} (see {PROG} -h)")
            if part not in out:
                out.append(part)
    return tuple(out)


def build_config(args: argparse.Namespace, env: dict[str, str]) -> AgentConfig:
    """Config file first, then environment, then flags: the last one given wins."""
    cfg = config_mod.load_file(args.config) if args.config else AgentConfig()
    changes: dict = {}
    if args.mode:
        changes["mode"] = args.mode
    if args.interface:
        changes["interfaces"] = _split(args.interface)
    elif env.get("NETWORK_INTERFACE") and not cfg.interfaces:
        changes["interfaces"] = _split([env["NETWORK_INTERFACE"]])
    elif not cfg.interfaces:
        if cfg.from_file and MODES[args.mode or cfg.mode].interfaces:
            # the operator always renders them: a file without any is a mistake, not a wish for eth0
            raise UsageError(f"config: {args.config}: interfaces: required in xdp mode (names or globs)")
        changes["interfaces"] = ("eth0",)  # the old tool's default, for the command line
    if args.device:
        changes["devices"] = _split(args.device)
    for flag in ("interval", "count", "output", "sysfs", "ethtool_dir"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    if args.http_listen is not None:
        if args.http_listen:
            config_mod.parse_listen(args.http_listen)
        changes["http_listen"] = args.http_listen
    urls = list(args.remote_write_url or ())
    enabled = environ.VM_ENABLED.raw(env).strip().lower()
    if enabled in ("1", "true", "yes", "on"):
        url = environ.VM_REMOTE_WRITE.raw(env).strip()
        if not url:
            raise UsageError("VICTORIAMETRICS_ENABLED=true but VICTORIAMETRICS_REMOTE_WRITE is not set")
        urls.append(url)
    elif enabled not in ("", "0", "false", "no", "off"):
        raise UsageError(f"VICTORIAMETRICS_ENABLED must be true or false, got {enabled!r}")
    if urls:
        for url in urls:
            try:
                http_url(url)
            except ValueError as e:
                raise UsageError(f"remote-write URL: {e}") from None
        changes["remote_write"] = cfg.remote_write + tuple(RemoteWriteTarget(url=u) for u in urls)
    if args.spool_dir is not None:
        changes["spool"] = dataclasses.replace(cfg.spool, path=args.spool_dir)
    xdp = {}
    if args.attach_mode:
        xdp["attach_mode"] = args.attach_mode
    if args.no_flow_gauges:
        xdp["flow_gauges"] = False
    for feature in ("drops", "tcp"):
        if getattr(args, feature):
            xdp[feature] = True
    if args.direction:
        try:
            xdp["directions"] = config_mod.parse_directions(list(_split(args.direction)))
        except ValueError as e:
            raise UsageError(f"--direction: {e}") from None
    if xdp:
        changes["xdp"] = dataclasses.replace(cfg.xdp, **xdp)
    rdma = {"pod_attribution": True} if args.pod_attribution else {}
    if args.pod_resources_socket is not None:
        rdma["pod_resources_socket"] = args.pod_resources_socket
    if rdma:
        changes["rdma"] = dataclasses.replace(cfg.rdma, **rdma)
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.rdma.pod_attribution and MODES[cfg.mode].interfaces and not args.list:
        raise UsageError(f"pod attribution labels RDMA devices: it needs -m rdma or -m nccl, not {cfg.mode}")
    if not MODES[cfg.mode].interfaces and not args.list and not os.path.isdir(cfg.sysfs):
        where = "--sysfs" if args.sysfs is not None else "sysfs"
        raise UsageError(f"{where} {cfg.sysfs}: the path does not exist")
    if cfg.ethtool_dir is not None and not os.path.isdir(cfg.ethtool_dir):
        raise UsageError(f"--ethtool-dir {cfg.ethtool_dir}: not a directory (one `ethtool -S` dump per netdev)")
    return cfg


def listing(cfg: AgentConfig) -> list[str]:
    from xtrace_agent import netdev

    lines = ["Network interfaces:"] + [f"  {line}" for line in netdev.listing(cfg.sysfs)]
    lines.append("RDMA devices:")
    try:
        from xtrace_agent.rdma.sysfs import list_devices
    except ImportError:
        list_devices = None
    rdma = list_devices(cfg.sysfs) if list_devices else []
    lines += [f"  {line}" for line in rdma] or ["  (none)"]
    from xtrace_agent.nic.source import listing as nic_listing
    lines.append("NIC statistics (rdma/nccl):")
    lines += [f"  {line}" for line in nic_listing(cfg.sysfs, cfg.ethtool_dir, cfg.nic.interfaces)] or ["  (none)"]
    if cfg.rdma.pod_attribution:
        from xtrace_agent.owners import table

        owners = table.from_config(cfg)
        owners.refresh()
        lines.append(f"RDMA device owners (kubelet pod-resources, {cfg.rdma.pod_resources_socket}):")
        lines += [f"  {line}" for line in owners.listing()]
    from xtrace_agent.xdp import headers
    lines += ["Kernel headers (XDP compile):", f"  {headers.summary()}"]
    from xtrace_agent.xdp import events
    lines += ["Drops and TCP events (--drops, --tcp):"] + [f"  {line}" for line in events.support()]
    return lines


def build_sinks(cfg: AgentConfig, health: Health, env: dict[str, str] | None = None) -> list:
    text = MODES[cfg.mode].text(cfg) if cfg.output == "text" else None
    sinks: list = [StdoutSink(cfg.output, text)] if cfg.output != "none" else []
    if cfg.remote_write:
        from xtrace_agent.sinks.remote_write import RemoteWriteSink
        sinks += [RemoteWriteSink(target, cfg, health).start() for target in cfg.remote_write]
    from xtrace_agent.sinks.podstatus import PodStatusSink
    pod = PodStatusSink.from_environment(health, env)  # in a pod: readiness on the Pod's status
    return sinks + ([pod] if pod else [])


def _deliver(sinks: list, report: Report, health: Health) -> None:
    # the agent's own health travels with the data, the same for every sink (stdout JSON shows
    # exactly what is pushed)
    report.health = health.samples(report.timestamp)
    for sink in sinks:
        try:
            sink.write(report)
        except Exception as e:  # a sink's bug must not stop collection or the other sinks
            health.inc(sm.SINK_ERRORS, labels={"sink": type(sink).__name__})
            log.error("%s failed: %s", type(sink).__name__, e)


@contextlib.contextmanager
def gc_paused():
    """No cyclic GC while one interval is built and handed over.

    An interval at 100k flows allocates ~300k objects next to ~100k long-lived ones (the
    cumulative counters): left on, the collector rescans them repeatedly and doubles the cost
    (measured 250 ms -> 130 ms). What the interval leaves behind is freed by reference counting.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Heap:
    """glibc's heap, told to give back what an interval freed (no-op where libc is not glibc).

    An interval at 100k flows allocates and frees tens of MiB (the encoded bodies, the report's
    columns); glibc keeps freed memory mapped, spread over one arena per thread (the collector, the
    senders, /metrics), so the agent's RSS stays at its peak. Two arenas and a trim after each
    interval (malloc_trim also returns free pages inside the heap) keep the steady RSS near what
    is live. Measured in bench/bench_peer.py."""

    M_ARENA_MAX = -8

    def __init__(self) -> None:
        self._libc = None
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(self.M_ARENA_MAX, 2)
            self._libc = libc
        except (OSError, AttributeError):
            pass

    def trim(self) -> None:
        if self._libc is not None:
            self._libc.malloc_trim(0)


def run(cfg: AgentConfig, stop: threading.Event, env: dict[str, str] | None = None) -> int:
    """The agent's loop: collect every interval, deliver to every sink, until --count or a signal."""
    health = Health()
    heap = _Heap()
    mode = MODES[cfg.mode]
    # not ready until the first report is out: compiling and attaching take a moment. Said before the
    # server starts: building the source and the sinks takes a while, and /readyz must not say ok meanwhile
    health.not_ready(Kind.STARTING, "agent", mode.starting())
    server = None
    if cfg.http_listen:
        from xtrace_agent.sinks.http import MetricsServer
        server = MetricsServer(cfg, health)
        server.start()  # first, so /healthz answers while the program compiles
    source = mode.source(cfg, health)
    accounting = mode.accounting(cfg, health)
    sinks = build_sinks(cfg, health, env) + ([server] if server else [])
    health.set(sm.REPORTS, 0)
    for sink in sinks:  # every self-metric exists from the first report, at 0
        health.inc(sm.SINK_ERRORS, 0, {"sink": type(sink).__name__})
    try:
        source.start()
        reports = 0
        next_tick = time.monotonic() + cfg.interval
        while True:
            stopped = stop.wait(max(0.0, next_tick - time.monotonic()))
            next_tick += cfg.interval
            # also on a signal: one last collection, so what the kernel counted since the
            # previous interval reaches the sinks before we detach
            with gc_paused():
                now = time.time()
                report = accounting.report(source.collect(now), now)
                reports += 1
                health.inc(sm.REPORTS)
                health.ready("agent")
                _deliver(sinks, report, health)
            del report
            gc.collect(1)  # the interval's garbage is young: a cheap collection frees it
            heap.trim()  # and what it freed goes back to the system
            if stopped or (cfg.count and reports >= cfg.count):
                break
            if next_tick < time.monotonic():  # a slow interval: skip ticks rather than burst
                next_tick = time.monotonic() + cfg.interval
    finally:
        source.close()
        for sink in sinks:
            try:
                sink.close(FLUSH_TIMEOUT)
            except Exception as e:
                log.error("%s failed to flush: %s", type(sink).__name__, e)
    return 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop`, but not from the handler: Python runs a handler in the main
    thread between two bytecodes, which may be while that thread holds the event's own lock
    (entering or leaving stop.wait(), most likely on a busy machine, where the thread is preempted
    there), and set() would then wait for that lock forever: an agent that never exits. The
    handlers do nothing; the signal's number reaches a pipe (signal.set_wakeup_fd, written by the
    interpreter's C-level handler) that a thread reads, and that thread sets the event."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: None)

    numbers = {int(sig) for sig in STOP_SIGNALS}

    def watch() -> None:
        while True:
            got = os.read(read, 64)  # one byte per signal caught
            if not got or not numbers.isdisjoint(got):
                stop.set()
                return

    threading.Thread(target=watch, name="xtrace-signals", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    stop = threading.Event()
    try:
        args = parser().parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = build_config(args, dict(os.environ))
        if args.list:
            print("\n".join(listing(cfg)))
            return 0
        stop_on_signals(stop)
        return run(cfg, stop, dict(os.environ))
    except (UsageError, AgentFailure) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        if environ.DEBUG.get():
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (set XTRACE_DEBUG=1 for details)", file=sys.stderr)
        return 1
