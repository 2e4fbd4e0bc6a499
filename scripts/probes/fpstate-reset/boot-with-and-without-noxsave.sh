kestrel initramfs --command 'echo reached-userspace' -o /tmp/i.cpio >/dev/null
base='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off'
for extra in "" "noxsave"; do
  echo "@@ guest $(basename $(readlink -f /lab/guest/vmlinux)) cmdline: $base $extra"
  kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cmdline "$base $extra" > /tmp/o 2>&1
  echo "exit $?"
  grep -E "XSAVE|x86/fpu|fpstate|x86_task_fpu|NULL pointer|RIP:|Kernel panic|reached-userspace|Call Trace| fpu__init|^kestrel:" /tmp/o | head -24
done
