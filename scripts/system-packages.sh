#!/usr/bin/env bash
# Debian packages the embedded profile can use: Apertium translates English->Spanish
# offline. Installs them where it can (root + apt-get); otherwise says how, and goes on.
set -u
pkgs=(apertium apertium-eng-spa)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1 \
    || echo "warning: could not install ${missing[*]}; the translate stage runs without offline Spanish MT"
else
  echo "note: offline Spanish MT needs: sudo apt-get install ${missing[*]} (the pipeline runs without it)"
fi
exit 0
