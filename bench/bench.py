#!/usr/bin/env python3
"""`make bench`: webhook-forwarder side by side with nginx, on loopback (issue 5).

What it measures, in one run, with the same wrk command for every target
(`wrk -t1 -cN -d10s --latency -s bench/post.lua`, after a 2 s warm-up run against the
same target; bench/post.lua POSTs the README's sample record as application/json):

  ceiling   nginx, one process, `return 201 "accepted"` (bench/nginx-ceiling.conf)
  batch 100 webhook-forwarder --batch-size 100 --batch-interval 1s
  batch 10  webhook-forwarder --batch-size 10 (default interval)

each with 64 and with 8 connections. The forwarder posts to a second nginx that
answers 200 and logs each batch's Content-Length (bench/nginx-endpoint.conf); every
record is the same sample, so a batch of k records is k*(R+1)+1 bytes, R being the size
of one record as the forwarder serializes it (measured once at start by sending one
record through webhook-sink). Per run:
requests/s, p50/p99 latency, non-2xx, the service's CPU time (utime+stime of the whole
process from /proc/PID/stat) per 2xx answer of the measured run, peak RSS (VmHWM), and
for the forwarder the records accepted (webhook_records_accepted_total, read just
before SIGTERM) against the records that reached the endpoint (counted from the
endpoint's log once the forwarder has drained and exited 0), and its 503s.

Then gzip to the endpoint: batch 100 with -c8, once without and once with
--post-compression gzip, each read from /metrics around the measured run: bytes
sent per record (webhook_batch_body_bytes_total over webhook_records_forwarded_total)
and so the compression ratio on the sample record, and the worker thread's CPU
(utime+stime of the thread named "forwarder" in /proc/PID/task) per delivered batch.

Then, without traffic: CPU ticks used over 10 s once /healthz answers, idle RSS,
time from spawning the binary to the first 200 on /healthz (10 starts, polling with a
fresh connection in a tight loop), the stripped binary's size, and RSS before and with
9,000 idle keep-alive connections open (file limit raised to 20,000 on both sides).

CPU layout: the service under test (nginx ceiling or the forwarder, all its threads)
is pinned to CPU 0 at exec; wrk, the endpoint nginx and this script run on CPU 1.

It installs wrk and nginx (apt-get) when missing, builds the release binaries, prints
one table with the targets of issues 5 and 12 and PASS/FAIL, and writes every figure to
target/bench/results.json (forwarder logs go to target/bench/*.log). Every process it
starts runs in its own process group and is killed on exit, error or Ctrl-C.

Environment: BENCH_SECONDS (measured run and idle window, default 10),
BENCH_WARMUP (warm-up run, default 2; 0 skips it), BENCH_NICE (niceness of the
pinned processes, default 0; e.g. -10 keeps other work on a shared machine from
stealing CPU 0 and CPU 1 during the runs), BENCH_ONLY (a comma-separated list of the
sections to run: load, remote, compression, idle, startup, binary, connections, bursts,
chunks; default all of them; the table shows what ran), BENCH_ROUNDS (load runs
repeated that many times, interleaved, each figure the median over the rounds and
every delivery count summed; default 1).
"""

import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = ROOT / "target" / "bench"
RELEASE = ROOT / "target" / "release"
FORWARDER = RELEASE / "webhook-forwarder"
SINK = RELEASE / "webhook-sink"

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
NICE = int(os.environ.get("BENCH_NICE", "0"))  # e.g. -10 on a shared machine; 0: untouched
SECTIONS = ("load", "remote", "compression", "idle", "startup", "binary", "connections",
            "bursts", "chunks")
# BENCH_ROUNDS=3: each load run that many times, interleaved with the others, and the
# median of each figure reported: one run's figures move by 10-15% on a shared VM.
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "1")))
# BENCH_ONLY=load,remote: just those sections, for a quick before/after while working.
ONLY = [s for s in os.environ.get("BENCH_ONLY", ",".join(SECTIONS)).split(",") if s]
CONNECTIONS = (64, 8)
STARTS = 10  # exec-to-first-200 samples
IDLE_CONNECTIONS = 9000
NOFILE = 20000

SERVICE_CPU = 0  # the service under test
LOAD_CPU = 1  # wrk, the endpoint, this script
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# The README's sample record (the same bytes as bench/post.lua sends), and the way the
# forwarder re-serializes it (serde_json: compact, fields in declaration order, every
# field present). The calibration step checks this against a real captured batch.
SAMPLE = (
    '{"user_id": 1, "total": 1.65, "title": "delectus aut autem", "meta": {"logins": '
    '[{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}], "phone_numbers": {"home": '
    '"555-1212", "mobile": "123-5555"}}, "completed": false}'
)
RECORD = json.dumps(json.loads(SAMPLE), separators=(",", ":"))

# The compression scenario: one batch size, one connection count, both encodings.
COMPRESSION_FLAGS = ["--batch-size", "100", "--batch-interval", "1s"]
COMPRESSION_CONNECTIONS = 8

RUNS = (
    # name, label, forwarder flags (None: the nginx ceiling)
    ("ceiling", "ceiling (nginx)", None),
    ("batch100", "batch 100", ["--batch-size", "100", "--batch-interval", "1s"]),
    ("batch10", "batch 10", ["--batch-size", "10"]),
)


def log(msg):
    print(msg, flush=True)


# --- processes -------------------------------------------------------------------


class Procs:
    """Every process the bench starts, each in its own process group."""

    def __init__(self):
        self.started = []
        self.tempdirs = []

    def start(self, cmd, *, cpu=None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + [str(c) for c in cmd]
            if NICE:
                cmd = ["nice", "-n", str(NICE)] + cmd
        p = subprocess.Popen(
            [str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, start_new_session=True,
        )
        self.started.append(p)
        return p

    def run(self, cmd, *, cpu=None, timeout, capture=True):
        """Runs a bounded command to completion; returns (status, stdout, stderr)."""
        pipe = subprocess.PIPE if capture else None
        p = self.start(cmd, cpu=cpu, stdout=pipe, stderr=pipe)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise RuntimeError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")
        decode = lambda b: b.decode(errors="replace") if b else ""  # noqa: E731
        return p.returncode, decode(out), decode(err)

    def stop(self, p, sig=signal.SIGTERM, timeout=10.0):
        """Signals the process and waits for it; kills its group if it does not exit."""
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(p)
                return None
        return p.returncode

    def kill(self, p):
        """SIGKILLs the process group of a process that has not been reaped yet (while
        it is unreaped, its pid cannot have been reused by anyone else)."""
        if p.returncode is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def tempdir(self, prefix):
        d = Path(tempfile.mkdtemp(prefix=prefix))
        self.tempdirs.append(d)
        return d

    def cleanup(self):
        for p in self.started:
            self.kill(p)
        for d in self.tempdirs:
            shutil.rmtree(d, ignore_errors=True)


# --- setup -----------------------------------------------------------------------


def ensure_tools():
    packages = {"wrk": "wrk", "nginx": "nginx", "strip": "binutils", "taskset": "util-linux"}
    missing = sorted({pkg for tool, pkg in packages.items() if shutil.which(tool) is None})
    if missing:
        log(f"installing {' '.join(missing)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y"] + missing, check=True, env=env)
    for tool in ("wrk", "nginx", "taskset", "strip", "cargo"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")


def build(procs):
    log("building release binaries")
    cmd = ["cargo", "build", "--release", "--locked", "--bins", "--manifest-path", ROOT / "Cargo.toml"]
    status, _, _ = procs.run(cmd, timeout=1800, capture=False)
    if status != 0:
        sys.exit(f"bench: cargo build failed ({status})")


def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "wrk": first_line(["wrk", "-v"]),
            "nginx": first_line(["nginx", "-v"]),
            "rustc": first_line(["rustc", "-V"]),
        },
        "commit": first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
    }


def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (r.stdout or r.stderr).strip()
        return text.splitlines()[0] if text else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --- /proc and HTTP helpers ------------------------------------------------------


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def context_switches(pid):
    """Voluntary and involuntary context switches of every thread of `pid`."""
    vol = invol = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return vol, invol


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_busy():
    """Busy and total jiffies of CPU 0 and CPU 1 from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name = line.split()[0]
        if name in (f"cpu{SERVICE_CPU}", f"cpu{LOAD_CPU}"):
            v = [int(x) for x in line.split()[1:8]]
            idle = v[3] + v[4]
            out[name] = (sum(v) - idle, sum(v))
    return out


def busy_percent(before, after):
    res = {}
    for name in before:
        busy = after[name][0] - before[name][0]
        total = after[name][1] - before[name][1]
        res[name] = round(100.0 * busy / total, 1) if total else 0.0
    return res


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock):
    """Reads one HTTP/1.1 response with a Content-Length; returns (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def http_get(port, path, timeout=2.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        return read_response(s)


def http_post(port, path, body):
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body.encode()
        )
        return read_response(s)


def wait_ready(port, proc, what, path=None, timeout=10.0):
    """Waits until the port accepts connections (and `path` answers 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} at start")
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            if http_get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not come up on port {port} within {timeout} s")


def metrics(port):
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


# --- the services ----------------------------------------------------------------


def start_nginx(procs, template, cpu):
    """nginx from a bench/ template in a fresh temp dir; returns (proc, port, dir)."""
    d = procs.tempdir("bench-nginx-")
    port = free_port()
    conf = (BENCH / template).read_text().replace("{{PORT}}", str(port)).replace("{{DIR}}", str(d))
    (d / "nginx.conf").write_text(conf)
    p = procs.start(["nginx", "-p", d, "-c", d / "nginx.conf", "-e", d / "error.log"], cpu=cpu)
    try:
        wait_ready(port, p, f"nginx ({template})")
    except RuntimeError:
        err = (d / "error.log").read_text() if (d / "error.log").exists() else ""
        raise RuntimeError(f"nginx ({template}) did not start: {err.strip()}")
    return p, port, d


def forwarder_cmd(port, endpoint_port, name, flags, nofile=None):
    cmd = [
        FORWARDER, "--http", f"127.0.0.1:{port}",
        "--post-endpoint", f"http://127.0.0.1:{endpoint_port}/ingest",
        "--dead-letter", OUT / f"dead-letter-{name}.ndjson",
    ] + flags
    if nofile:
        cmd = ["sh", "-c", f'ulimit -n {nofile} && exec "$@"', "sh"] + cmd
    return cmd


def start_forwarder(procs, name, endpoint_port, flags=(), nofile=None):
    port = free_port()
    (OUT / f"dead-letter-{name}.ndjson").unlink(missing_ok=True)  # left by an earlier run
    logfile = open(OUT / f"forwarder-{name}.log", "wb")
    try:
        p = procs.start(forwarder_cmd(port, endpoint_port, name, list(flags), nofile),
                        cpu=SERVICE_CPU, stderr=logfile)
    finally:
        logfile.close()
    wait_ready(port, p, "webhook-forwarder", path="/healthz")
    return p, port


def forwarder_log_problems(name):
    """Warn/error lines in a forwarder log (first few) and the final summary line."""
    problems, count, summary = [], 0, ""
    with open(OUT / f"forwarder-{name}.log", "rb") as f:
        for raw in f:
            if b"level=info msg=request " in raw:
                continue
            line = raw.decode(errors="replace").rstrip()
            if "level=warn" in line or "level=error" in line:
                count += 1
                if len(problems) < 5:
                    problems.append(line)
            elif "msg=stopped" in line:
                summary = line
    return {"warn_error_lines": count, "first": problems, "summary": summary}


# --- wrk -------------------------------------------------------------------------


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unknown wrk time {text!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(procs, port, conns, seconds):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
           "-s", BENCH / "post.lua", f"http://127.0.0.1:{port}/log"]
    status, out, err = procs.run(cmd, cpu=LOAD_CPU, timeout=seconds + 30)
    if status != 0:
        raise RuntimeError(f"wrk failed ({status}): {err.strip()}")
    result = {"output": out}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", out, re.M)
    result["requests"] = int(m.group(1))
    result["elapsed_s"] = to_ms(m.group(2)) / 1000.0
    result["rps"] = float(re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M).group(1))
    for pct in ("50", "75", "90", "99"):
        result[f"p{pct}_ms"] = to_ms(re.search(rf"^\s*{pct}%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(map(int, m.groups())) if m else 0
    result["ok"] = result["requests"] - result["non2xx"]
    result["ok_per_s"] = result["ok"] / result["elapsed_s"]
    return result


def measured_wrk(procs, pid, port, conns, warmup=True):
    """Warm-up, then the measured run with the service's CPU time around it."""
    if warmup and WARMUP > 0:
        wrk(procs, port, conns, WARMUP)
    busy0, ticks0 = cpu_busy(), cpu_ticks(pid)
    w = wrk(procs, port, conns, SECONDS)
    ticks1, busy1 = cpu_ticks(pid), cpu_busy()
    w["cpu_ticks"] = ticks1 - ticks0
    w["cpu_us_per_req"] = (ticks1 - ticks0) / CLK_TCK * 1e6 / w["ok"] if w["ok"] else None
    w["cpu_us_per_response"] = (ticks1 - ticks0) / CLK_TCK * 1e6 / w["requests"] if w["requests"] else None
    w["cpu_busy_percent"] = busy_percent(busy0, busy1)
    w["service_cpu_percent"] = round(100.0 * (ticks1 - ticks0) / CLK_TCK / SECONDS, 1)
    w["peak_rss_kib"] = status_kib(pid, "VmHWM")
    return w


# --- delivery accounting ----------------------------------------------------------


def batch_records(length, record_len):
    """Records in a JSON array `[r,r,...]` of `length` bytes, every r `record_len` bytes."""
    k, rest = divmod(length - 2 + 1, record_len + 1)
    return k if rest == 0 and k > 0 else None


def count_delivered(access_log, record_len):
    batches, records, bad, statuses, conns = 0, 0, [], {}, set()
    for line in access_log.read_text().splitlines():
        status, content_length, _request_length, conn, _reqs, method, uri = line.split()
        statuses[status] = statuses.get(status, 0) + 1
        conns.add(conn)
        k = batch_records(int(content_length), record_len) if content_length.isdigit() else None
        if k is None:
            bad.append(line)
            continue
        if status == "200":
            batches += 1
            records += k
    return {"batches": batches, "records": records, "statuses": statuses,
            "connections": len(conns), "unparsed": bad[:5], "unparsed_count": len(bad)}


def calibrate(procs):
    """Captures one real batch with webhook-sink to learn the serialized record size."""
    sink_port = free_port()
    out = OUT / "sink-calibrate.out"
    with open(out, "wb") as f:
        sink = procs.start([SINK, "--listen", f"127.0.0.1:{sink_port}"], cpu=LOAD_CPU, stdout=f)
    wait_ready(sink_port, sink, "webhook-sink")
    fw, port = start_forwarder(procs, "calibrate", sink_port, ["--batch-size", "1"])
    status, _ = http_post(port, "/log", SAMPLE)
    if status != 201:
        raise RuntimeError(f"calibration POST answered {status}")
    rc = procs.stop(fw, timeout=30)
    procs.stop(sink)
    bodies = [line.split(" body=", 1)[1] for line in out.read_text().splitlines() if " body=" in line]
    if rc != 0 or len(bodies) != 1:
        raise RuntimeError(f"calibration failed: forwarder exit {rc}, {len(bodies)} batches seen")
    body = bodies[0]
    record_len = len(body.encode()) - 2
    if body != f"[{RECORD}]":
        log(f"  note: the forwarder's record differs from Python's compact JSON: {body}")
    log(f"  one record as forwarded: {record_len} bytes; a batch of k is k*{record_len + 1}+1 bytes")
    return record_len


# --- the runs --------------------------------------------------------------------


def ceiling_run(procs, conns):
    p, port, _ = start_nginx(procs, "nginx-ceiling.conf", SERVICE_CPU)
    try:
        return measured_wrk(procs, p.pid, port, conns)
    finally:
        procs.stop(p)


REMOTE_DELAY_MS = 20  # the remote endpoint's answer time
REMOTE_BATCHES = (10, 100)


def remote_run(procs, batch):
    """A remote endpoint (webhook-sink answering after 20 ms, on the load CPU): one
    worker can send at most batch / POST time records/s. Measures what it reaches,
    the answers that were not 2xx, and the service's CPU per record."""
    sink_port = free_port()
    with open(OUT / f"sink-remote-{batch}.out", "wb") as f:
        sink = procs.start([SINK, "--listen", f"127.0.0.1:{sink_port}", "--quiet",
                            "--delay", f"{REMOTE_DELAY_MS}ms"], cpu=LOAD_CPU, stdout=f)
    try:
        wait_ready(sink_port, sink, "webhook-sink")
        fw, port = start_forwarder(procs, f"remote-{batch}", sink_port,
                                   ["--batch-size", str(batch), "--batch-interval", "1s"])
        try:
            accepted0 = metrics(port).get("webhook_records_accepted_total", 0)
            t0, ticks0 = time.monotonic(), cpu_ticks(fw.pid)
            w = wrk(procs, port, 64, SECONDS)
            elapsed, ticks = time.monotonic() - t0, cpu_ticks(fw.pid) - ticks0
            m = metrics(port)
        finally:
            procs.stop(fw, timeout=120)
    finally:
        procs.stop(sink)
    accepted = m.get("webhook_records_accepted_total", 0) - accepted0
    posts = m.get("webhook_post_duration_seconds_count", 0)
    post_ms = m["webhook_post_duration_seconds_sum"] / posts * 1000 if posts else None
    return {
        "batch": batch, "records_per_s": accepted / elapsed, "non2xx": w["non2xx"],
        "socket_errors": w["socket_errors"],
        "limit_per_s": batch / (post_ms / 1000) if post_ms else None, "post_mean_ms": post_ms,
        "cpu_percent": 100.0 * ticks / CLK_TCK / elapsed,
        "cpu_us_per_record": ticks / CLK_TCK * 1e6 / accepted if accepted else None,
        "p99_ms": w["p99_ms"],
    }


class NewTasks:
    """Counts the threads (and processes) `pid` creates while it runs, with perf's
    task:task_newtask tracepoint: it fires only on creation, so it costs the measured
    run nothing. None where perf or the tracepoint is unavailable."""

    def __init__(self, pid):
        self.out = OUT / f"newtask-{pid}.txt"
        self.proc = None
        if shutil.which("perf"):
            self.proc = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", "task:task_newtask", "-p", str(pid),
                 "-o", str(self.out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)  # perf attaches before the count starts to matter
            if self.proc.poll() is not None:
                self.proc = None

    def finish(self):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        for line in self.out.read_text().splitlines() if self.out.exists() else []:
            fields = line.split(",")
            if len(fields) > 2 and fields[2] == "task:task_newtask" and fields[0].isdigit():
                return int(fields[0])
        return None


def forwarder_run(procs, name, flags, conns, record_len):
    ep, ep_port, ep_dir = start_nginx(procs, "nginx-endpoint.conf", LOAD_CPU)
    try:
        fw, port = start_forwarder(procs, name, ep_port, flags)
        try:
            # Start-up is over once /healthz answers: every thread from here is new.
            new_tasks = NewTasks(fw.pid)
            if WARMUP > 0:
                wrk(procs, port, conns, WARMUP)
            posts0 = metrics(port).get("webhook_post_attempts_total", 0)
            ctx0 = context_switches(fw.pid)
            w = measured_wrk(procs, fw.pid, port, conns, warmup=False)
            ctx1 = context_switches(fw.pid)
            w["threads_created"] = new_tasks.finish()
            m = metrics(port)
            posts = m.get("webhook_post_attempts_total", 0) - posts0
            w["posts_measured"] = int(posts)
            if posts:
                w["cpu_us_per_batch"] = w["cpu_ticks"] / CLK_TCK * 1e6 / posts
                w["ctx_per_batch"] = [(ctx1[0] - ctx0[0]) / posts, (ctx1[1] - ctx0[1]) / posts]
        finally:
            started = time.monotonic()
            rc = procs.stop(fw, timeout=120)  # SIGTERM: it drains the queue, then exits
            drain = time.monotonic() - started
    finally:
        procs.stop(ep)
    w["exit_status"] = rc
    w["drain_seconds"] = round(drain, 2)
    w["accepted"] = int(m["webhook_records_accepted_total"])
    w["rejected_503"] = int(m.get('webhook_http_requests_total{route="/log",code="503"}', 0))
    w["queue_full"] = int(m.get('webhook_records_rejected_total{reason="queue_full"}', 0))
    posts = m.get("webhook_post_duration_seconds_count", 0)
    w["post_mean_ms"] = m["webhook_post_duration_seconds_sum"] / posts * 1000 if posts else None
    w["queue_wait"] = wait_histogram(m)
    d = count_delivered(ep_dir / "access.log", record_len)
    w["endpoint"] = d
    w["delivered"] = d["records"]
    w["lost"] = w["accepted"] - d["records"]
    w["log"] = forwarder_log_problems(name)
    # Requests still waiting for queue room when /metrics was read are admitted
    # during the drain: the summary line has the final count.
    final = re.search(r"\baccepted=(\d+)", w["log"]["summary"])
    if final:
        w["accepted"] = int(final.group(1))
        w["lost"] = w["accepted"] - d["records"]
    dl = OUT / f"dead-letter-{name}.ndjson"
    w["dead_lettered"] = len(dl.read_text().splitlines()) if dl.exists() else 0
    return w


def worker_ticks(pid):
    """utime + stime of the forwarder's worker thread (it is named "forwarder")."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == "forwarder":
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            return int(fields[11]) + int(fields[12])
    raise RuntimeError(f"no forwarder thread in process {pid}")


def compression_run(procs):
    """Batch 100 without and with --post-compression gzip: bytes on the wire per record
    and the worker thread's CPU per delivered batch, both over the measured wrk run."""
    out = {}
    for name, extra in (("none", []), ("gzip", ["--post-compression", "gzip"])):
        ep, ep_port, _ = start_nginx(procs, "nginx-endpoint.conf", LOAD_CPU)
        try:
            fw, port = start_forwarder(procs, f"compression-{name}", ep_port,
                                       COMPRESSION_FLAGS + extra)
            try:
                if WARMUP > 0:
                    wrk(procs, port, COMPRESSION_CONNECTIONS, WARMUP)
                m0, t0 = metrics(port), worker_ticks(fw.pid)
                w = wrk(procs, port, COMPRESSION_CONNECTIONS, SECONDS)
                t1, m1 = worker_ticks(fw.pid), metrics(port)
            finally:
                rc = procs.stop(fw, timeout=120)
        finally:
            procs.stop(ep)

        def delta(key):
            return m1.get(key, 0) - m0.get(key, 0)

        batches = delta('webhook_batches_total{result="delivered"}')
        records = delta("webhook_records_forwarded_total")
        sent = delta("webhook_batch_body_bytes_total")
        out[name] = {
            "rps": w["rps"], "non2xx": w["non2xx"], "exit_status": rc,
            "batches": int(batches), "records": int(records), "bytes_sent": int(sent),
            "bytes_per_record": sent / records if records else None,
            "worker_cpu_ticks": t1 - t0,
            "worker_cpu_us_per_batch": (t1 - t0) / CLK_TCK * 1e6 / batches if batches else None,
        }
    plain, gz = out["none"]["bytes_per_record"], out["gzip"]["bytes_per_record"]
    out["ratio"] = plain / gz if plain and gz else None
    return out


def wait_histogram(m):
    """Requests that waited for queue room, those that gave up, and the wait's spread
    (p50 and p99 as the upper bound of their histogram bucket)."""
    prefix = 'webhook_queue_wait_seconds_bucket{le="'
    buckets = sorted((float("inf") if k[len(prefix):-2] == "+Inf" else float(k[len(prefix):-2]), v)
                     for k, v in m.items() if k.startswith(prefix))
    count = m.get("webhook_queue_wait_seconds_count", 0)

    def bound(q):
        for le, cumulative in buckets:
            if count and cumulative >= q * count:
                return le * 1000
        return None

    return {
        "waited": int(m.get("webhook_requests_waited_total", 0)),
        "gave_up": int(m.get("webhook_requests_wait_expired_total", 0)),
        "mean_ms": m.get("webhook_queue_wait_seconds_sum", 0) / count * 1000 if count else None,
        "p50_le_ms": bound(0.5),
        "p99_le_ms": bound(0.99),
        "buckets": [[le if le != float("inf") else "+Inf", v] for le, v in buckets],
    }


def idle_run(procs):
    fw, port = start_forwarder(procs, "idle", 9)  # port 9: nothing is ever posted
    try:
        time.sleep(0.2)  # let the /healthz connection's close be handled
        t0 = cpu_ticks(fw.pid)
        time.sleep(SECONDS)
        ticks = cpu_ticks(fw.pid) - t0
        return {"seconds": SECONDS, "cpu_ticks": ticks, "rss_kib": status_kib(fw.pid, "VmRSS")}
    finally:
        procs.stop(fw)


def startup_times(procs):
    """Spawn to first 200 on /healthz, polling with a fresh connection each time."""
    samples, phases = [], []
    request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    with open(OUT / "forwarder-startup.log", "wb") as logfile:
        for _ in range(STARTS):
            port = free_port()
            cmd = [str(c) for c in forwarder_cmd(port, 9, "startup", [])]
            # The child inherits CPU 0 from this script for the instant of the spawn
            # (subprocess uses vfork/exec here; no extra exec as with taskset).
            os.sched_setaffinity(0, {SERVICE_CPU})
            try:
                t0 = time.perf_counter()
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=logfile, start_new_session=True)
            finally:
                os.sched_setaffinity(0, {LOAD_CPU})
            procs.started.append(p)
            spawned = time.perf_counter()
            connected = None
            try:
                deadline = t0 + 5.0
                while True:
                    if time.perf_counter() > deadline or p.poll() is not None:
                        raise RuntimeError("webhook-forwarder did not answer /healthz at start")
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                            connected = connected or time.perf_counter()
                            s.sendall(request)
                            if read_response(s)[0] == 200:
                                break
                    except OSError:
                        pass
                done = time.perf_counter()
                samples.append((done - t0) * 1000.0)
                phases.append({"spawn_ms": round((spawned - t0) * 1000.0, 3),
                               "first_connect_ms": round((connected - t0) * 1000.0, 3)})
            finally:
                procs.stop(p)
    return {"samples_ms": [round(s, 3) for s in samples], "phases": phases,
            "best_ms": min(samples), "median_ms": statistics.median(samples)}


def stripped_size(procs):
    d = procs.tempdir("bench-strip-")
    copy = d / "webhook-forwarder"
    shutil.copy(FORWARDER, copy)
    subprocess.run(["strip", copy], check=True)
    return {"unstripped_bytes": FORWARDER.stat().st_size, "stripped_bytes": copy.stat().st_size}


def idle_connections(procs):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    fw, port = start_forwarder(procs, "connections", 9, nofile=limit)
    socks = []
    try:
        time.sleep(0.2)
        before = status_kib(fw.pid, "VmRSS")
        request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
        for _ in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            socks.append(s)
            s.sendall(request)
            status, _ = read_response(s)
            if status != 200:
                raise RuntimeError(f"/healthz answered {status} on connection {len(socks)}")
        time.sleep(0.5)
        with_conns = status_kib(fw.pid, "VmRSS")
        open_conns = int(metrics(port).get("webhook_open_connections", -1)) - 1  # minus /metrics
        return {"connections": IDLE_CONNECTIONS, "open_reported": open_conns,
                "rss_before_kib": before, "rss_with_kib": with_conns,
                "peak_rss_kib": status_kib(fw.pid, "VmHWM"),
                "bytes_per_connection": (with_conns - before) * 1024 / IDLE_CONNECTIONS}
    finally:
        for s in socks:
            s.close()
        procs.stop(fw)


BURSTS = (1000, 2000)  # clients per burst
BURST_ROUNDS = 3


def slow_bodies(port, clients, sent=512 * 1024):
    """`clients` connections that announce a 1 MiB body, send `sent` bytes of it as
    far as the sockets take them without blocking, and stall."""
    head = (f"POST /log HTTP/1.1\r\nHost: bench\r\nContent-Length: {MIB}\r\n\r\n").encode()
    body = b'{"user_id": 1, "title": "' + b"x" * sent
    socks = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        s.sendall(head)
        s.setblocking(False)
        try:
            at = 0
            while at < len(body):
                at += s.send(body[at:at + 65536])
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


def burst_memory(procs):
    """RSS while 1000 and 2000 clients hold half-sent 1 MiB bodies, and 10 s after
    they close, over three rounds each (issue 14: bounded by the body budget, given
    back after the burst, no ratchet)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    fw, port = start_forwarder(procs, "bursts", 9, nofile=limit)
    out = {"idle_kib": status_kib(fw.pid, "VmRSS"), "bursts": {}}
    try:
        for clients in BURSTS:
            rounds = []
            for _ in range(BURST_ROUNDS):
                socks = slow_bodies(port, clients)
                time.sleep(1.0)
                during = status_kib(fw.pid, "VmRSS")
                for s in socks:
                    s.close()
                time.sleep(10.0)
                rounds.append({"during_kib": during, "after_10s_kib": status_kib(fw.pid, "VmRSS")})
            out["bursts"][str(clients)] = rounds
    finally:
        procs.stop(fw)
    return out


def cpu_ns(pid):
    """CPU time of every thread of `pid` in nanoseconds (/proc/PID/task/*/schedstat):
    ticks are too coarse for a few milliseconds of work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def chunk_extension_flood(procs):
    """Service CPU per wire byte for a body sent as 1-byte chunks with 100-byte
    extensions, against a plain body of the same wire size that is read and decoded
    (issue 14: chunk lines count against one budget per request, so the flood is cut
    short and costs no more per byte than an ordinary body)."""
    # Nothing is posted during the measurement: no batch is due.
    fw, port = start_forwarder(procs, "chunks", 9, ["--batch-size", "1000", "--batch-interval", "1h"])
    results = {}
    try:
        chunk = b"1;" + b"e" * 100 + b"\r\nx\r\n"
        flood = chunk * 8000
        plain_body = b'{"user_id": 1, "title": "' + b"x" * (len(flood) - 30) + b'"}'
        cases = {
            "extensions": b"POST /log HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n" + flood + b"0\r\n\r\n",
            "plain": (f"POST /log HTTP/1.1\r\nHost: b\r\nContent-Length: {len(plain_body)}\r\n\r\n").encode() + plain_body,
        }
        for name, payload in cases.items():
            ns0, sent, statuses = cpu_ns(fw.pid), 0, []
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
                try:
                    s.sendall(payload)
                    sent += len(payload)
                except OSError:
                    pass  # refused part-way: the connection was closed on us
                try:
                    statuses.append(read_response(s)[0])
                except (OSError, RuntimeError, ValueError):
                    statuses.append(None)
                s.close()
            ns = cpu_ns(fw.pid) - ns0
            results[name] = {"wire_bytes": sent, "cpu_ms": ns / 1e6, "statuses": statuses,
                             "ns_per_byte": ns / sent if sent else None}
    finally:
        procs.stop(fw)
    return results


# --- report ----------------------------------------------------------------------


def fmt_int(n):
    return f"{n:,.0f}"


def fmt_mib(kib):
    return f"{kib / 1024:.2f} MiB"


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def all_ok(values):
    values = list(values)
    return None if any(v is None for v in values) else all(values)


def table(results):
    load = results.get("load")
    rows = []  # (figure, c64, c8, target, result); None row: separator

    def per_conn(fn):
        return [fn(load[str(c)]) for c in CONNECTIONS]

    def ratio(a, b):
        return a / b if a is not None and b else None

    def with_ratio(text, r):
        return text if r is None else f"{text} ({r:.2f}x)"

    if load:
        ceil = lambda c: c["ceiling"]  # noqa: E731
        rows.append(("req/s, ceiling (nginx)", *per_conn(lambda c: fmt_int(ceil(c)["rps"])), "", ""))
        for name, label, limit in (("batch100", "batch 100", 0.9), ("batch10", "batch 10", 0.7)):
            cells = per_conn(lambda c: with_ratio(fmt_int(c[name]["rps"]),
                                                  ratio(c[name]["rps"], ceil(c)["rps"])))
            ok = ratio(load["64"][name]["rps"], load["64"]["ceiling"]["rps"]) >= limit
            rows.append((f"req/s, {label}", *cells, f">= {limit} x ceiling (c64)", verdict(ok)))
        rows.append(("2xx/s: ceiling / b100 / b10", *per_conn(
            lambda c: " / ".join(fmt_int(c[n]["ok_per_s"]) for n, _, _ in RUNS)), "", ""))
        rows.append(None)
        rows.append(("p50 / p99, ceiling", *per_conn(
            lambda c: f"{ceil(c)['p50_ms']:.2f} / {ceil(c)['p99_ms']:.2f} ms"), "", ""))
        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            cells = per_conn(lambda c: with_ratio(
                f"{c[name]['p50_ms']:.2f} / {c[name]['p99_ms']:.2f} ms",
                ratio(c[name]["p99_ms"], ceil(c)["p99_ms"])))
            ok = load["64"][name]["p99_ms"] <= 2 * load["64"]["ceiling"]["p99_ms"]
            rows.append((f"p50 / p99, {label}", *cells, "p99 <= 2 x ceiling (c64)", verdict(ok)))
        rows.append(("non-2xx: ceiling / b100 / b10", *per_conn(
            lambda c: " / ".join(fmt_int(c[n]["non2xx"]) for n, _, _ in RUNS)), "", ""))
        rows.append(("socket errors: ceil / b100 / b10", *per_conn(
            lambda c: " / ".join(fmt_int(c[n]["socket_errors"]) for n, _, _ in RUNS)), "", ""))
        rows.append(None)
        rows.append(("CPU per 2xx, ceiling", *per_conn(
            lambda c: f"{ceil(c)['cpu_us_per_req']:.1f} us"), "", ""))
        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            cells = per_conn(lambda c: with_ratio(f"{c[name]['cpu_us_per_req']:.1f} us",
                                                  ratio(c[name]["cpu_us_per_req"],
                                                        ceil(c)["cpu_us_per_req"])))
            ok = all_ok(per_conn(lambda c: c[name]["cpu_us_per_req"]
                                 <= 1.2 * ceil(c)["cpu_us_per_req"]))
            rows.append((f"CPU per 2xx, {label}", *cells, "<= 1.2 x nginx", verdict(ok)))
        # Issue 12's targets: the POST cycle at -c64, against the same run's ceiling.
        c64 = load["64"]
        for name, label, rps_min, cpu_max in (("batch10", "batch 10", 0.7, 1.5),
                                              ("batch100", "batch 100", 0.95, 1.1)):
            rps_ratio = ratio(c64[name]["ok_per_s"], c64["ceiling"]["ok_per_s"])
            cpu_ratio = ratio(c64[name]["cpu_us_per_req"], c64["ceiling"]["cpu_us_per_req"])
            ok = None if rps_ratio is None or cpu_ratio is None else (
                rps_ratio >= rps_min and cpu_ratio <= cpu_max)
            rows.append((f"POST cycle, {label}: 2xx/s; CPU/2xx",
                         "n/a" if ok is None else f"{rps_ratio:.2f}x; {cpu_ratio:.2f}x", "",
                         f">= {rps_min} x; <= {cpu_max} x nginx (c64)", verdict(ok)))
        created = [c64[n].get("threads_created") for n in ("batch100", "batch10")]
        ok = None if None in created else sum(created) == 0
        rows.append(("threads created after start-up, b100 / b10",
                     " / ".join("n/a (perf)" if n is None else str(n) for n in created), "",
                     "0", verdict(ok)))
        rows.append(("peak RSS, ceiling (nginx)", *per_conn(
            lambda c: fmt_mib(ceil(c)["peak_rss_kib"])), "", ""))
        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            ok = all_ok(per_conn(lambda c: c[name]["peak_rss_kib"] <= 4 * 1024))
            rows.append((f"peak RSS (VmHWM), {label}", *per_conn(
                lambda c: fmt_mib(c[name]["peak_rss_kib"])), "<= 4 MiB", verdict(ok)))
        rows.append(None)
        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            ok = all_ok(per_conn(lambda c: c[name]["lost"] == 0 and c[name]["exit_status"] == 0))
            rows.append((f"201 / delivered / lost, {label}", *per_conn(
                lambda c: f"{fmt_int(c[name]['accepted'])} / {fmt_int(c[name]['delivered'])} / "
                          f"{c[name]['lost']}"), "lost 0, exit 0", verdict(ok)))
        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            ok = all_ok(per_conn(lambda c: c[name]["non2xx"] == 0))
            rows.append((f"non-2xx (503s), {label}", *per_conn(
                lambda c: f"{fmt_int(c[name]['non2xx'])} ({fmt_int(c[name]['rejected_503'])})"),
                "0 in every run", verdict(ok)))

        def wait_cell(c):
            q = c["queue_wait"]
            spread = "" if q["mean_ms"] is None else (
                f", mean {q['mean_ms']:.2f} ms, p50 <= {q['p50_le_ms']:g} ms, p99 <= {q['p99_le_ms']:g} ms")
            return f"{fmt_int(q['waited'])} waited, {fmt_int(q['gave_up'])} gave up{spread}"

        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            rows.append((f"queue wait, {label}", *per_conn(lambda c: wait_cell(c[name])), "", ""))

        def batch_cell(c):
            if c.get("cpu_us_per_batch") is None:
                return "n/a"
            vol, invol = c["ctx_per_batch"]
            return (f"{c['cpu_us_per_batch']:.0f} us CPU, {vol:.2f} + {invol:.2f} "
                    f"ctx switches per POST")

        for name, label in (("batch100", "batch 100"), ("batch10", "batch 10")):
            rows.append((f"per POST, {label}", *per_conn(lambda c: batch_cell(c[name])), "", ""))
    rows.append(None)
    for batch, r in results.get("remote", {}).items():
        reached = r["records_per_s"] / r["limit_per_s"] if r["limit_per_s"] else 0
        rows.append((f"remote 20 ms, batch {batch}",
                     f"{fmt_int(r['records_per_s'])}/s of {fmt_int(r['limit_per_s'] or 0)}/s "
                     f"({reached:.2f}), non-2xx {r['non2xx']}, socket errors "
                     f"{r.get('socket_errors', 'n/a')}",
                     f"{r['cpu_percent']:.1f}% CPU, {r['cpu_us_per_record'] or 0:.1f} us/record",
                     ">= 0.9 of the limit, 0 non-2xx, 0 socket errors",
                     verdict(reached >= 0.9 and r["non2xx"] == 0
                             and r.get("socket_errors") == 0)))
    rows.append(None)
    idle = results.get("idle")
    if idle:
        rows.append((f"idle CPU over {idle['seconds']} s", f"{idle['cpu_ticks']} ticks", "",
                     "0 ticks", verdict(idle["cpu_ticks"] == 0)))
        rows.append(("idle RSS (VmRSS)", fmt_mib(idle["rss_kib"]), "", "<= 2 MiB",
                     verdict(idle["rss_kib"] <= 2 * 1024)))
    st = results.get("startup")
    if st:
        rows.append(("exec to first 200 /healthz", f"{st['median_ms']:.2f} ms median",
                     f"best {st['best_ms']:.2f} ms", "<= 10 ms (median)",
                     verdict(st["median_ms"] <= 10)))
    b = results.get("binary")
    if b:
        rows.append(("stripped binary", f"{fmt_int(b['stripped_bytes'])} B",
                     f"{b['stripped_bytes'] / MIB:.2f} MiB", "<= 3 MiB",
                     verdict(b["stripped_bytes"] <= 3 * MIB)))
    comp = results.get("compression")
    if comp:
        plain, gz = comp["none"], comp["gzip"]
        bpr = lambda r: "?" if r["bytes_per_record"] is None else f"{r['bytes_per_record']:.1f}"  # noqa: E731
        cpu = lambda r: "?" if r["worker_cpu_us_per_batch"] is None else f"{r['worker_cpu_us_per_batch']:.0f}"  # noqa: E731
        ratio_text = "?" if comp["ratio"] is None else f"{comp['ratio']:.2f}x"
        rows.append(("wire bytes/record, none / gzip (b100)", "",
                     f"{bpr(plain)} / {bpr(gz)} B ({ratio_text})", "", ""))
        rows.append(("worker CPU/batch, none / gzip (b100)", "",
                     f"{cpu(plain)} / {cpu(gz)} us", "", ""))
    ic = results.get("idle_connections")
    if ic:
        rows.append((f"RSS before / with {fmt_int(ic['connections'])} idle conns",
                     f"{fmt_mib(ic['rss_before_kib'])} / {fmt_mib(ic['rss_with_kib'])}", "", "", ""))
        rows.append(("RSS per idle connection", f"{ic['bytes_per_connection']:,.0f} B", "", "", ""))
    bursts = results.get("bursts", {"bursts": {}})
    for clients, rounds in bursts["bursts"].items():
        during = " / ".join(fmt_mib(r["during_kib"]) for r in rounds)
        after = " / ".join(fmt_mib(r["after_10s_kib"]) for r in rounds)
        ok = all(r["after_10s_kib"] <= bursts["idle_kib"] + 8 * 1024 for r in rounds)
        rows.append((f"RSS, {clients} slow bodies: during / 10 s after",
                     during, after, f"after <= idle ({fmt_mib(bursts['idle_kib'])}) + 8 MiB",
                     verdict(ok)))
    ch = results.get("chunks")
    if ch and ch["plain"]["ns_per_byte"] and ch["extensions"]["ns_per_byte"] is not None:
        ratio = ch["extensions"]["ns_per_byte"] / ch["plain"]["ns_per_byte"]
        rows.append(("CPU per wire byte: chunk extensions / plain",
                     f"{ch['extensions']['ns_per_byte']:.2f} / {ch['plain']['ns_per_byte']:.2f} ns",
                     f"{ratio:.2f}x", "<= 1x plain", verdict(ratio <= 1.0)))

    header = ("figure", "-c64", "-c8", "target", "result")
    widths = [max(len(r[i]) for r in [header] + [r for r in rows if r]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(header), "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("" if r is None else line(r))
    passes = [r[4] for r in rows if r and r[4]]
    return "\n".join(out), passes


# --- main ------------------------------------------------------------------------


def main():
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Ctrl-C, kill and a closed terminal all end in the `finally` below (SIGINT is
    # ignored when started in the background by a non-interactive shell: undo that).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    if os.cpu_count() < 2:
        sys.exit("bench: needs at least 2 CPUs (service on CPU 0, load on CPU 1)")
    ensure_tools()
    OUT.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    try:
        results = measure(procs)
    finally:
        procs.cleanup()

    text, verdicts = table(results)
    results["table"] = text.splitlines()
    results["passed"] = verdicts.count("PASS")
    results["failed"] = verdicts.count("FAIL")
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(text)
    print()
    log(f"{results['passed']} targets passed, {results['failed']} failed; "
        f"all figures in {OUT.relative_to(ROOT)}/results.json, forwarder logs in "
        f"{OUT.relative_to(ROOT)}/forwarder-*.log")


def measure(procs):
    build(procs)
    os.sched_setaffinity(0, {LOAD_CPU})  # this script (client side) stays off CPU 0
    results = {"machine": machine(), "settings": {
        "seconds": SECONDS, "warmup": WARMUP, "nice": NICE, "connections": list(CONNECTIONS),
        "rounds": ROUNDS,
        "wrk": f"wrk -t1 -c<N> -d{SECONDS}s --latency -s bench/post.lua (after a {WARMUP} s warm-up)",
        "layout": {"service_cpu": SERVICE_CPU, "load_cpu": LOAD_CPU}}}
    mach = results["machine"]
    log(f"machine: {mach['cpu_model']}, {mach['cores']} CPUs, Linux {mach['kernel']}, "
        f"load average {' '.join(f'{x:.2f}' for x in mach['loadavg_at_start'])}")
    log(f"CPU layout: service under test (nginx ceiling / webhook-forwarder, all threads) on "
        f"CPU {SERVICE_CPU}; wrk, endpoint nginx and this script on CPU {LOAD_CPU}"
        + (f"; CPUs 2-{mach['cores'] - 1} unused" if mach["cores"] > 2 else ""))
    log(f"runs: {WARMUP} s warm-up + {SECONDS} s measured, wrk -t1, -c{' and -c'.join(map(str, CONNECTIONS))}"
        + (f", {ROUNDS} rounds (medians)" if ROUNDS > 1 else ""))
    unknown = sorted(set(ONLY) - set(SECTIONS))
    if unknown:
        sys.exit(f"bench: unknown BENCH_ONLY section(s) {', '.join(unknown)}; "
                 f"known: {', '.join(SECTIONS)}")
    if "load" in ONLY:
        load_section(procs, results)
    if "remote" in ONLY:
        remote_section(procs, results)
    if "compression" in ONLY:
        compression_section(procs, results)
    # section, its key in results, what is logged as it starts, the run
    for section, key, intro, run in (
        ("idle", "idle", f"idle: {SECONDS} s without traffic", idle_run),
        ("startup", "startup", f"startup: {STARTS} starts", startup_times),
        ("binary", "binary", None, stripped_size),
        ("connections", "idle_connections", f"{IDLE_CONNECTIONS} idle keep-alive connections",
         idle_connections),
        ("bursts", "bursts", f"bursts of {' and '.join(map(str, BURSTS))} half-sent 1 MiB "
         f"bodies, {BURST_ROUNDS} rounds each", burst_memory),
        ("chunks", "chunks", "chunk-extension flood against a plain body", chunk_extension_flood),
    ):
        if section in ONLY:
            if intro:
                log(intro)
            results[key] = run(procs)
    return results


def load_section(procs, results):
    log("calibrating: one record through webhook-sink")
    record_len = calibrate(procs)
    results["record_bytes"] = record_len
    results["load"] = {}
    for conns in CONNECTIONS:
        results["load"][str(conns)] = runs = {}
        rounds = {name: [] for name, _, _ in RUNS}
        for round_no in range(ROUNDS):
            for name, label, flags in RUNS:
                log(f"{label}, -c{conns}" + (f", round {round_no + 1} of {ROUNDS}" if ROUNDS > 1 else ""))
                if flags is None:
                    r = ceiling_run(procs, conns)
                else:
                    r = forwarder_run(procs, f"{name}-c{conns}", flags, conns, record_len)
                rounds[name].append(r)
                load_run_line(r, flags)
        for name, _, _ in RUNS:
            runs[name] = median_run(rounds[name])


# Figures taken as the median over rounds; counts that must hold in every round are summed.
MEDIAN_KEYS = ("rps", "ok_per_s", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_us_per_batch",
               "peak_rss_kib", "post_mean_ms", "service_cpu_percent")
SUMMED_KEYS = ("non2xx", "socket_errors", "lost", "rejected_503", "accepted", "delivered")


def median_run(runs):
    """One run's record standing for all rounds (see MEDIAN_KEYS and SUMMED_KEYS)."""
    if len(runs) == 1:
        return runs[0]
    by_rps = sorted(runs, key=lambda r: r["rps"])
    out = dict(by_rps[len(by_rps) // 2])
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    for key in SUMMED_KEYS:
        if all(key in r for r in runs):
            out[key] = sum(r[key] for r in runs)
    created = [r.get("threads_created") for r in runs]
    out["threads_created"] = None if None in created else sum(created)
    if all("exit_status" in r for r in runs):
        out["exit_status"] = next((r["exit_status"] for r in runs if r["exit_status"] != 0), 0)
    out["rounds"] = [{k: r.get(k) for k in ("rps", "cpu_us_per_req", "p99_ms", "non2xx", "lost")}
                     for r in runs]
    return out


def load_run_line(r, flags):
    """The log line for one load run as it ends."""
    extra = ""
    if flags is not None:
        extra = (f", 201 {r['accepted']} delivered {r['delivered']} in "
                 f"{r['endpoint']['batches']} batches over "
                 f"{r['endpoint']['connections']} endpoint connection(s) "
                 f"(mean POST {r['post_mean_ms'] or 0:.2f} ms), "
                 f"503 {r['rejected_503']}, exit {r['exit_status']} after "
                 f"{r['drain_seconds']} s, warn/error log lines "
                 f"{r['log']['warn_error_lines']}")
    log(f"  {r['rps']:,.0f} req/s, p99 {r['p99_ms']:.2f} ms, non-2xx {r['non2xx']}, "
        f"service {r['service_cpu_percent']}% CPU, CPU busy {r['cpu_busy_percent']}"
        + extra)
    for line in r.get("log", {}).get("first", []):
        log(f"  log: {line}")
    if r.get("endpoint", {}).get("unparsed_count"):
        log(f"  endpoint lines not a whole number of records: {r['endpoint']['unparsed']}")


def remote_section(procs, results):
    results["remote"] = {}
    for batch in REMOTE_BATCHES:
        log(f"remote endpoint ({REMOTE_DELAY_MS} ms), batch {batch}, -c64")
        r = remote_run(procs, batch)
        results["remote"][str(batch)] = r
        log(f"  {r['records_per_s']:,.0f} records/s of a {r['limit_per_s'] or 0:,.0f}/s limit "
            f"(batch / mean POST {r['post_mean_ms'] or 0:.1f} ms), non-2xx {r['non2xx']}, "
            f"service {r['cpu_percent']:.1f}% CPU")


def compression_section(procs, results):
    log(f"compression: batch 100, -c{COMPRESSION_CONNECTIONS}, without and with --post-compression gzip")
    results["compression"] = comp = compression_run(procs)
    for name in ("none", "gzip"):
        r = comp[name]
        log(f"  {name}: {r['rps']:,.0f} req/s, {r['batches']} batches, "
            f"{r['bytes_per_record'] or 0:.1f} bytes/record on the wire, worker "
            f"{r['worker_cpu_us_per_batch'] or 0:.0f} us CPU/batch, exit {r['exit_status']}")
    log(f"  compression ratio on the sample record: {comp['ratio'] or 0:.2f}x")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; everything it started has been stopped")
