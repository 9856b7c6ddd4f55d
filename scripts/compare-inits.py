#!/usr/bin/env python3
"""Run sharelink and the peer inits through the same scenarios; print a
Markdown table of what each one does.

    cargo build --examples
    sudo scripts/compare-inits.py [--sharelink LABEL=PATH ...]

Peers are Debian's `tini-static`, `dumb-init` and `catatonit`, each in its
default mode (tini with `-s` when it is not PID 1, as its warning asks).
"As PID 1" runs the init under `unshare --pid --fork --mount-proc`; "not
PID 1" runs it as a plain child of this script. Needs root, util-linux,
bash, and target/debug/examples/sigcount (a command that blocks every
signal and counts what it receives).

This is a measuring tool, not a test: it uses short fixed waits (a
signal that has not arrived after 1.5 s counts as not forwarded).
"""

import argparse
import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGCOUNT = os.path.join(ROOT, "target/debug/examples/sigcount")
WAIT = 1.5


class Init:
    def __init__(self, label, prefix, prefix_not_pid1=None, env=None):
        self.label = label
        self.prefix = prefix
        self.prefix_not_pid1 = prefix_not_pid1 or prefix
        self.env = dict(os.environ, **(env or {}))

    def argv(self, pid1, cmd):
        if pid1:
            return ["unshare", "--pid", "--fork", "--mount-proc"] + self.prefix + cmd
        return self.prefix_not_pid1 + cmd


def sharelink(label, path, tmp):
    share = os.path.join(tmp, "share")
    os.makedirs(share, exist_ok=True)
    cfg = os.path.join(tmp, "sharelink.toml")
    with open(cfg, "w") as f:
        f.write(f'app_root = "{tmp}/app"\nshare_root = "{share}"\nrequire_mount = false\n')
    return Init(label, [path, "--config", cfg, "run", "--"], env={"SHARELINK_LOG": "warn"})


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rfind(")") + 2] != "Z"
    except OSError:
        return False


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rfind(")") + 2:].split()


def wait_for(cond, limit=5.0):
    end = time.time() + limit
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


class Run:
    """An init started with `cmd`; `init_pid` is the init itself (the
    child of unshare as PID 1)."""

    def __init__(self, init, pid1, cmd, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        self.pid1 = pid1
        self.proc = subprocess.Popen(init.argv(pid1, cmd), env=init.env, **kw)
        if pid1:
            # -1 when the init is already gone.
            wait_for(lambda: children(self.proc.pid) or self.proc.poll() is not None)
            self.init_pid = (children(self.proc.pid) or [-1])[0]
        else:
            self.init_pid = self.proc.pid

    def kill_all(self, extra=()):
        for p in list(extra) + [self.init_pid, self.proc.pid]:
            if p <= 0:
                continue
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def counts(d):
    try:
        with open(os.path.join(d, "counts")) as f:
            return {int(l.split()[0]) for l in f if l.strip()}
    except OSError:
        return set()


def one_signal(init, pid1, sig):
    """'F' forwarded and the init lives, 'D' dropped, 'X' the init died."""
    with tempfile.TemporaryDirectory() as d:
        r = Run(init, pid1, [SIGCOUNT, d])
        if not wait_for(lambda: os.path.exists(os.path.join(d, "ready"))):
            r.kill_all()
            return "?"
        with open(os.path.join(d, "ready")) as f:
            cmd_pid = int(f.read().strip() or 0)
        os.kill(r.init_pid, sig)
        wait_for(lambda: sig in counts(d) or not alive(r.init_pid), WAIT)
        got = sig in counts(d)
        lives = alive(r.init_pid)
        r.kill_all([] if pid1 else [cmd_pid])
        return "X" if not lives else ("F" if got else "D")


def name(sig):
    if sig >= 32:
        return str(sig)
    try:
        return signal.Signals(sig).name[3:]
    except ValueError:
        return str(sig)


def signals_cell(init, pid1, sigs):
    res = {s: one_signal(init, pid1, s) for s in sigs}
    f = [name(s) for s in sigs if res[s] == "F"]
    dr = [name(s) for s in sigs if res[s] == "D"]
    x = [name(s) for s in sigs if res[s] == "X"]
    if len(f) == len(sigs):
        return "all forwarded"
    parts = []
    if f:
        parts.append("forwarded " + " ".join(f))
    if dr:
        parts.append("dropped " + " ".join(dr))
    if x:
        parts.append("**init dies** on " + " ".join(x))
    return "; ".join(parts)


def nohup(init, pid1):
    # nohup execs the init (or unshare) with SIGHUP ignored.
    with tempfile.TemporaryDirectory() as d:
        pidf = os.path.join(d, "pid")
        argv = ["nohup"] + init.argv(pid1, ["sh", "-c", f"echo $$ > {pidf}.t; mv {pidf}.t {pidf}; exec sleep 100"])
        p = subprocess.Popen(argv, env=init.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(pidf))
        init_pid = children(p.pid)[0] if pid1 else p.pid
        with open(pidf) as f:
            cmd = int(f.read())
        # The command as seen from here: under unshare its pid is the
        # namespace's; find it as the init's child instead.
        cmd = children(init_pid)[0] if children(init_pid) else cmd
        os.kill(init_pid, signal.SIGHUP)
        time.sleep(WAIT)
        ok = alive(cmd)
        for q in [cmd, init_pid, p.pid]:
            try:
                os.kill(q, signal.SIGKILL)
            except OSError:
                pass
        p.wait()
        return "command survives SIGHUP" if ok else "**command killed by SIGHUP**"


def ignored_inherited(init):
    probe = ["grep", "^SigIgn", "/proc/self/status"]

    def run(argv):
        def pre():
            for s in (signal.SIGHUP, signal.SIGPIPE, signal.SIGUSR1):
                signal.signal(s, signal.SIG_IGN)
        out = subprocess.run(argv, env=init.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=pre).stdout
        return int(out.split()[1], 16)

    def plain(argv):
        out = subprocess.run(argv, env=init.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        return int(out.split()[1], 16)

    want = run(probe)
    got = run(init.argv(False, probe))
    leaked = plain(init.argv(False, probe)) & ~plain(probe)
    cell = []
    lost = [name(s) for s in range(1, 65) if want & (1 << (s - 1)) and not got & (1 << (s - 1))]
    cell.append("kept" if not lost else "**reset** " + " ".join(lost))
    if leaked:
        cell.append("leaks its own ignore of " + " ".join(name(s) for s in range(1, 65) if leaked & (1 << (s - 1))))
    return "; ".join(cell)


class Term:
    def __init__(self, argv, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir("/")
            os.execvpe(argv[0], argv, env)
        self.out = b""
        self.seen = 0

    def pump(self, until, limit=3.0):
        """Wait until `until` is printed after what earlier calls matched."""
        end = time.time() + limit
        while True:
            i = self.out.find(until.encode(), self.seen)
            if i >= 0:
                self.seen = i + len(until)
                return True
            if time.time() > end:
                return False
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    self.out += os.read(self.fd, 4096)
                except OSError:
                    return False

    def send(self, s):
        os.write(self.fd, s.encode())

    def close(self):
        sid = self.pid
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    if os.getsid(int(e)) == sid:
                        os.kill(int(e), signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def terminal_pid1_no_session(init):
    t = Term(init.argv(True, ["sh", "-c", 'read l; echo "g""ot:$l"']), init.env)
    t.send("hello\n")
    ok = t.pump("got:hello")
    t.close()
    return "command reads the terminal" if ok else "**command stops on its read (background)**"


def job_control(init, job):
    env = dict(init.env, PS1="P> ", HISTFILE="", TERM="dumb")
    t = Term(["bash", "--norc", "--noprofile", "--noediting", "-i"], env)
    t.pump("P> ")
    t.send(" ".join(init.argv(False, ["sh", job])) + "\n")
    t.pump("started")
    t.send("\x1a")
    if not (t.pump("Stopped") and t.pump("P> ")):
        t.close()
        return "**Ctrl-Z hangs the terminal**"
    cells = ["prompt returns"]
    t.send('echo "a""live"\n')
    if not t.pump("alive", 5):
        cells.append("**the stopped command took the shell's input**")
    t.pump("P> ", 5)
    t.send("fg\n")
    # Time for the init to hand the terminal over.
    time.sleep(0.5)
    t.send("ping\n")
    cells.append("`fg` resumes" if t.pump("got:ping") else "**`fg` does not resume**")
    t.send("\x03")
    t.pump("P> ", 5)
    t.send('echo "st""atus=$?"\n')
    if t.pump("status=130"):
        cells.append("Ctrl-C: 130")
    elif b"got:echo" in t.out:
        cells.append("**after Ctrl-C the command read the shell's next line**")
    else:
        cells.append("**Ctrl-C does not end it**")
    t.close()
    return "; ".join(cells)


def background_read(init, job):
    env = dict(init.env, PS1="P> ", HISTFILE="", TERM="dumb")
    t = Term(["bash", "--norc", "--noprofile", "--noediting", "-i"], env)
    t.pump("P> ")
    t.send(" ".join(init.argv(False, ["sh", job])) + "\n")
    t.pump("started")
    t.send("\x1a")
    if not (t.pump("Stopped") and t.pump("P> ")):
        t.close()
        return "(Ctrl-Z hangs)"
    t.send("bg\n")
    t.pump("P> ")
    time.sleep(0.5)
    for _ in range(5):
        t.send('echo "h""i"\n')
        t.pump("P> ", 1)
    t.send("jobs -l\n")
    t.pump("P> ")
    out = t.out.decode(errors="replace")
    t.close()
    stolen = out.count("got:echo")
    if "Stopped (tty input)" in out:
        return "the job stops (tty input)" + (f", **took {stolen} of 5 lines typed to the shell**" if stolen else "")
    return "the job runs on" + (f", **took {stolen} of 5 lines typed to the shell**" if stolen else "")


def tstp_by_kill(init):
    with tempfile.TemporaryDirectory() as d:
        pidf = os.path.join(d, "pid")
        r = Run(init, False, ["sh", "-c", f"echo $$ > {pidf}.t; mv {pidf}.t {pidf}; exec sleep 100"])
        wait_for(lambda: os.path.exists(pidf))
        time.sleep(0.2)
        with open(pidf) as f:
            cmd = int(f.read())
        os.kill(r.init_pid, signal.SIGTSTP)
        time.sleep(WAIT)
        cs = stat_fields(cmd)[0]
        ins = stat_fields(r.init_pid)[0]
        r.kill_all([cmd])
        what = {("T", "T"): "command and init stop", ("T", "S"): "command stops, init runs"}
        return what.get((cs, ins), "nothing stops" if cs != "T" else f"command {cs}, init {ins}")


def process_group(init):
    out = subprocess.run(
        init.argv(False, ["sh", "-c", "cat /proc/$$/stat /proc/$PPID/stat"]),
        env=init.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.splitlines()
    f = [l[l.rfind(")") + 2:].split() for l in out]
    me = out[0].split()[0]
    pgrp, sid = f[0][2], f[0][3]
    ipgrp, isid = f[1][2], f[1][3]
    if sid == me:
        return "own session (setsid)"
    if pgrp == me:
        return "own process group"
    if pgrp == ipgrp:
        return "init's process group"
    return f"pgrp {pgrp}"


def forward_target(init):
    with tempfile.TemporaryDirectory() as d:
        gc = os.path.join(d, "gc")
        r = Run(init, False, ["sh", "-c", f"sleep 100 & echo $! > {gc}.t; mv {gc}.t {gc}; trap '' USR1; wait; wait"])
        wait_for(lambda: os.path.exists(gc))
        time.sleep(0.2)
        with open(gc) as f:
            g = int(f.read())
        os.kill(r.init_pid, signal.SIGUSR1)
        time.sleep(WAIT)
        hit = not alive(g)
        r.kill_all([g])
        return "whole process group" if hit else "the command only"


def exit_cleanup(init, pid1):
    with tempfile.TemporaryDirectory() as d:
        term, pidf = os.path.join(d, "term"), os.path.join(d, "left")
        left = f'trap "echo t > {term}; exit 0" TERM; echo $$ > {pidf}.t; mv {pidf}.t {pidf}; while :; do sleep 0.05; done'
        cmd = ["sh", "-c", f"sh -c '{left}' & while [ ! -e {pidf} ]; do sleep 0.02; done; exit 3"]
        t0 = time.time()
        r = Run(init, pid1, cmd)
        try:
            code = r.proc.wait(30)
        except subprocess.TimeoutExpired:
            r.kill_all()
            return "hangs"
        el = time.time() - t0
        got_term = wait_for(lambda: os.path.exists(term), 1.0)
        survivor = False
        if not pid1 and os.path.exists(pidf):
            # Its pid is this namespace's: it runs outside any new one.
            with open(pidf) as f:
                lp = int(f.read())
            survivor = alive(lp)
            if survivor:
                os.kill(lp, signal.SIGKILL)
        cell = f"exit {code}; leftover " + ("ran its TERM trap" if got_term else "got no SIGTERM")
        if survivor:
            cell += ", **still running after the init exited**"
        elif not got_term:
            cell += " (killed with the namespace)" if pid1 else ""
        return cell


def cwd(init):
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(init.argv(False, ["sh", "-c", "readlink /proc/$PPID/cwd"]), env=init.env, cwd=d,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        return "moves to /" if out == "/" else "keeps its start directory"


def subreaper_cell(init):
    with tempfile.TemporaryDirectory() as d:
        o = os.path.join(d, "o")
        r = Run(init, False, ["sh", "-c", f"sh -c 'sleep 3 & echo $! > {o}.t; mv {o}.t {o}'; sleep 2"])
        wait_for(lambda: os.path.exists(o))
        with open(o) as f:
            orphan = int(f.read())
        wait_for(lambda: stat_fields(orphan)[1] != "0", 1)
        time.sleep(0.3)
        ppid = int(stat_fields(orphan)[1])
        r.kill_all([orphan])
        return "adopts orphans (subreaper)" if ppid == r.init_pid else f"orphans go to pid {ppid}"


def death_code(init):
    p = subprocess.run(init.argv(False, ["sh", "-c", "kill -USR1 $$"]), env=init.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(p.returncode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sharelink", action="append", default=[], metavar="LABEL=PATH")
    ap.add_argument("--only", help="run only the rows whose title contains this")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    inits = [
        Init("tini", ["tini-static", "--"], ["tini-static", "-s", "--"]),
        Init("dumb-init", ["dumb-init"]),
        Init("catatonit", ["catatonit", "--"]),
    ]
    bins = args.sharelink or [f"sharelink={ROOT}/target/debug/sharelink"]
    for spec in bins:
        label, path = spec.split("=", 1)
        inits.append(sharelink(label, os.path.abspath(path), tmp))
    job = os.path.join(tmp, "job.sh")
    with open(job, "w") as f:
        f.write('echo started\nwhile read l; do echo "got:$l"; done\n')

    fault = [signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGSEGV, signal.SIGSYS]
    libc_rt = [32, 33, 34]
    others = [signal.SIGHUP, signal.SIGUSR1, signal.SIGWINCH, signal.SIGPWR, 16, 35, 64]
    rows = [
        ("fault signals sent with kill (ILL TRAP ABRT BUS FPE SEGV SYS), as PID 1", lambda i: signals_cell(i, True, fault)),
        ("the same, not PID 1", lambda i: signals_cell(i, False, fault)),
        ("real-time signals libc reserves (32 33 34), as PID 1", lambda i: signals_cell(i, True, libc_rt)),
        ("the same, not PID 1", lambda i: signals_cell(i, False, libc_rt)),
        ("other signals (HUP USR1 WINCH PWR STKFLT 35 64), both modes",
         lambda i: (lambda a, b: a if a == b else f"PID 1: {a}; not: {b}")(signals_cell(i, True, others), signals_cell(i, False, others))),
        ("`nohup INIT CMD`, then SIGHUP to the init, as PID 1", lambda i: nohup(i, True)),
        ("the same, not PID 1", lambda i: nohup(i, False)),
        ("signals the init was started with ignored (HUP PIPE USR1)", ignored_inherited),
        ("PID 1 under `unshare -pf` on a terminal: the command reads it", terminal_pid1_no_session),
        ("interactive bash: Ctrl-Z, `fg`, Ctrl-C", lambda i: job_control(i, job)),
        ("then `bg`: the job reads the terminal", lambda i: background_read(i, job)),
        ("SIGTSTP sent with kill (no terminal, not a shell job)", tstp_by_kill),
        ("the command's process group", process_group),
        ("a signal to the init reaches", forward_target),
        ("the command exits, a leftover has a TERM trap, as PID 1", lambda i: exit_cleanup(i, True)),
        ("the same, not PID 1", lambda i: exit_cleanup(i, False)),
        ("the init's working directory", cwd),
        ("not PID 1: orphans", subreaper_cell),
        ("exit code when the command dies of SIGUSR1", death_code),
    ]
    print("| behaviour | " + " | ".join(i.label for i in inits) + " |")
    print("|---|" + "---|" * len(inits))
    for title, f in rows:
        if args.only and args.only not in title:
            continue
        cells = []
        for i in inits:
            try:
                cells.append(f(i))
            except Exception as e:  # a scenario that cannot run says so
                cells.append(f"error: {e}")
        print(f"| {title} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root (unshare)")
    main()
