"""Warm stage runner: `python -m flows.<stage>` runs in a fork of a server process
that has already imported the heavy third-party stack (torch, lightning, prefect...).

Client (stdlib only, ~30 ms to import): `maybe_delegate()`, called first thing in
flows/__init__.py, connects to .prefect/warm.sock (starting the server if nobody
listens), sends argv/cwd/env/sys.path plus its fds 0/1/2 (SCM_RIGHTS, so the stage
writes straight to the real terminal), forwards SIGINT/SIGTERM/SIGHUP and exits
with the stage's status. TRAINFLOW_WARM=0 runs the stage in-process as before.
Either way the stage dies with the process that started it, even by kill -9:
`die_with_parent()` asks the kernel for SIGTERM then (PR_SET_PDEATHSIG); a warm
client then exits at once and the server stops the stage's process group (SIGTERM,
SIGKILL after GRACE). dvc runs the command through `$SHELL -c` (/bin/sh without
SHELL): bash execs it, dash stays as our parent and outlives dvc, so when the parent
is such a shell a thread also watches the shell's parent and sends us that SIGTERM.
Server (`serve()`): preloads third-party modules only, never project code (each
child imports it fresh, so edits are always seen); forks one child per request.
`python -c 'import flows._warm as w; w.stop()'` asks the server to exit when idle.
The server retires once its socket file is gone (e.g. .prefect/ deleted).
Linux only (SCM_RIGHTS, prctl). Anything odd before the fork falls back to cold.
"""
import json
import os
import signal
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds dvc.yaml
RUN = os.path.join(ROOT, ".prefect")
SOCK, LOCK, LOG, PID = (os.path.join(RUN, "warm." + n) for n in ("sock", "lock", "log", "pid"))
CHILD_ENV = "TRAINFLOW_WARM_CHILD"  # set in stage processes: their subprocesses run cold
PRELOAD = (  # order matters: lightning before prefect (see the logging pitfall)
    "torch lightning.pytorch torchmetrics pandas pyarrow pyarrow.parquet sklearn "
    "sklearn.linear_model sklearn.ensemble sklearn.model_selection sklearn.metrics "
    "sklearn.preprocessing sklearn.pipeline pandera.pandas prefect prefect.flows "
    "prefect.tasks prefect.flow_engine prefect.task_engine "
    "tabulate").split()  # tabulate: torch's atexit hook imports it in every child
LIGHT = ("flows.summary",)  # stdlib-only commands: always run in-process
FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE = 1.0  # seconds from SIGTERM to SIGKILL once a client has vanished
PR_SET_PDEATHSIG = 1


def _env_key(env):
    # Read once at interpreter start / native library load: a server started
    # under other values must not serve this client (it retires, a new one starts).
    return sorted((k, v) for k, v in env.items() if k.startswith("PYTHON") or
                  k.endswith("_NUM_THREADS") or k in ("LD_PRELOAD", "LD_LIBRARY_PATH"))


def _python():  # python vs python3 symlinks in one venv are the same interpreter
    return [os.path.realpath(sys.executable), sys.prefix]


def _fingerprint():
    # Cheap venv check: pip (un)installs change site-packages' mtime; editing this
    # file changes the server's own code.
    paths = [sys.executable, __file__] + [p for p in sys.path if p.endswith("-packages")]
    return [(p, os.stat(p).st_mtime_ns) for p in paths if os.path.exists(p)]


# ----------------------------------------------------------------- client side
SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"}
WATCH_S = 0.5  # how often the starter of a shell-wrapped stage is checked


def _starttime(pid):
    """The kernel's start time of `pid` (None once it is gone): a pid alone may be reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except OSError:
        return None


def _parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _watch(pid, sig, gone):
    """A daemon thread: once `pid` is gone, set `gone` and send ourselves `sig`."""
    import threading
    started = _starttime(pid)

    def loop():
        while _starttime(pid) == started:
            time.sleep(WATCH_S)
        gone.append(pid)
        os.kill(os.getpid(), sig)

    threading.Thread(target=loop, name="trainflow-watch-starter", daemon=True).start()


def die_with_parent(sig=signal.SIGTERM, gone=None):
    """Have the kernel send `sig` when this process's parent dies, even by kill -9; when
    that parent is a shell that did not exec us (`sh -c` under dash), watch the shell's
    parent too (`gone` records it). Returns the parent's pid, or None when not set. Not
    under nohup (SIGHUP ignored): such a stage was asked to outlive the shell that started it."""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return None
    if signal.getsignal(sig) is signal.SIG_IGN:
        sig = signal.SIGKILL  # an ignored signal would never stop us
    parent = os.getppid()
    try:
        import ctypes
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):  # no prctl: not Linux
        return None
    if os.getppid() != parent:  # it died before prctl: no signal will come
        os.kill(os.getpid(), sig)
    try:
        with open(f"/proc/{parent}/comm") as f:
            shell = f.read().strip() in SHELLS
    except OSError:
        shell = False
    starter = _parent_of(parent) if shell else None
    if starter and starter > 1:
        _watch(starter, sig, gone if gone is not None else [])
    return parent


def _module_from_argv():
    """'flows.x' for a plain `python -m flows.x ...`, else None."""
    argv = getattr(sys, "orig_argv", [])
    if len(argv) < 3 or argv[1] != "-m" or not argv[2].startswith(__package__ + "."):
        return None  # script, -c, or interpreter options (-u, -X, -W): can't replay them
    # Stages only: the server helpers (flows._server, flows._warm) must not run in a fork, and
    # stdlib-only commands gain nothing from one (and must not start the server for nothing).
    return None if argv[2].startswith(__package__ + "._") or argv[2] in LIGHT else argv[2]


def _connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(SOCK)
        return s
    except OSError:
        s.close()
        raise


def _connect_or_start():
    try:
        return _connect()
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    import fcntl
    import subprocess
    os.makedirs(RUN, exist_ok=True)
    with open(LOCK, "a") as lock:  # O_CLOEXEC: the server must not inherit (and hold) it
        fcntl.flock(lock, fcntl.LOCK_EX)  # one client starts it; others wait, then connect
        try:
            return _connect()
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        # Load this file under another name: `-m flows._warm` would import the
        # project package into the server.
        boot = ("import importlib.util as u,sys;s=u.spec_from_file_location("
                "'_trainflow_warm_server',sys.argv[1]);m=u.module_from_spec(s);"
                "sys.modules[s.name]=m;s.loader.exec_module(m);m.serve()")
        with open(LOG, "ab") as log:  # own session, no inherited pipes: dvc won't wait on it
            proc = subprocess.Popen([sys.executable, "-c", boot, __file__], cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return _connect()
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        raise RuntimeError(f"warm server did not start (see {LOG})")


def _request(sock, module):
    for fd in (0, 1, 2):  # a closed std fd would make send_fds fail
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free fd: this one
    body = json.dumps({"module": module, "argv": ["-m"] + sys.argv[1:], "cwd": os.getcwd(),
                       "env": {**os.environ, "TRAINFLOW_CLIENT_PID": str(os.getpid())}, "path": sys.path, "exe": _python(),
                       "orig_argv": sys.orig_argv, "ignored": _ignored()}).encode()
    socket.send_fds(sock, [len(body).to_bytes(4, "big")], [0, 1, 2])
    sock.sendall(body)


def _ignored():  # e.g. SIGINT in `cmd &` from a script: a cold run would ignore it too
    return [s for s in FORWARD if signal.getsignal(s) is signal.SIG_IGN]


def _send(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def maybe_delegate():
    """Run this `python -m flows.<stage>` in the warm server and exit with its
    status. Returns (stage runs here, cold) on opt-out, nesting, or no server."""
    module = _module_from_argv()
    # As early as a stage can (stdlib only so far), warm or cold. Not in the server's fork: that
    # one dies with the server (its parent), and the server stops it when its client goes.
    gone = []  # the shell-wrapped case: our starter's pid, once it died
    parent = None if module is None or "_trainflow_warm_server" in sys.modules else die_with_parent(gone=gone)
    if (module is None or os.environ.get("TRAINFLOW_WARM", "1") == "0"
            or os.environ.get(CHILD_ENV) or len(SOCK) > 100):  # sun_path limit
        return
    for _attempt in range(2):
        try:
            sock = _connect_or_start()
            _request(sock, module)
        except Exception as e:  # noqa: BLE001 - nothing has run yet: run cold
            print(f"[warm] running cold: {e!r}", file=sys.stderr)
            return
        def forward(n, _frame, sock=sock):  # this attempt's socket, bound now
            if parent is not None and (os.getppid() != parent or gone):  # our starter died:
                signal.signal(n, signal.SIG_DFL)  # Die now: the server sees the socket close and
                os.kill(os.getpid(), n)           # stops the stage's group even if it hangs.
            _send(sock, b"sig %d\n" % n)

        # After the request only: a signal's bytes must not land inside the request.
        old = {s: signal.signal(s, forward) for s in FORWARD if s not in _ignored()}
        status = None
        with sock.makefile("rb") as lines:
            for line in lines:
                kind, _, arg = line.decode().strip().partition(" ")
                if kind == "exit":
                    status = int(arg)
                    break
                if kind == "retry":  # server retired (venv/env changed): start a new one
                    break
                status = "started"
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
        if status is None:
            continue  # no stage was started: safe to try again
        if status == "started":
            print("[warm] lost the warm server during the run", file=sys.stderr)
            status = 1
        if status < 0:  # stage died from a signal: die the same way, as a cold run would
            if -status not in (signal.SIGKILL, signal.SIGSTOP):  # these two have no handler to reset
                signal.signal(-status, signal.SIG_DFL)
            os.kill(os.getpid(), -status)
        raise SystemExit(status)
    print("[warm] running cold: the warm server did not accept the request", file=sys.stderr)


# ----------------------------------------------------------------- server side
def _log(*a):
    print(time.strftime("%H:%M:%S"), f"[{os.getpid()}]", *a, flush=True)


def _recv_request(conn):
    conn.settimeout(10)
    msg, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
    if len(msg) != 4 or len(fds) != 3:
        [os.close(fd) for fd in fds]
        raise ValueError("bad request")
    n, body = int.from_bytes(msg, "big"), b""
    while len(body) < n:
        chunk = conn.recv(n - len(body))
        if not chunk:
            [os.close(fd) for fd in fds]
            raise ValueError("short request")
        body += chunk
    conn.settimeout(None)
    return json.loads(body), fds


def serve():
    import ctypes
    import gc
    import importlib
    import selectors
    idle = float(os.environ.get("TRAINFLOW_WARM_IDLE", "600"))
    # '' (the project root) must not be on sys.path while preloading: a project
    # module could shadow a third-party one and be frozen into every stage.
    sys.path[:] = [p for p in sys.path if p not in ("", ROOT)]
    t0 = time.monotonic()
    for name in os.environ.get("TRAINFLOW_WARM_PRELOAD", " ".join(PRELOAD)).split():
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an optional package may be missing
            _log("preload failed:", name, repr(e))
    stray = [m for m, v in list(sys.modules.items()) if m != __name__ and
             (getattr(v, "__file__", None) or "").startswith(ROOT + os.sep) and
             not v.__file__.startswith(sys.prefix + os.sep)]
    torch = sys.modules.get("torch")
    # No torch op may run here: a started OpenMP pool or CUDA context does not survive fork.
    if stray or (torch and torch.cuda.is_initialized()):
        _log("refusing to serve: project modules or CUDA in the server:", stray)
        return
    gc.collect()
    gc.freeze()  # children's GC won't walk (and copy-on-write) the preloaded objects
    env_key, fprint = _env_key(os.environ), _fingerprint()
    libc = ctypes.CDLL(None, use_errno=True)
    _log(f"preloaded in {time.monotonic() - t0:.1f}s, threads="
         f"{len(os.listdir('/proc/self/task'))}, {len(sys.modules)} modules")

    if os.path.exists(SOCK):
        os.unlink(SOCK)  # stale: the starting client holds the lock and found nobody
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCK)
    listener.listen(16)
    sock_ino = os.stat(SOCK).st_ino
    with open(PID, "w") as f:
        f.write(str(os.getpid()))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # signals wake the selector; no helper threads to fork
    signal.signal(signal.SIGCHLD, lambda *a: None)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append("SIGTERM"))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    jobs, doomed = {}, {}  # pid -> conn (None once the client is gone); pgid -> deadline
    last, listening = time.monotonic(), True

    def retire(why):  # stop accepting; exit when the running stages are done
        nonlocal listening
        if listening:
            _log("retiring:", why)
            sel.unregister(listener)
            listener.close()
            listening = False
            try:
                if os.stat(SOCK).st_ino == sock_ino:  # not a successor's socket
                    os.unlink(SOCK)
            except OSError:
                pass

    def killpg(pgid, sig):
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass

    def sock_gone():  # deleted (.prefect/ removed) or replaced: no client can reach us
        try:
            return os.stat(SOCK).st_ino != sock_ino
        except OSError:
            return True

    try:
        while True:
            for key, _ in sel.select(timeout=0.25):
                if key.data == "wake":
                    os.read(wake_r, 4096)
                elif key.data == "accept" and listening:
                    conn, _ = listener.accept()
                    last = time.monotonic()
                    try:
                        req, fds = _recv_request(conn)
                    except Exception as e:  # noqa: BLE001
                        _log("bad request:", repr(e))
                        conn.close()
                        continue
                    why = ("python" if req["exe"] != _python() else "venv"
                           if _fingerprint() != fprint else "env"
                           if _env_key(req["env"]) != env_key else None)
                    if why:  # stop listening *before* answering, so the retry can't reach us
                        retire(why + " changed")
                        _send(conn, b"retry\n")
                        conn.close()
                        [os.close(fd) for fd in fds]
                        continue
                    sys.stdout.flush()
                    sys.stderr.flush()  # else buffered server output reaches the stage's fds
                    pid = os.fork()
                    if pid == 0:
                        close = [listener, wake_r, wake_w, conn] + [c for c in jobs.values() if c]
                        _child(req, fds, close, libc)  # never returns
                    [os.close(fd) for fd in fds]
                    jobs[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                    _send(conn, b"started %d\n" % pid)
                    _log("run", pid, req["module"], req["cwd"])
                elif isinstance(key.data, int):  # a client: forwarded signals or EOF
                    pid, conn = key.data, key.fileobj
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        data = b""
                    if not data:  # client gone (kill -9): take the stage's group down
                        sel.unregister(conn)
                        conn.close()
                        jobs[pid] = None
                        killpg(pid, signal.SIGTERM)
                        doomed[pid] = time.monotonic() + GRACE
                        _log("client of", pid, "gone: terminating its process group")
                    for line in data.decode(errors="replace").splitlines():
                        if line.startswith("sig ") and int(line[4:]) in FORWARD:
                            killpg(pid, int(line[4:]))  # like a tty: the whole group
            while jobs:  # reap
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                code = os.waitstatus_to_exitcode(status)
                _log("exit", pid, code)
                conn = jobs.pop(pid, None)
                if conn is not None:
                    sel.unregister(conn)
                    _send(conn, b"exit %d\n" % code)
                    conn.close()
            now = time.monotonic()
            for pgid, deadline in list(doomed.items()):  # members may outlive the leader
                if now >= deadline:
                    killpg(pgid, signal.SIGKILL)
                    del doomed[pgid]
            if stop:
                retire(stop.pop())
            if listening and sock_gone():
                retire("socket file removed")
            if jobs or doomed:
                last = now
            elif not listening or now - last > idle:
                break
    finally:
        retire("exiting")
        if os.path.exists(PID) and open(PID).read() == str(os.getpid()):
            os.unlink(PID)


def _child(req, fds, close, libc):
    code = 1
    try:
        os.setsid()  # own session and group: killpg reaches DataLoader workers etc.
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die if the server dies
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for s in FORWARD:  # as a cold python would have them
            signal.signal(s, signal.SIG_IGN if s in req["ignored"] else signal.SIG_DFL
                          if s != signal.SIGINT else signal.default_int_handler)
        for obj in close:  # server sockets and other clients' connections
            os.close(obj) if isinstance(obj, int) else obj.close()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ[CHILD_ENV] = "1"
        sys.path[:] = req["path"]
        sys.argv[:] = req["argv"]
        sys.orig_argv[:] = req["orig_argv"]
        # Keep the objects (logging handlers hold them); fds 1/2 changed under them,
        # so redo what Python decided at startup from isatty().
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdout.reconfigure(line_buffering=os.isatty(1), write_through=unbuffered)
        sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)
        _refresh_third_party()
        import runpy
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001
        sys.excepthook(*sys.exc_info())
    try:  # what interpreter shutdown does: join threads, atexit (Prefect drains logs)
        import atexit
        import threading
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code == -signal.SIGINT:  # cold python re-kills itself with SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


def _refresh_third_party():
    """Redo what preloaded libraries captured from the server's env, cwd and fds."""
    m = sys.modules
    if "prefect.context" in m:  # settings (PREFECT_API_URL, ...) are read at import
        m["prefect.context"].refresh_global_settings_context()
        if "prefect.logging.configuration" in m:  # console handler's colors follow isatty
            m["prefect.logging.configuration"].setup_logging(incremental=False)
    if "tempfile" in m:
        m["tempfile"].tempdir = None  # re-read TMPDIR
    if "numpy" in m:
        m["numpy"].random.seed()  # else every stage draws the same legacy np.random numbers


def start():
    """Start the server now (if none runs) and wait until it serves: `make run` and benchmarks
    use it to pay the one-off preload up front."""
    _connect_or_start().close()


def stop():
    """Ask the server to exit once running stages finish (e.g. after editing PRELOAD)."""
    try:
        pid = int(open(PID).read())
        if b"_trainflow_warm_server" in open(f"/proc/{pid}/cmdline", "rb").read():
            return os.kill(pid, signal.SIGTERM)  # (the pid file outlives a kill -9)
    except (OSError, ValueError):
        pass
    print("no warm server running")
