#!/usr/bin/env bash
# The system pieces the tests use, on Debian/Ubuntu (a set-up line of the README and of .ci/run):
#   chromium              tests/test_compare.py opens eval.py's report.html in it (that test fails without it)
#   libtcmalloc-minimal4  preloaded, CPU training is 1.4-2.2x faster than with glibc's malloc
# Installs what is missing with apt-get (as root, else through sudo) and names what it could not install;
# it never fails its caller, so a machine without apt still runs the tests (the browser test then fails
# with its own message).
#   .ci/system-packages.sh                   install, then say what is there
#   .ci/system-packages.sh --tcmalloc-path   print libtcmalloc_minimal.so.4's path (nothing if absent), for
#                                            export LD_PRELOAD="$(.ci/system-packages.sh --tcmalloc-path)"
set -uo pipefail

# The library list is read whole into a variable: a pipe into `grep -q` or an early-exiting awk
# would SIGPIPE ldconfig, and under a caller's `pipefail` that aborts it (exit 141).
tcmalloc_path() {
  local libs
  libs=$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)
  awk '/libtcmalloc_minimal\.so\.4 /{path=$NF} END{print path}' <<<"${libs}"
}

browser() {
  command -v chromium || command -v chromium-browser || true
}

if [ "${1:-}" = "--tcmalloc-path" ]; then
  tcmalloc_path
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--tcmalloc-path]" >&2
  exit 2
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {  # quietly; the package lists are refreshed only when the first try fails
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
    || { as_root apt-get update >/dev/null 2>&1 \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; }
}

if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
  [ -n "$(tcmalloc_path)" ] || apt_install libtcmalloc-minimal4 || true
  [ -n "$(browser)" ] || apt_install chromium || apt_install chromium-browser || true
fi

if [ -n "$(tcmalloc_path)" ]; then
  echo "tcmalloc: $(tcmalloc_path)"
else
  echo "tcmalloc not available (apt-get install libtcmalloc-minimal4); CPU steps will be slower." >&2
fi
if [ -n "$(browser)" ]; then
  echo "browser: $("$(browser)" --version 2>/dev/null || browser)"
else
  echo "chromium not available (apt-get install chromium); the report.html test will fail." >&2
fi
