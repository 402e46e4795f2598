#!/usr/bin/env bash
# Install what tests/offload/test_kernel_vm.py needs to boot a real kTLS kernel in a VM:
#   apt:  qemu-system-x86 (TCG; KVM does not work on these machines),
#         linux-image-amd64 (Debian 12: 6.1, CONFIG_TLS=m, CONFIG_TLS_DEVICE=y),
#         busybox-static (virtme-ng builds its initramfs with it),
#         kmod (modprobe; the guest runs the host's binaries over 9p)
#   pip:  virtme-ng (vng) into the venv given as $1, else the active python
#         (plus cryptography, which the scenarios use to decrypt raw records).
#
# Usage: bash .ci/install-kernel-vm.sh [VENV_DIR | PYTHON]
#   VENV_DIR is created if it does not exist.  Idempotent: packages that are
#   already there are not fetched again (a second run takes ~1 s).
#   KTLS_VM_SMOKE=1 additionally boots the VM once and runs `uname -r`.
#
# Measured on a fresh 2-core machine of this kind (Debian 12, no network but
# the package registries):
#   whole script from scratch (fresh venv) ............ 61 s
#     apt-get update + install of the four packages ... 54 s
#     pip install virtme-ng + cryptography ............ ~5 s
#   second run (everything present) ................... ~1 s
#   one VM boot to the first guest command (TCG) ...... 15-20 s idle, up to ~37 s
#                                                       with another job on the CPUs
#   pytest tests/offload/test_kernel_vm.py -m kernel (1 boot) . 33 s idle, 52-80 s loaded
#
# Gotchas (see tests/helpers/kernelvm.py): vng needs a stdin that is open (/dev/null is
# fine, closed crashes it), needs no tty; it calls virtme-run via PATH; the
# guest's root fs is the host's, read-only (its /tmp is a throw-away overlay),
# so results come back through a --rwdir directory.
set -euo pipefail

VIRTME_NG_SPEC="${VIRTME_NG_SPEC:-virtme-ng==1.42}"
APT_PKGS=(qemu-system-x86 linux-image-amd64 busybox-static kmod)

log() { printf '[install-kernel-vm] %s\n' "$*" >&2; }

# --- which python -----------------------------------------------------------
if [[ $# -ge 1 && -n "$1" ]]; then
    if [[ -x "$1/bin/python" ]]; then
        PY="$1/bin/python"
    elif [[ -f "$1" && -x "$1" ]]; then
        PY="$1"
    else
        log "creating venv $1"
        python3 -m venv "$1"
        PY="$1/bin/python"
    fi
elif [[ -n "${VIRTUAL_ENV:-}" && -x "${VIRTUAL_ENV}/bin/python" ]]; then
    PY="${VIRTUAL_ENV}/bin/python"
else
    PY="$(command -v python3 || command -v python)"
fi
log "python: $PY"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

# --- apt ---------------------------------------------------------------------
missing=()
for pkg in "${APT_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "apt-get install ${missing[*]}"
    t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "apt done in $((SECONDS - t0)) s"
else
    log "apt packages already installed: ${APT_PKGS[*]}"
fi

# --- a kernel with TLS 1.3 rekey ------------------------------------------------
# Debian 12's 6.1 kernel cannot rekey kTLS (a second setsockopt(TLS_TX) is
# EBUSY); Linux 6.14+ can.  Fetch Debian's current backports kernel (image +
# modules only, unpacked, never installed as a package: nothing on the host
# boots it) so the VM oracle can check KeyUpdate against a real kernel.
# KTLS_VM_NEW_KERNEL=0 skips this; a failure here leaves the 6.1 kernel.
fetch_new_kernel() {
    local work lists apt_opts img ver
    work="$(mktemp -d)"
    lists="$work/lists"
    mkdir -p "$lists/partial"
    # The machine's own Debian mirror (whatever its apt configuration names),
    # not a host written here: the suite is "trixie-backports" on it.
    local mirror
    mirror="$(apt-get indextargets --format '$(REPO_URI) $(ORIGIN) $(RELEASE)' \
              'Created-By: Packages' 2>/dev/null \
              | awk '$2 == "Debian" && $3 !~ /-(security|updates|backports)$/ {print $1; exit}')"
    [[ -n "$mirror" ]] || { log "no Debian mirror in this machine's apt configuration"; return 1; }
    echo "deb ${mirror%/} trixie-backports main" > "$work/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$lists" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq || return 1
    img="$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null \
           | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)"
    [[ -n "$img" ]] || return 1
    ver="${img#linux-image-}"
    if [[ -r "/boot/vmlinuz-$ver" ]] && compgen -G "/lib/modules/$ver/kernel/net/tls/tls.ko*" >/dev/null; then
        log "backports kernel $ver already unpacked"
        return 0
    fi
    (cd "$work" && apt-get "${apt_opts[@]}" download "linux-binary-$ver" "linux-modules-$ver" \
        >/dev/null) || return 1
    mkdir -p "$work/x"
    for deb in "$work"/linux-binary-*.deb "$work"/linux-modules-*.deb; do
        dpkg-deb -x "$deb" "$work/x" || return 1
    done
    [[ -r "$work/x/usr/lib/modules/$ver/vmlinuz" ]] || return 1
    rm -rf "/usr/lib/modules/$ver"
    cp -a "$work/x/usr/lib/modules/$ver" /usr/lib/modules/
    depmod "$ver" 2>/dev/null
    cp "/usr/lib/modules/$ver/vmlinuz" "/boot/vmlinuz-$ver"
    rm -rf "$work"
    log "backports kernel $ver unpacked for the VM"
}
if [[ "${KTLS_VM_NEW_KERNEL:-1}" != "0" && $(id -u) -eq 0 ]]; then
    t0=$SECONDS
    fetch_new_kernel || log "WARNING: no backports kernel; the VM runs 6.1 (no TLS 1.3 rekey)"
    log "kernel fetch took $((SECONDS - t0)) s"
fi

# --- pip ---------------------------------------------------------------------
vng_version="$("$PY" -c 'import importlib.metadata as m; print(m.version("virtme-ng"))' \
    2>/dev/null || true)"
want_version="${VIRTME_NG_SPEC#*==}"
if [[ -z "$vng_version" || ("$want_version" != "$VIRTME_NG_SPEC" && "$vng_version" != "$want_version") ]]; then
    log "pip install $VIRTME_NG_SPEC"
    "$PY" -m pip install -q --disable-pip-version-check "$VIRTME_NG_SPEC"
else
    log "virtme-ng $vng_version already installed"
fi
if ! "$PY" -c 'import cryptography' 2>/dev/null; then
    log "pip install cryptography"
    "$PY" -m pip install -q --disable-pip-version-check cryptography
fi

# --- check -------------------------------------------------------------------
bindir="$(dirname "$PY")"
if [[ ! -x "$bindir/vng" ]] && ! command -v vng >/dev/null; then
    log "ERROR: vng not found next to $PY nor on PATH"
    exit 1
fi
kernel=""
while IFS= read -r img; do
    ver="${img#/boot/vmlinuz-}"
    if compgen -G "/lib/modules/$ver/kernel/net/tls/tls.ko*" >/dev/null; then
        kernel="$img"
        break
    fi
done < <(compgen -G '/boot/vmlinuz-*' | sort -rV)
if [[ -z "$kernel" ]]; then
    log "ERROR: no /boot/vmlinuz-* with a tls.ko module"
    exit 1
fi
log "kernel: $kernel"

if [[ "${KTLS_VM_SMOKE:-0}" != "0" ]]; then
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    t0=$SECONDS
    PATH="$bindir:$PATH" "$PY" "$repo/tests/helpers/kernelvm.py" uname -r </dev/null
    log "smoke boot ok in $((SECONDS - t0)) s"
fi
log "ok"
