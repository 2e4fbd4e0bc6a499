# Boot a 6.18 guest with noxsave six times in one L1 and print how each boot ended (the whole tail when it failed).
kestrel initramfs --command 'echo reached-userspace' -o /tmp/i.cpio >/dev/null
base='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off noxsave'
for i in 1 2 3 4 5 6; do
  kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cmdline "$base" > /tmp/o 2>&1
  rc=$?
  echo "@@ boot $i exit $rc"
  if [ $rc != 0 ]; then tail -40 /tmp/o; else grep -E "reached-userspace|^kestrel:" /tmp/o; fi
done
