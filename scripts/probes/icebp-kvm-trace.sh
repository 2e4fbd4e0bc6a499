#!/bin/sh
# KVM tracepoints around one conformance test, inside a lab L1 (kvm_exit, injected exceptions, emulated instructions).
# kestrel lab run --kernel 7.2 --add scripts/probes/icebp-kvm-trace.sh -- sh icebp-kvm-trace.sh software_icebp
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null || { mount -t debugfs nodev /sys/kernel/debug; T=/sys/kernel/debug/tracing; }
ls $T/events/kvm >/dev/null || { echo "no kvm events"; exit 1; }
grep -o 'nrips\|decodeassists' /proc/cpuinfo | sort -u
cat /sys/module/kvm_amd/parameters/nrips 2>/dev/null | sed 's/^/kvm_amd.nrips=/'
echo > $T/trace
for e in kvm_exit kvm_inj_exception kvm_emulate_insn kvm_entry kvm_nested_vmexit; do echo 1 > $T/events/kvm/$e/enable 2>/dev/null || echo "no event $e"; done
echo 1 > $T/tracing_on
kestrel check -f "$1" -v
echo 0 > $T/tracing_on
echo "----- trace (tail) -----"
grep -v '^#' $T/trace | tail -n ${2:-40}
