#!/bin/sh
# Writes the listings of long_idiv and long_div from Debian trixie's bochs 3.0+dfsg-1 (the lab's trixie root,
# kestrel lab run --host bochs builds it) and sid's 3.1+dfsg-1 (downloaded with the lab's private apt
# configuration, which kestrel lab kernels --fetch sets up). Reads the binaries; never runs them.
set -e
cd "$(dirname "$0")"
R="${XDG_CACHE_HOME:-$HOME/.cache}/kestrel/lab/apt"
O="-o Dir::Etc::SourceList=$R/sources.list -o Dir::Etc::SourceParts=$R/sources.list.d -o Dir::Etc::Preferences=$R/preferences -o Dir::Etc::PreferencesParts=$R/preferences.d -o Dir::State=$R/state -o Dir::State::Lists=$R/state/lists -o Dir::State::status=$R/state/status -o Dir::Cache=$R/cache -o Acquire::Check-Valid-Until=false -o Acquire::Languages=none -o APT::Architecture=amd64 -o APT::Sandbox::User=root -o Debug::NoLocking=true"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get $O download bochs=3.1+dfsg-1)
dpkg-deb -x "$work"/bochs_3.1+dfsg-1_amd64.deb "$work/x31"
B30="${XDG_CACHE_HOME:-$HOME/.cache}/kestrel/lab/roots/trixie/usr/bin/bochs-bin"
B31="$work/x31/usr/bin/bochs-bin"
dis() { # bin symbol out
  set -- "$1" "$2" "$3" $(nm -D -S --defined-only "$1" | awk -v s="$2" '$4==s{print $1, $2}')
  s=$((0x$4)); e=$((0x$4 + 0x$5))
  { echo "# $2 at 0x$4, size 0x$5 (from .dynsym)"
    echo "# objdump -d --no-show-raw-insn -M intel -C --start-address=$(printf 0x%x $s) --stop-address=$(printf 0x%x $e)"
    objdump -d --no-show-raw-insn -M intel -C --start-address=$s --stop-address=$e "$1" | sed -n '/^Disassembly/,$p'; } > "$3"
}
dis $B30 _Z9long_idivP7Bit128sPlS0_l  3.0-long_idiv.txt
dis $B31 _Z9long_idivP7Bit128sPlPKS_l 3.1-long_idiv.txt
dis $B30 _Z8long_divP7Bit128uPmPKS_m  3.0-long_div.txt
dis $B31 _Z8long_divP7Bit128uPmPKS_m  3.1-long_div.txt
