"""Find and run a real ``tritonserver`` on a model repository.

Where the binary comes from, in this order:

1. ``--tritonserver PATH`` / ``tritonserver=`` (the binary);
2. the ``RCNN_DEPLOY_TRITONSERVER`` environment variable (the binary);
3. the ``serve`` extra's own location ``<sys.prefix>/triton`` (``pip install --no-deps --target
   <sys.prefix>/triton nvidia-pytriton``: the ``nvidia-pytriton`` wheel's bundled Triton 2.51, installed
   without its Python package's dependencies, whose ``numpy<2`` pin would clash with this environment);
4. an installed ``pytriton`` package (found, not imported);
5. ``tritonserver`` on ``PATH``, then ``/opt/tritonserver/bin/tritonserver`` (NGC containers).

The wheel's server (a "bundle") needs three things the NGC containers set up themselves, done here in a
throwaway folder per run: a backend folder with the Python backend and the backend stub built for this
interpreter's version; a Python environment for the stub (a venv without pip whose ``.pth`` adds this
process's PYTHONPATH folders and this environment's site-packages — the stub runs isolated, so PYTHONPATH
itself does not reach it); and
``LD_LIBRARY_PATH`` with the wheel's libraries and this interpreter's ``libpython``. That stub (Triton 2.51,
built with a pybind11 that predates numpy 2) reads every tensor wrong under numpy 2 (strides of 0), so when
this environment has numpy >= 2 the stub's environment puts a ``numpy<2`` first: ``<sys.prefix>/triton/
stub-site`` (``pip install --target <sys.prefix>/triton/stub-site "numpy<2"``) or
``RCNN_DEPLOY_TRITON_STUB_SITE``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Union

from ..errors import UserError

BINARY_ENV = "RCNN_DEPLOY_TRITONSERVER"
STUB_SITE_ENV = "RCNN_DEPLOY_TRITON_STUB_SITE"
PYTRITON_VERSION = "0.7.0"


def triton_home() -> Path:
    """The ``serve`` extra's own location for the server: ``<sys.prefix>/triton``."""
    return Path(sys.prefix) / "triton"


def install_hint() -> str:
    home = triton_home()
    return (
        f'pip install "rcnn-deploy[serve]" && pip install --no-deps --upgrade --target {home} '
        f'nvidia-pytriton=={PYTRITON_VERSION} && pip install --upgrade --target {home}/stub-site "numpy<2" '
        f"(or set {BINARY_ENV} to a tritonserver binary)"
    )


@dataclass
class TritonInstall:
    binary: Path
    bundle: Optional[Path] = None  # the pytriton "tritonserver" folder when the binary is the wheel's

    @property
    def libs(self) -> Optional[Path]:
        return None if self.bundle is None else self.bundle.parent.parent / "nvidia_pytriton.libs"


def _bundle_of(binary: Path) -> Optional[Path]:
    root = binary.resolve().parent.parent
    return root if (root / "python_backend_stubs").is_dir() else None


def find_tritonserver(explicit: Optional[Union[str, Path]] = None) -> TritonInstall:
    """The tritonserver to run (see the module doc for the search order); UserError when there is none."""
    candidates: List[Path] = []
    if explicit:
        p = Path(explicit).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise UserError("not an executable tritonserver", where=p, fix=install_hint())
        return TritonInstall(p, _bundle_of(p))
    env = os.environ.get(BINARY_ENV)
    if env:
        p = Path(env).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise UserError("not an executable tritonserver", where=f"{BINARY_ENV}={env}", fix=install_hint())
        return TritonInstall(p, _bundle_of(p))
    candidates.append(triton_home() / "pytriton" / "tritonserver" / "bin" / "tritonserver")
    import importlib.util

    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidates.append(Path(loc) / "tritonserver" / "bin" / "tritonserver")
    which = shutil.which("tritonserver")
    if which:
        candidates.append(Path(which))
    candidates.append(Path("/opt/tritonserver/bin/tritonserver"))
    for p in candidates:
        if p.is_file() and os.access(p, os.X_OK):
            return TritonInstall(p, _bundle_of(p))
    raise UserError("no tritonserver found", where="rcnn-deploy serve", fix=install_hint())


def tritonserver_available() -> bool:
    try:
        find_tritonserver()
    except UserError:
        return False
    return True


# ------------------------------------------------------------------------------------ the bundle's runtime
def _numpy_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("numpy").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


def stub_site() -> Optional[Path]:
    """A folder holding numpy<2 for the bundle's backend stub, or None when this environment's numpy is < 2.
    UserError when one is needed and missing."""
    if _numpy_major() < 2:
        return None
    env = os.environ.get(STUB_SITE_ENV)
    p = Path(env).expanduser() if env else triton_home() / "stub-site"
    if not (p / "numpy").is_dir():
        raise UserError(
            "this environment has numpy >= 2, which the bundled Triton 2.51 Python backend stub cannot read "
            "tensors with; it needs a numpy<2 of its own",
            where=str(p),
            fix=f'pip install --upgrade --target {triton_home()}/stub-site "numpy<2"'
            + (f" (or set {STUB_SITE_ENV})" if not env else ""),
        )
    for dist in p.glob("numpy-*.dist-info"):
        found = dist.name[len("numpy-") : -len(".dist-info")]
        if found.split(".")[0].isdigit() and int(found.split(".")[0]) >= 2:
            raise UserError(
                f"holds numpy {found}; the stub needs numpy<2",
                where=p,
                fix='pip install --upgrade --target DIR "numpy<2"',
            )
    return p


def python_path_dirs() -> List[str]:
    """The existing folders of this process's ``PYTHONPATH``, absolute, in order, without repeats."""
    out: List[str] = []
    for d in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        d = os.path.abspath(d) if d else ""
        if d and os.path.isdir(d) and d not in out:
            out.append(d)
    return out


def prepare_bundle(install: TritonInstall, workdir: Path) -> Dict[str, Any]:
    """Set up ``workdir`` for running the wheel's server with this interpreter: returns the extra command-line
    arguments and environment."""
    assert install.bundle is not None
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = install.bundle / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(d.name for d in (install.bundle / "python_backend_stubs").iterdir())
        raise UserError(
            f"the bundled Triton has no Python backend stub for Python {version} (it has {', '.join(have)})",
            where=install.bundle,
            fix="serve from a Python the stubs cover",
        )
    backends = workdir / "backends"
    shutil.copytree(install.bundle / "backends", backends, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")

    # A Python environment for the stub: a venv (no pip) whose .pth puts numpy<2 (when needed), then this
    # process's PYTHONPATH folders, then this environment's site-packages (with their own .pth files) on the
    # stub's sys.path: what `rcnn-deploy serve` can import, the served model can import (packages installed with
    # `pip install --target` and found through PYTHONPATH failed inside the server on the GPU machine, run 17).
    import site
    import venv

    env_dir = workdir / "pyenv"
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env_dir)
    lines = []
    numpy_dir = stub_site()
    if numpy_dir is not None:
        lines.append(str(numpy_dir))
    for d in python_path_dirs():
        lines.append(f"import site; site.addsitedir({d!r})")
    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    for d in dirs:
        if os.path.isdir(d):
            lines.append(f"import site; site.addsitedir({d!r})")
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    purelib.mkdir(parents=True, exist_ok=True)
    (purelib / "_rcnn_deploy_triton.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")

    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # the stub finds its Python by PATH
    libs = [str(install.libs)] if install.libs else []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob(f"libpython{version}*.so*")):
        libs.insert(0, libdir)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    args = ["--backend-directory", str(backends), "--cache-directory", str(install.bundle / "caches")]
    return {"args": args, "env": env}


# ------------------------------------------------------------------------------------ the server process
def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A ``tritonserver`` child process on ``repository``. Use as a context manager (stopped on exit, its
    process group killed if it does not stop in time, its work folder removed)::

        with TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as s:
            s.wait_ready()
            ...
    """

    def __init__(
        self,
        repository: Union[str, Path],
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        address: str = "0.0.0.0",
        tritonserver: Optional[Union[str, Path]] = None,
        log: Optional[Union[str, Path, IO[Any]]] = None,
        exit_timeout_s: int = 15,
        log_verbose: int = 0,
        extra_args: Optional[List[str]] = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = int(http_port), int(grpc_port), int(metrics_port)
        self.address = address
        self.install = find_tritonserver(tritonserver)
        self.log = log
        self.exit_timeout_s = int(exit_timeout_s)
        self.log_verbose = int(log_verbose)
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self.workdir: Optional[Path] = None
        self._log_handle: Optional[IO[Any]] = None

    @property
    def local_host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def http_url(self) -> str:
        return f"{self.local_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.local_host}:{self.metrics_port}/metrics"

    def command(self, extra: Optional[List[str]] = None) -> List[str]:
        return [
            str(self.install.binary),
            "--model-repository",
            str(self.repository),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            "--http-address",
            self.address,
            "--grpc-address",
            self.address,
            "--metrics-address",
            self.address,
            "--exit-timeout-secs",
            str(self.exit_timeout_s),
            "--log-verbose",
            str(self.log_verbose),
            *(extra or []),
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="rcnn-deploy-triton-"))
        env, extra = dict(os.environ), []
        try:
            if self.install.bundle is not None:
                prep = prepare_bundle(self.install, self.workdir)
                env, extra = prep["env"], prep["args"]
            out: Any = None
            if isinstance(self.log, (str, Path)):
                self._log_handle = open(self.log, "ab")  # noqa: SIM115 (closed in stop())
                out = self._log_handle
            elif self.log is not None:
                out = self.log
            # its own process group: a terminal's Ctrl-C reaches us, and we forward it (see run_foreground)
            self.proc = subprocess.Popen(
                self.command(extra), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            self._cleanup()
            raise
        return self

    def url_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until /v2/health/ready answers 200; RuntimeError (with the log's tail) if the server exits first
        or ``timeout_s`` passes."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with status {self.proc.returncode}{self._log_tail()}")
            if self.url_ready():
                return
            time.sleep(0.25)
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self, n: int = 40) -> str:
        if isinstance(self.log, (str, Path)) and Path(self.log).is_file():
            lines = Path(self.log).read_text(errors="replace").splitlines()
            return "; log tail:\n" + "\n".join(lines[-n:])
        return ""

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: Optional[float] = None) -> Optional[int]:
        """Send ``sig``, wait (the server's exit timeout plus a margin), then kill its process group (the
        backend stubs are in it). Returns the server's exit status."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout=timeout_s if timeout_s is not None else self.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                code = None
            self._kill_group()
            if code is None:
                code = self.proc.wait()
        self._cleanup()
        return code

    def _kill_group(self) -> None:
        """Whatever is left of the server's process group (a stub that outlived it) is killed."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _cleanup(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_foreground(server: TritonServer, on_ready: Optional[Any] = None, ready_timeout_s: float = 600.0) -> int:
    """Run ``server`` until it exits or this process gets SIGINT/SIGTERM, which is forwarded to it (a second
    one kills it). Returns its exit status (0 after a clean shutdown on a forwarded signal)."""
    received: List[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            server.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)
        else:
            server._kill_group()

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        assert server.proc is not None
        if on_ready is not None:
            deadline = time.monotonic() + ready_timeout_s
            while not received and server.proc.poll() is None and time.monotonic() < deadline:
                if server.url_ready():
                    on_ready(server)
                    break
                time.sleep(0.25)
        while True:
            try:
                code = server.proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
                continue
        return 0 if received and code in (0, -signal.SIGINT, -signal.SIGTERM) else int(code)
    finally:
        server.stop(timeout_s=5)
        for s, h in old.items():
            signal.signal(s, h)
