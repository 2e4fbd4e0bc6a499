/*
 * Does a guest's XSETBV reach KVM? A real-mode guest reads XCR0 (XGETBV),
 * sets it to x87|SSE|AVX (XSETBV), reads it back and asks CPUID(0xD,0) for
 * the XSAVE size of the enabled features. After each step it writes the value
 * to an I/O port; the host answers with KVM's own view, KVM_GET_XCRS.
 *
 * Where KVM intercepts XSETBV, KVM_GET_XCRS follows the guest's XGETBV and
 * CPUID(0xD,0).EBX covers AVX (832 bytes). Where the guest's XSETBV is
 * carried out without KVM (a CPU that does not honour KVM's intercept),
 * KVM_GET_XCRS keeps the old value and EBX stays at 576.
 *
 * The control, `xsetbv-probe host`, first sets XCR0 to the same value from
 * the host (KVM_SET_XCRS): KVM then knows it, and CPUID(0xD,0).EBX must
 * cover AVX, which shows that KVM's size update itself works.
 *
 *   gcc -static -O2 -o xsetbv-probe xsetbv-probe.c
 *   kestrel lab run --kernel 6.1 --add xsetbv-probe:/lab/xsetbv-probe -- '/lab/xsetbv-probe; /lab/xsetbv-probe host'
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(2); }

static uint64_t kvm_xcr0(int vcpu) {
    struct kvm_xcrs xcrs;
    memset(&xcrs, 0, sizeof xcrs);
    if (ioctl(vcpu, KVM_GET_XCRS, &xcrs) < 0) die("KVM_GET_XCRS");
    for (unsigned i = 0; i < xcrs.nr_xcrs; i++)
        if (xcrs.xcrs[i].xcr == 0) return xcrs.xcrs[i].value;
    return ~0ull;
}

int main(int argc, char **argv) {
    int host_sets = argc > 1 && strcmp(argv[1], "host") == 0;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    uint8_t *ram = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED) die("mmap");
    /* 16-bit code at 0x1000 */
    const uint8_t code[] = {
        0x66, 0x31, 0xC9,                         /* xor ecx, ecx */
        0x0F, 0x01, 0xD0,                         /* xgetbv */
        0x66, 0xE7, 0x10,                         /* out 0x10, eax: XCR0 before */
        0x66, 0xB8, 0x07, 0x00, 0x00, 0x00,       /* mov eax, 7 (x87|SSE|AVX) */
        0x66, 0x31, 0xD2,                         /* xor edx, edx */
        0x0F, 0x01, 0xD1,                         /* xsetbv */
        0x0F, 0x01, 0xD0,                         /* xgetbv */
        0x66, 0xE7, 0x11,                         /* out 0x11, eax: XCR0 after */
        0x66, 0xB8, 0x0D, 0x00, 0x00, 0x00,       /* mov eax, 0xd */
        0x66, 0x31, 0xC9,                         /* xor ecx, ecx */
        0x0F, 0xA2,                               /* cpuid */
        0x66, 0x89, 0xD8,                         /* mov eax, ebx */
        0x66, 0xE7, 0x12,                         /* out 0x12, eax: CPUID(0xD,0).EBX */
        0xF4,                                     /* hlt */
    };
    memcpy(ram + 0x1000, code, sizeof code);
    struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = 0x10000, .userspace_addr = (uintptr_t)ram };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");

    /* The guest's CPUID: everything KVM supports (XSAVE and AVX included). */
    int entries = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + entries * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = entries;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    uint32_t xsave_features = 0;
    for (unsigned i = 0; i < cpuid->nent; i++)
        if (cpuid->entries[i].function == 0xD && cpuid->entries[i].index == 0) xsave_features = cpuid->entries[i].eax;
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
    if ((xsave_features & 7) != 7) { printf("SKIP: KVM offers no AVX state (CPUID 0xD.0 EAX %#x)\n", xsave_features); return 0; }

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0; sregs.cs.selector = 0;
    sregs.cr4 |= 1u << 18; /* OSXSAVE */
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS (CR4.OSXSAVE)");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = 0x1000; regs.rflags = 2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    if (host_sets) {
        struct kvm_xcrs xcrs;
        memset(&xcrs, 0, sizeof xcrs);
        xcrs.nr_xcrs = 1;
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = 7;
        if (ioctl(vcpu, KVM_SET_XCRS, &xcrs) < 0) die("KVM_SET_XCRS");
        printf("control: KVM_SET_XCRS set XCR0 to 0x7 from the host\n");
    }
    printf("KVM_GET_XCRS before the guest runs: XCR0 %#llx\n", (unsigned long long)kvm_xcr0(vcpu));
    uint32_t guest_after = 0, size_enabled = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_HLT) break;
        if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) {
            struct kvm_regs at;
            if (ioctl(vcpu, KVM_GET_REGS, &at) < 0) die("KVM_GET_REGS");
            printf("KVM_EXIT_INTERNAL_ERROR, suberror %u, at RIP %#llx", run->internal.suberror, (unsigned long long)at.rip);
            /* The code bytes only where RIP lies inside the 64 KiB of guest RAM mapped here. */
            if (at.rip + 3 <= 0x10000) printf(" (code byte %02x %02x %02x)", ram[at.rip], ram[at.rip + 1], ram[at.rip + 2]);
            printf("\n");
            return 2;
        }
        if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT) {
            printf("unexpected exit %u\n", run->exit_reason);
            return 2;
        }
        uint32_t value;
        memcpy(&value, (uint8_t *)run + run->io.data_offset, 4);
        switch (run->io.port) {
        case 0x10: printf("guest XGETBV before XSETBV: %#x; KVM_GET_XCRS: %#llx\n", value, (unsigned long long)kvm_xcr0(vcpu)); break;
        case 0x11: guest_after = value; printf("guest XGETBV after XSETBV(7): %#x; KVM_GET_XCRS: %#llx\n", value, (unsigned long long)kvm_xcr0(vcpu)); break;
        case 0x12: size_enabled = value; printf("guest CPUID(0xD,0).EBX: %u bytes (x87|SSE: 576, with AVX: 832)\n", value); break;
        }
    }
    uint64_t kvm_after = kvm_xcr0(vcpu);
    if (guest_after == 7 && kvm_after == 7 && size_enabled >= 832) {
        printf(host_sets ? "PASS (control): with XCR0 known to KVM, CPUID(0xD,0).EBX covers AVX\n" : "PASS: KVM saw the guest's XSETBV\n");
        return 0;
    }
    printf("FAIL: the guest's XCR0 is %#x but KVM's is %#llx, and CPUID(0xD,0).EBX is %u\n", guest_after, (unsigned long long)kvm_after, size_enabled);
    return 1;
}
