#!/bin/sh
# Installs Debian's `prometheus` package (promtool and prometheus; no recommends, so no node
# exporter) when promtool is missing and apt-get can install it. Service starts are denied for
# the install (policy-rc.d exit 101) when nothing denies them yet, so no Prometheus daemon is
# left running. Exits 0 whether or not it could install: the caller checks for promtool.
command -v promtool >/dev/null && exit 0
command -v apt-get >/dev/null || exit 0
[ "$(id -u)" = 0 ] || exit 0
export DEBIAN_FRONTEND=noninteractive
policy_rc_d=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy_rc_d=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' >"$policy_rc_d" && chmod +x "$policy_rc_d"
fi
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } || true
[ -z "$policy_rc_d" ] || rm -f "$policy_rc_d"
exit 0
