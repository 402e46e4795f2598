"""Boot a real Linux kernel with kTLS under QEMU (virtme-ng) and run a command in it.

This is a helper module for the kernel-oracle tests, not a test file.

The guest is a virtme-ng VM: it boots the host's Debian kernel
(``linux-image-amd64``, ``CONFIG_TLS=m``) under TCG (KVM does not work on these
machines) and shares the host's file system read-only over 9p, so the host's
Python (``sys.executable``) and the repository run inside it unchanged.

How a run works (``run_in_vm``):

* A work directory on the host is exported to the guest read-write
  (``vng --rwdir``); everything else the guest sees is read-only or a
  throw-away overlay (the guest's ``/tmp`` is an overlay: files written there
  never reach the host).
* A small ``/bin/sh`` script is written into the work directory and is the
  only command handed to vng (the command travels base64-encoded on the
  kernel command line, whose size is limited).  The script runs
  ``modprobe tls`` and then the command, with the command's stdout, stderr
  and exit status redirected into files in the work directory.  Nothing is
  parsed from the serial console: the console (kernel log, vng messages)
  is only kept for diagnostics.
* The host polls for a ``started`` marker (boot timeout) and then for the
  ``rc`` file (command timeout; the guest also wraps the command in
  ``timeout``).  On a time-out the whole vng/qemu process group is killed and
  :class:`VMError` carries the tail of the console log.
* A guest whose kernel panics while booting (seen under TCG on a loaded
  machine, before any of our code ran) is killed as soon as the console
  shows it and booted once more.

Gotchas found while setting this up:

* vng crashes when standard input is *closed* (it calls ``sys.stdin.isatty()``);
  ``/dev/null`` is fine and is what we pass.  No tty is needed (no ``script``).
* vng runs ``virtme-run`` etc. through ``PATH``: the directory holding ``vng``
  must be on ``PATH`` (it is when the venv is not activated only because we
  prepend it here).
* virtme-ng needs a static ``busybox`` to build its initramfs
  (Debian: ``busybox-static``).
* The guest's ``PATH`` is a fixed system one (no pyenv shims, no venv):
  always use absolute interpreter paths such as ``sys.executable``.
* ``--force-9p`` skips several seconds of vng trying qemu's C ``virtiofsd``,
  which fails here.

Environment knobs:

* ``TLSCTL_VM_DISABLE=1``: report the VM as unavailable (tests skip).
* ``TLSCTL_VM_KERNEL=/boot/vmlinuz-X``: pick the kernel image (the oracle
  otherwise boots every image with kTLS, :func:`find_kernels`).
* ``TLSCTL_VM_KVM=1``: do not pass ``--disable-kvm`` (for machines where KVM works).
* ``TLSCTL_VM_KEEP=1``: keep the temporary work directory for inspection
  (it is always kept when the run fails with :class:`VMError`).
* ``TLSCTL_VM_BOOT_TIMEOUT=SECONDS``: the boot's time limit (default 420 s;
  a machine shared with other emulated VMs has needed more).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/kernelvm.py

# Under TCG on a 2-core machine a boot to the first user command takes ~15 s;
# leave plenty of room for a loaded CI machine.
# TCG boots in 15-40 s idle; 200+ s seen with other jobs on both cores, 420+
# with three other VMs booting beside it.
DEFAULT_BOOT_TIMEOUT = float(os.environ.get("TLSCTL_VM_BOOT_TIMEOUT") or 420.0)
# After the command finished: time for the guest to power off.
SHUTDOWN_GRACE = 60.0
DEFAULT_MEMORY = "2G"

_POLL_INTERVAL = 0.25
_CONSOLE_TAIL_LINES = 60
_PANIC = "Kernel panic"
_PANIC_CHECK_INTERVAL = 2.0


class VMError(RuntimeError):
    """The VM did not boot, or did not report the command's result in time."""

    def __init__(self, message: str, console: str = "", guest_started: bool = True) -> None:
        tail = "\n".join(console.splitlines()[-_CONSOLE_TAIL_LINES:])
        full = message if not tail else f"{message}\n--- VM console (last lines) ---\n{tail}"
        super().__init__(full)
        self.console = console
        self.guest_started = guest_started

    @property
    def boot_panic(self) -> bool:
        """The emulated kernel panicked before our script ran.

        Seen under QEMU TCG on a loaded 2-core machine (``Oops: int3`` in
        ``sched_clock_cpu``, then ``Kernel panic - not syncing``): the guest
        never reached user space, so nothing of the test ran and a second
        boot is a fair retry.  A panic after the script started is never
        retried: it may be what the test provoked.
        """
        return not self.guest_started and _PANIC in self.console


class VMUnavailable(VMError):
    """vng, qemu, busybox or a kTLS-capable kernel image is missing."""


class VMResult(subprocess.CompletedProcess[str]):
    """A CompletedProcess for the command run in the guest, plus VM details."""

    def __init__(
        self,
        args: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        *,
        console: str,
        modprobe_rc: int | None,
        modprobe_output: str,
        kernel: str,
        boot_seconds: float | None,
        total_seconds: float,
    ) -> None:
        super().__init__(list(args), returncode, stdout, stderr)
        self.console = console
        self.modprobe_rc = modprobe_rc
        self.modprobe_output = modprobe_output
        self.kernel = kernel
        self.boot_seconds = boot_seconds
        self.total_seconds = total_seconds


# --------------------------------------------------------------------------
# Discovery


def _version_key(version: str) -> list[tuple[int, int | str]]:
    key: list[tuple[int, int | str]] = []
    for part in re.split(r"[.\-+~_]", version):
        key.append((1, int(part)) if part.isdigit() else (0, part))
    return key


def _has_tls_module(version: str) -> bool:
    moddir = Path("/lib/modules") / version
    if not moddir.is_dir():
        return False
    if glob.glob(str(moddir / "kernel" / "net" / "tls" / "tls.ko*")):
        return True
    builtin = moddir / "modules.builtin"
    try:
        if "kernel/net/tls/tls.ko" in builtin.read_text():
            return True
    except OSError:
        pass
    return any(moddir.rglob("tls.ko*"))


def find_kernel() -> str | None:
    """Return a /boot/vmlinuz-* image whose modules directory has tls.ko*, newest first."""
    override = os.environ.get("TLSCTL_VM_KERNEL")
    if override:
        return override if os.access(override, os.R_OK) else None
    images = glob.glob("/boot/vmlinuz-*")
    images.sort(key=lambda p: _version_key(os.path.basename(p)[len("vmlinuz-") :]), reverse=True)
    for image in images:
        version = os.path.basename(image)[len("vmlinuz-") :]
        if os.access(image, os.R_OK) and _has_tls_module(version):
            return image
    return None


def find_kernels() -> list[str]:
    """Every /boot/vmlinuz-* image whose modules directory has tls.ko*,
    newest first (``TLSCTL_VM_KERNEL`` names one instead): the oracle runs
    its scenarios on each (Debian's 6.1 and the backports 7.x here)."""
    override = os.environ.get("TLSCTL_VM_KERNEL")
    if override:
        return [override] if os.access(override, os.R_OK) else []
    images = glob.glob("/boot/vmlinuz-*")
    images.sort(key=lambda p: _version_key(os.path.basename(p)[len("vmlinuz-") :]), reverse=True)
    return [
        image
        for image in images
        if os.access(image, os.R_OK) and _has_tls_module(os.path.basename(image)[len("vmlinuz-") :])
    ]


def kernel_id(image: str) -> str:
    """``/boot/vmlinuz-6.1.0-57-amd64`` -> ``6.1.0-57-amd64``."""
    return os.path.basename(image).removeprefix("vmlinuz-")


def find_vng() -> str | None:
    """vng from PATH, else next to the running interpreter (an unactivated venv)."""
    found = shutil.which("vng")
    if found:
        return found
    candidate = Path(sys.executable).parent / "vng"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def vm_available() -> tuple[bool, str]:
    """(True, description) if a kTLS VM can be booted here, else (False, reason)."""
    if os.environ.get("TLSCTL_VM_DISABLE", "") not in ("", "0"):
        return False, "kernel VM disabled by TLSCTL_VM_DISABLE"
    if not sys.platform.startswith("linux"):
        return False, f"kernel VM needs a Linux host (this is {sys.platform})"
    install = "run .ci/install-kernel-vm.sh"
    vng = find_vng()
    if vng is None:
        return False, f"virtme-ng (vng) is not installed ({install})"
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False, f"qemu-system-x86_64 is not installed ({install})"
    if shutil.which("busybox") is None:
        return False, f"busybox is not installed; virtme-ng needs it for its initramfs ({install})"
    kernel = find_kernel()
    if kernel is None:
        return False, (
            "no kernel image /boot/vmlinuz-* with a tls.ko module "
            f"(apt-get install linux-image-amd64; {install})"
        )
    return True, f"vng={vng} qemu={qemu} kernel={kernel}"


# --------------------------------------------------------------------------
# Running


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _guest_script(
    argv: Sequence[str],
    workdir: Path,
    cwd: Path,
    timeout: float,
    env: Mapping[str, str],
) -> str:
    w = shlex.quote(str(workdir))
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    command = " ".join(shlex.quote(a) for a in argv)
    secs = max(1, int(timeout + 0.999))
    return f"""\
#!/bin/sh
# Generated by tests/helpers/kernelvm.py; runs inside the VM.
W={w}
cat /proc/uptime > "$W/started.tmp" 2>&1; mv "$W/started.tmp" "$W/started"
uname -r > "$W/uname" 2>&1
modprobe tls > "$W/modprobe.out" 2>&1
echo $? > "$W/modprobe.rc"
{exports}
cd {shlex.quote(str(cwd))} || {{
    echo "cannot cd to {cwd}" > "$W/stderr"; echo 125 > "$W/rc"; exit 125
}}
timeout -k 5 {secs} {command} < /dev/null > "$W/stdout" 2> "$W/stderr"
echo $? > "$W/rc.tmp"
sync
mv "$W/rc.tmp" "$W/rc"
sync
"""


def _guest_env(extra: Mapping[str, str] | None, cwd: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    pythonpath = [str(REPO_ROOT)]
    if cwd != REPO_ROOT:
        pythonpath.insert(0, str(cwd))
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    # The guest's root file system is read-only; don't try to write .pyc files.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["LC_ALL"] = "C.UTF-8"
    system_path = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *system_path])
    env["TLSCTL_IN_KERNEL_VM"] = "1"
    if extra:
        env.update(extra)
    return env


BOOT_ATTEMPTS = 2
"""Boots tried when the emulated kernel panics before the command starts."""


def run_in_vm(
    argv: Sequence[str],
    timeout: float,
    *,
    workdir: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    memory: str = DEFAULT_MEMORY,
    cpus: int | None = None,
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    kernel: str | None = None,
) -> VMResult:
    """Boot the kTLS VM once, run ``modprobe tls`` and then ``argv`` in it.

    A guest kernel that panics before the command starts (an emulation
    fault, see :attr:`VMError.boot_panic`) is booted once more, as a fresh
    VM; any other failure is raised at once.

    ``argv[0]`` must be an absolute path or a command on the guest's system
    PATH (use ``sys.executable`` for Python; :func:`python_argv` helps).
    ``timeout`` limits the command (enforced in the guest and on the host);
    the boot has its own ``boot_timeout``.  ``workdir`` is a host directory
    exported read-write to the guest at the same path; put result files
    there (it defaults to a temporary directory that is removed afterwards).
    The command runs with ``cwd`` (default: the repository root), stdin from
    /dev/null, and ``PYTHONPATH`` starting with the repository root.

    Returns the command's exit status, stdout and stderr (a command stopped
    by the guest-side time limit exits with 124, or 137 if it needed
    SIGKILL), plus VM details (``boot_seconds``, ``console``, ``modprobe_rc``,
    ...).  On a VMError the work directory is kept.  Raises
    :class:`VMUnavailable` when the VM can't be booted here, and
    :class:`VMError` when the VM does not boot or report back in time.
    """
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        try:
            return _run_in_vm_once(
                argv,
                timeout,
                workdir=workdir,
                cwd=cwd,
                env=env,
                memory=memory,
                cpus=cpus,
                boot_timeout=boot_timeout,
                kernel=kernel,
            )
        except VMUnavailable:
            raise
        except VMError as exc:
            if attempt == BOOT_ATTEMPTS or not exc.boot_panic:
                raise
            print(
                f"kernelvm: the guest kernel panicked while booting (attempt {attempt}); "
                "booting it again",
                file=sys.stderr,
            )
    raise AssertionError("unreachable")


def _run_in_vm_once(
    argv: Sequence[str],
    timeout: float,
    *,
    workdir: str | os.PathLike[str] | None,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    memory: str,
    cpus: int | None,
    boot_timeout: float,
    kernel: str | None,
) -> VMResult:
    """One boot of :func:`run_in_vm`."""
    ok, reason = vm_available()
    if not ok:
        raise VMUnavailable(reason)
    vng = find_vng()
    image = kernel or find_kernel()
    assert vng is not None and image is not None

    owns_workdir = workdir is None
    wdir = Path(tempfile.mkdtemp(prefix="ktls-vm-")) if workdir is None else Path(workdir)
    wdir = wdir.resolve()
    wdir.mkdir(parents=True, exist_ok=True)
    if re.search(r"[,=\s]", str(wdir)):
        # qemu's -fsdev path and vng's --rwdir=guest=host syntax can't take these.
        raise VMError(f"work directory path must not contain ',', '=' or spaces: {wdir}")
    for name in ("started", "uname", "modprobe.out", "modprobe.rc", "stdout", "stderr", "rc"):
        (wdir / name).unlink(missing_ok=True)
    run_cwd = Path(cwd).resolve() if cwd is not None else REPO_ROOT

    script = wdir / "vm-run.sh"
    script.write_text(_guest_script(argv, wdir, run_cwd, timeout, _guest_env(env, run_cwd)))
    console_path = wdir / "console.log"

    cmd = [vng]
    if os.environ.get("TLSCTL_VM_KVM", "") in ("", "0"):
        cmd.append("--disable-kvm")
    cmd += [
        "--force-9p",
        "--verbose",
        "--run",
        image,
        "--user",
        "root",
        "--memory",
        memory,
        "--rwdir",
        str(wdir),
        "--cwd",
        str(run_cwd),
    ]
    if cpus is not None:
        cmd += ["--cpus", str(cpus)]
    cmd += ["--", f"/bin/sh {script}"]

    host_env = dict(os.environ)
    host_env["PATH"] = os.pathsep.join(
        [str(Path(vng).parent), str(Path(sys.executable).parent), host_env.get("PATH", "")]
    )

    t0 = time.monotonic()
    boot_seconds: float | None = None
    keep = os.environ.get("TLSCTL_VM_KEEP", "") not in ("", "0")
    try:
        with open(console_path, "wb") as console:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,  # closed stdin crashes vng; no tty needed
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=str(run_cwd),
                env=host_env,
                start_new_session=True,
            )
            try:
                deadline = t0 + boot_timeout
                phase = "boot"
                next_panic_check = t0
                while True:
                    if boot_seconds is None and (wdir / "started").exists():
                        boot_seconds = time.monotonic() - t0
                        phase = "command"
                        deadline = time.monotonic() + timeout + 15.0
                    if phase == "command" and (wdir / "rc").exists():
                        phase = "shutdown"
                        deadline = time.monotonic() + SHUTDOWN_GRACE
                    if proc.poll() is not None:
                        break
                    if phase == "boot" and time.monotonic() >= next_panic_check:
                        next_panic_check = time.monotonic() + _PANIC_CHECK_INTERVAL
                        if _PANIC in _read(console_path):
                            # qemu sits on a panicked guest until the boot
                            # timeout: stop now so a retry is cheap.
                            _kill_group(proc)
                            raise VMError(
                                f"the guest kernel panicked while booting (kernel {image}); "
                                f"console log: {console_path}",
                                _read(console_path),
                                guest_started=False,
                            )
                    if time.monotonic() > deadline:
                        _kill_group(proc)
                        if phase == "shutdown":
                            break  # we have the result; the guest just didn't power off
                        what = (
                            f"VM did not boot within {boot_timeout:.0f} s"
                            if phase == "boot"
                            else f"command did not finish within {timeout:.0f} s"
                        )
                        raise VMError(
                            f"{what} (kernel {image}); console log: {console_path}",
                            _read(console_path),
                            guest_started=boot_seconds is not None,
                        )
                    time.sleep(_POLL_INTERVAL)
            finally:
                if proc.poll() is None:
                    _kill_group(proc)
        total = time.monotonic() - t0
        console_text = _read(console_path)
        rc_text = _read(wdir / "rc").strip()
        if not rc_text:
            started = (wdir / "started").exists()
            raise VMError(
                f"VM exited (vng exit status {proc.returncode}) without reporting the "
                f"command's result; guest {'started the script' if started else 'never booted'}"
                f" (kernel {image}); modprobe: {_read(wdir / 'modprobe.out').strip()!r}; "
                f"stderr: {_read(wdir / 'stderr')[-2000:]!r}; console log: {console_path}",
                console_text,
                guest_started=started,
            )
        mp = _read(wdir / "modprobe.rc").strip()
        return VMResult(
            argv,
            int(rc_text),
            _read(wdir / "stdout"),
            _read(wdir / "stderr"),
            console=console_text,
            modprobe_rc=int(mp) if mp.lstrip("-").isdigit() else None,
            modprobe_output=_read(wdir / "modprobe.out"),
            kernel=_read(wdir / "uname").strip() or image,
            boot_seconds=boot_seconds,
            total_seconds=total,
        )
    except VMError:
        keep = True  # leave the console log and guest files for inspection
        raise
    finally:
        if owns_workdir and not keep:
            shutil.rmtree(wdir, ignore_errors=True)


def python_argv(*args: str) -> list[str]:
    """``[sys.executable, *args]``: the host interpreter, which the guest shares."""
    return [sys.executable, *args]


if __name__ == "__main__":
    # Manual smoke test: python tests/helpers/kernelvm.py [CMD ...]
    available, why = vm_available()
    print(why)
    if not available:
        sys.exit(2)
    res = run_in_vm(sys.argv[1:] or ["sh", "-c", "uname -r; cat /proc/net/tls_stat"], 120)
    print(f"rc={res.returncode} boot={res.boot_seconds} total={res.total_seconds:.1f}s")
    print(f"modprobe rc={res.modprobe_rc} {res.modprobe_output.strip()}")
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    sys.exit(res.returncode)
