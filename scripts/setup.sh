#!/usr/bin/env bash
# Set up closewait on a Debian/Ubuntu host, from nothing, as root:
#   - apt packages: BCC's Python bindings (python3-bpfcc), venv, iproute2
#   - kernel headers for BCC: linux-headers-$(uname -r), or, where no such
#     package exists, the nearest installed version linked in its place
#   - tracefs/debugfs mounted
#   - .venv made from /usr/bin/python3 with system site packages (BCC lives
#     there), with closewait installed in it (editable)
# Usage: scripts/setup.sh [--dev]     --dev adds pytest, ruff, py-spy, a JDK and the test tools
#   (bpftool; prometheus for promtool and the exporter's end-to-end test,
#   installed without starting or enabling its service)
# Safe to run again: every step checks first, and a second run takes seconds.
set -euo pipefail

DEV=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo $0)"
command -v apt-get >/dev/null || die "this script knows apt (Debian/Ubuntu); on Fedora/RHEL install python3-bcc kernel-devel-\$(uname -r) and see README.md"

# --- packages ----------------------------------------------------------------
PKGS=(python3-bpfcc python3-venv python3-pip iproute2 util-linux procps)
if [ "$DEV" -eq 1 ]; then
    # bpftool for the tests' program checks; a JDK (javac, jcmd) and Apache
    # HttpClient 4 for the pool-diagnosis tests' Java client (tests/test_pool.py).
    PKGS+=(bpftool default-jdk-headless libhttpclient-java)
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The tests start their own Prometheus (loopback, temporary config and
# storage); Debian's package would also start one as a service on *:9090.
# policy-rc.d (exit 101: "action forbidden") keeps the package scripts from
# starting it, and the unit is disabled for later boots.
if [ "$DEV" -eq 1 ] && ! command -v promtool >/dev/null; then
    apt_update
    say "installing prometheus (for promtool and the end-to-end test; its service stays off)"
    POLICY=/usr/sbin/policy-rc.d
    SAVED=$POLICY.closewait-saved
    restore_policy() { rm -f "$POLICY"; if [ -e "$SAVED" ]; then mv "$SAVED" "$POLICY"; fi; }
    if [ -e "$POLICY" ]; then cp -p "$POLICY" "$SAVED"; fi
    printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod 755 "$POLICY"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
        || { restore_policy; die "apt-get install prometheus failed"; }
    restore_policy
    systemctl disable prometheus >/dev/null 2>&1 || true
fi

# --- kernel headers ----------------------------------------------------------
REL=$(uname -r)
BUILD=/lib/modules/$REL/build
if [ -d "$BUILD/include" ] || [ -e /sys/kernel/kheaders.tar.xz ]; then
    say "kernel headers: found for $REL"
else
    apt_update
    if apt-cache show "linux-headers-$REL" >/dev/null 2>&1; then
        say "installing linux-headers-$REL"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$REL" >/dev/null
    fi
fi
if ! [ -d "$BUILD/include" ] && ! [ -e /sys/kernel/kheaders.tar.xz ]; then
    ARCH=$(dpkg --print-architecture)
    if ! ls -d /usr/src/linux-headers-*-"$ARCH" >/dev/null 2>&1; then
        say "no headers package for $REL: installing linux-headers-$ARCH (the distro's current)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$ARCH" >/dev/null
    fi
    mapfile -t have < <(ls -d /usr/src/linux-headers-*-"$ARCH" | sed "s|/usr/src/linux-headers-||; s|-$ARCH\$||")
    [ "${#have[@]}" -gt 0 ] || die "no kernel headers could be installed for $REL"
    # The nearest version: the highest one not newer than the running kernel,
    # else the lowest newer one (compared on major.minor.patch).
    pick=$(/usr/bin/python3 - "$REL" "${have[@]}" <<'PY'
import re, sys
def key(v):
    return [int(x) for x in re.findall(r"\d+", v)[:3]]
running, have = key(sys.argv[1]), sys.argv[2:]
older = [v for v in have if key(v) <= running]
print(max(older, key=key) if older else min(have, key=key))
PY
)
    SRC=/usr/src/linux-headers-$pick-$ARCH
    COMMON=/usr/src/linux-headers-$pick-common
    mkdir -p "/lib/modules/$REL"
    ln -sfn "$SRC" "/lib/modules/$REL/build"
    [ -d "$COMMON" ] && ln -sfn "$COMMON" "/lib/modules/$REL/source"
    warn "no headers for kernel $REL; linked $pick headers in their place."
    warn "closewait reads tracepoint arguments only, never kernel structs, so this is safe for it (not for other BCC tools)."
fi

# --- tracefs -------------------------------------------------------------------
if ! [ -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
if ! [ -d /sys/kernel/debug/tracing ]; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi
[ -d /sys/kernel/tracing/events ] || [ -d /sys/kernel/debug/tracing/events ] \
    || die "cannot mount tracefs: is this a container without /sys/kernel access?"

# --- venv ------------------------------------------------------------------------
VENV=$ROOT/.venv
if ! "$VENV/bin/python" -c 'import bcc' >/dev/null 2>&1; then
    say "creating $VENV (from /usr/bin/python3, with system site packages for bcc)"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
EXTRA=""
[ "$DEV" -eq 1 ] && EXTRA="[dev]"
STAMP=$VENV/.closewait-installed
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) $EXTRA"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    say "installing closewait$EXTRA into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT$EXTRA"
    echo "$WANT" > "$STAMP"
fi
"$VENV/bin/closewait" --version >/dev/null || die "closewait did not install"
say "ready: $VENV/bin/closewait (run '$VENV/bin/closewait doctor' to check this host)"
