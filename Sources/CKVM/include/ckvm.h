/*
 * Kestrel's own definitions of the KVM userspace ABI (x86-64, Linux 6.18 layout).
 *
 * The distribution's <linux/kvm.h> is older than the features Kestrel targets, so
 * the layouts live here, written from the ABI facts in the Linux tree's
 * include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h.
 * Every struct size is pinned by a unit test (Tests/KVMTests/ABILayoutTests.swift).
 * Variable-length ioctl arguments (kvm_msrs, kvm_cpuid2, kvm_msr_list, kvm_reg_list)
 * are described by their fixed headers only; Swift builds the full buffers.
 */
#ifndef CKVM_H
#define CKVM_H

#include <stddef.h>
#include <stdint.h>

/* ---- general purpose and special registers ---- */

struct ckvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};

struct ckvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type;
    uint8_t present, dpl, db, s, l, g, avl;
    uint8_t unusable;
    uint8_t padding;
};

struct ckvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};

struct ckvm_sregs {
    struct ckvm_segment cs, ds, es, fs, gs, ss;
    struct ckvm_segment tr, ldt;
    struct ckvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};

struct ckvm_fpu {
    uint8_t fpr[8][16];
    uint16_t fcw;
    uint16_t fsw;
    uint8_t ftwx;
    uint8_t pad1;
    uint16_t last_opcode;
    uint64_t last_ip;
    uint64_t last_dp;
    uint8_t xmm[16][16];
    uint32_t mxcsr;
    uint32_t pad2;
};

/* ---- MSRs, CPUID, register lists ---- */

struct ckvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};

/* Header of struct kvm_msrs; `nmsrs` entries of ckvm_msr_entry follow. */
struct ckvm_msrs_header {
    uint32_t nmsrs;
    uint32_t pad;
};

/* Header of struct kvm_msr_list; `nmsrs` uint32 indices follow. */
struct ckvm_msr_list_header {
    uint32_t nmsrs;
};

struct ckvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax, ebx, ecx, edx;
    uint32_t padding[3];
};

/* Header of struct kvm_cpuid2; `nent` ckvm_cpuid_entry2 follow. */
struct ckvm_cpuid2_header {
    uint32_t nent;
    uint32_t padding;
};

/* Header of struct kvm_reg_list; `n` uint64 register ids follow. */
struct ckvm_reg_list_header {
    uint64_t n;
};

struct ckvm_one_reg {
    uint64_t id;
    uint64_t addr;
};

/* ---- vCPU events, MP state, XCRs ---- */

struct ckvm_vcpu_events {
    struct {
        uint8_t injected, nr, has_error_code, pending;
        uint32_t error_code;
    } exception;
    struct {
        uint8_t injected, nr, soft, shadow;
    } interrupt;
    struct {
        uint8_t injected, pending, masked, pad;
    } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct {
        uint8_t smm, pending, smm_inside_nmi, latched_init;
    } smi;
    struct {
        uint8_t pending;
    } triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};

struct ckvm_mp_state {
    uint32_t mp_state;
};

struct ckvm_xcr {
    uint32_t xcr;
    uint32_t reserved;
    uint64_t value;
};

struct ckvm_xcrs {
    uint32_t nr_xcrs;
    uint32_t flags;
    struct ckvm_xcr xcrs[16];
    uint64_t padding[16];
};

/* ---- memory ---- */

struct ckvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

struct ckvm_userspace_memory_region2 {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t guest_memfd_offset;
    uint32_t guest_memfd;
    uint32_t pad1;
    uint64_t pad2[14];
};

struct ckvm_create_guest_memfd {
    uint64_t size;
    uint64_t flags;
    uint64_t reserved[6];
};

/* struct kvm_guest_debug (x86): control flags, then DR0-DR7 for the host's
   hardware breakpoints (KVM_GUESTDBG_USE_HW_BP). */
struct ckvm_guest_debug {
    uint32_t control;
    uint32_t pad;
    uint64_t debugreg[8];
};

/* struct kvm_debug_exit_arch (x86), in kvm_run's exit union for KVM_EXIT_DEBUG. */
struct ckvm_debug_exit {
    uint32_t exception;
    uint32_t pad;
    uint64_t pc;
    uint64_t dr6;
    uint64_t dr7;
};

struct ckvm_pre_fault_memory {
    uint64_t gpa;
    uint64_t size;
    uint64_t flags;
    uint64_t padding[5];
};

/* KVM_ENABLE_CAP's argument (struct kvm_enable_cap): 104 bytes. */
struct ckvm_enable_cap {
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};

/*
 * arm64 (arch/arm64/include/uapi/asm/kvm.h). Defined here so that the
 * numbers and layouts compile and are pinned by tests on any host.
 */

/* KVM_ARM_VCPU_INIT / KVM_ARM_PREFERRED_TARGET: struct kvm_vcpu_init, 32 bytes. */
struct ckvm_vcpu_init {
    uint32_t target;
    uint32_t features[7];
};

/* A 128-bit FP/SIMD register: 16-byte aligned, as __uint128_t is on arm64. */
struct ckvm_arm64_vreg {
    uint64_t low;
    uint64_t high;
} __attribute__((aligned(16)));

/*
 * struct kvm_regs on arm64: user_pt_regs (x0-x30, sp, pc, pstate), sp_el1,
 * elr_el1, spsr[5], then user_fpsimd_state (v0-v31, fpsr, fpcr, 2 reserved
 * words). Only its offsets are used: ONE_REG core register ids are the
 * offset divided by 4 (KVM_REG_ARM_CORE_REG).
 */
struct ckvm_arm64_regs {
    uint64_t regs[31];
    uint64_t sp;
    uint64_t pc;
    uint64_t pstate;
    uint64_t sp_el1;
    uint64_t elr_el1;
    uint64_t spsr[5];
    struct ckvm_arm64_vreg vregs[32];
    uint32_t fpsr;
    uint32_t fpcr;
    uint32_t fp_reserved[2];
};

/*
 * Arm CCA realms, series "arm64: Support for Arm CCA in KVM" v14
 * (2026-05-13, on v7.1-rc1, RMM v2.0-bet1), include/uapi/linux/kvm.h:
 * KVM_ARM_RMI_POPULATE's argument, 32 bytes, in/out.
 */
struct ckvm_arm_rmi_populate {
    uint64_t base;
    uint64_t size;
    uint64_t source_uaddr;
    uint32_t flags;
    uint32_t reserved;
};

/* KVM_GET_DIRTY_LOG's argument (struct kvm_dirty_log): a slot and the user
   address of a bitmap with one bit per page of the slot, in 64-bit words.
   16 bytes. */
struct ckvm_dirty_log {
    uint32_t slot;
    uint32_t padding;
    uint64_t dirty_bitmap;
};

/* KVM_CLEAR_DIRTY_LOG's argument (struct kvm_clear_dirty_log): pages
   [first_page, first_page + num_pages) of a slot, re-protected where the
   bitmap has a bit set. 24 bytes. */
struct ckvm_clear_dirty_log {
    uint32_t slot;
    uint32_t num_pages;
    uint64_t first_page;
    uint64_t dirty_bitmap;
};

/* One entry of a vCPU's dirty ring (struct kvm_dirty_gfn): flags (DIRTY 1,
   RESET 2), then the slot (address space in bits 31:16) and the page's
   offset in it. 16 bytes. */
struct ckvm_dirty_gfn {
    uint32_t flags;
    uint32_t slot;
    uint64_t offset;
};

struct ckvm_memory_attributes {
    uint64_t address;
    uint64_t size;
    uint64_t attributes;
    uint64_t flags;
};

/* KVM_CREATE_DEVICE's argument (struct kvm_create_device): 12 bytes, in/out. */
struct ckvm_create_device {
    uint32_t type;
    uint32_t fd;
    uint32_t flags;
};

struct ckvm_device_attr {
    uint32_t flags;
    uint32_t group;
    uint64_t attr;
    uint64_t addr;
};

/* ---- interrupt controller and timer ---- */

/* struct kvm_irq_level: the argument of KVM_IRQ_LINE. */
struct ckvm_irq_level {
    uint32_t irq;
    uint32_t level;
};

/* struct kvm_irq_routing_entry of type KVM_IRQ_ROUTING_IRQCHIP (1): GSI `gsi`
 * drives pin `pin` of irqchip `irqchip` (PIC master 0, PIC slave 1, IOAPIC 2).
 * The kernel's union is 32 bytes; the irqchip member uses the first 8. */
struct ckvm_irq_routing_entry {
    uint32_t gsi;
    uint32_t type;
    uint32_t flags;
    uint32_t pad;
    uint32_t irqchip;
    uint32_t pin;
    uint32_t union_pad[6];
};

/* struct kvm_irq_routing: the header of KVM_SET_GSI_ROUTING's argument,
 * followed by `nr` entries. */
struct ckvm_irq_routing_header {
    uint32_t nr;
    uint32_t flags;
};

/* struct kvm_pit_config: the argument of KVM_CREATE_PIT2. */
/* struct kvm_irqfd: the argument of KVM_IRQFD. */
struct ckvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;         /* KVM_IRQFD_FLAG_DEASSIGN = 1, _RESAMPLE = 2 */
    uint32_t resamplefd;
    uint8_t pad[16];
};

/* struct kvm_ioeventfd: the argument of KVM_IOEVENTFD. */
struct ckvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;           /* 1, 2, 4 or 8; 0 matches any length */
    int32_t fd;
    uint32_t flags;         /* DATAMATCH = 1, PIO = 2, DEASSIGN = 4 */
    uint8_t pad[36];
};

struct ckvm_pit_config {
    uint32_t flags;         /* KVM_PIT_SPEAKER_DUMMY = 1 */
    uint32_t pad[15];
};

/* ---- VM state for snapshots ---- */

/* struct kvm_irqchip: KVM_GET/SET_IRQCHIP. chip_id 0 and 1 are the PICs
   (struct kvm_pic_state), 2 the IOAPIC (struct kvm_ioapic_state); Kestrel
   keeps the 512-byte union whole. */
struct ckvm_irqchip {
    uint32_t chip_id;
    uint32_t pad;
    uint8_t chip[512];
};

/* struct kvm_pit_channel_state, one of the three in kvm_pit_state2. */
struct ckvm_pit_channel_state {
    uint32_t count;
    uint16_t latched_count;
    uint8_t count_latched;
    uint8_t status_latched;
    uint8_t status;
    uint8_t read_state;
    uint8_t write_state;
    uint8_t write_latch;
    uint8_t rw_mode;
    uint8_t mode;
    uint8_t bcd;
    uint8_t gate;
    int64_t count_load_time;
};

/* struct kvm_pit_state2: KVM_GET/SET_PIT2. */
struct ckvm_pit_state2 {
    struct ckvm_pit_channel_state channels[3];
    uint32_t flags;         /* KVM_PIT_FLAGS_HPET_LEGACY = 1, _SPEAKER_DATA_ON = 2 */
    uint32_t reserved[9];
};

/* struct kvm_clock_data: KVM_GET/SET_CLOCK (kvmclock's nanoseconds). */
struct ckvm_clock_data {
    uint64_t clock;
    uint32_t flags;         /* KVM_CLOCK_TSC_STABLE = 2, _REALTIME = 4, _HOST_TSC = 8 */
    uint32_t pad0;
    uint64_t realtime;
    uint64_t host_tsc;
    uint32_t pad[4];
};

/* ---- SEV / SEV-SNP commands (KVM_MEMORY_ENCRYPT_OP) ---- */

/* struct kvm_sev_cmd: the argument of KVM_MEMORY_ENCRYPT_OP. */
struct ckvm_sev_cmd {
    uint32_t id;
    uint32_t pad0;
    uint64_t data;          /* user address of the command's own structure */
    uint32_t error;         /* firmware status on failure */
    uint32_t sev_fd;        /* an open /dev/sev */
};

/* struct kvm_sev_init: the data of KVM_SEV_INIT2 (22). */
struct ckvm_sev_init {
    uint64_t vmsa_features;
    uint32_t flags;
    uint16_t ghcb_version;
    uint16_t pad1;
    uint32_t pad2[8];
};

/* struct kvm_sev_snp_launch_start: KVM_SEV_SNP_LAUNCH_START (100). */
struct ckvm_sev_snp_launch_start {
    uint64_t policy;
    uint8_t gosvw[16];
    uint16_t flags;
    uint8_t pad0[6];
    uint64_t pad1[4];
};

/* struct kvm_sev_snp_launch_update: KVM_SEV_SNP_LAUNCH_UPDATE (101). */
struct ckvm_sev_snp_launch_update {
    uint64_t gfn_start;
    uint64_t uaddr;
    uint64_t len;
    uint8_t type;
    uint8_t pad0;
    uint16_t flags;
    uint32_t pad1;
    uint64_t pad2[4];
};

/* struct kvm_sev_snp_launch_finish: KVM_SEV_SNP_LAUNCH_FINISH (102). */
struct ckvm_sev_snp_launch_finish {
    uint64_t id_block_uaddr;
    uint64_t id_auth_uaddr;
    uint8_t id_block_en;
    uint8_t auth_key_en;
    uint8_t vcek_disabled;
    uint8_t host_data[32];
    uint8_t pad0[3];
    uint16_t flags;
    uint64_t pad1[4];
};

/* ---- the shared vCPU run structure (struct kvm_run) ---- */

struct ckvm_exit_io {
    uint8_t direction; /* 0 in, 1 out */
    uint8_t size;
    uint16_t port;
    uint32_t count;
    uint64_t data_offset; /* from the start of kvm_run */
};

struct ckvm_exit_mmio {
    uint64_t phys_addr;
    uint8_t data[8];
    uint32_t len;
    uint8_t is_write;
};

struct ckvm_exit_hypercall {
    uint64_t nr;
    uint64_t args[6];
    uint64_t ret;
    uint64_t flags; /* union with u32 longmode */
};

struct ckvm_exit_internal {
    uint32_t suberror;
    uint32_t ndata;
    uint64_t data[16];
};

struct ckvm_exit_system_event {
    uint32_t type;
    uint32_t ndata;
    uint64_t data[16];
};

struct ckvm_exit_memory_fault {
    uint64_t flags;
    uint64_t gpa;
    uint64_t size;
};

struct ckvm_exit_snp_req_certs {
    uint64_t gpa;
    uint64_t npages;
    uint64_t ret;
};

/*
 * KVM_EXIT_VMGEXIT (40) of the SNP certificate series v15 (struct kvm_user_vmgexit).
 * Never merged: exit 40 is KVM_EXIT_TDX upstream. Kept for kernels carrying that
 * series, behind an explicit compatibility switch.
 */
struct ckvm_exit_vmgexit {
    uint32_t type;          /* 1 = REQ_CERTS */
    uint32_t padding0;      /* the union that follows is 8-byte aligned */
    uint64_t data_gpa;
    uint64_t data_npages;
    uint32_t ret;           /* 0, INVALID_LEN 1, BUSY 2, GENERIC 1u << 31 */
    uint8_t flags;          /* NOTIFY_DONE bit 0 */
    uint8_t status;         /* PENDING 0, DONE 1 */
    uint8_t padding1[2];
};

struct ckvm_exit_fail_entry {
    uint64_t hardware_entry_failure_reason;
    uint32_t cpu;
};

struct ckvm_exit_exception {
    uint32_t exception;
    uint32_t error_code;
};

/* KVM_EXIT_ARM_NISV (arm64): a data abort without a valid syndrome. */
struct ckvm_exit_arm_nisv {
    uint64_t esr_iss;
    uint64_t fault_ipa;
};

union ckvm_exit_info {
    uint64_t hardware_exit_reason;
    struct ckvm_exit_fail_entry fail_entry;
    struct ckvm_exit_exception ex;
    struct ckvm_exit_io io;
    struct ckvm_exit_mmio mmio;
    struct ckvm_exit_hypercall hypercall;
    struct ckvm_exit_internal internal;
    struct ckvm_exit_system_event system_event;
    struct ckvm_exit_memory_fault memory_fault;
    struct ckvm_exit_snp_req_certs snp_req_certs;
    struct ckvm_exit_vmgexit vmgexit;
    struct ckvm_exit_arm_nisv arm_nisv;
    uint8_t padding[256];
};

struct ckvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union ckvm_exit_info exit;
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    uint8_t sync_regs[2048];
};

/* Offsets used on the exit hot path, as compile-time constants. */
static inline size_t ckvm_run_exit_offset(void) { return offsetof(struct ckvm_run, exit); }
static inline size_t ckvm_run_vmgexit_offset(void) {
    return offsetof(struct ckvm_run, exit) + offsetof(union ckvm_exit_info, vmgexit);
}
static inline size_t ckvm_run_mmio_data_offset(void) {
    return offsetof(struct ckvm_run, exit) + offsetof(struct ckvm_exit_mmio, data);
}

/* ---- system call shims ---- */

/*
 * ioctl(2) is variadic in glibc, which Swift cannot call. These two forms cover
 * every KVM request: a pointer argument and an integer argument. They return the
 * raw result; on -1 the caller reads errno.
 */
/* A dirty ring entry's flags, read with acquire ordering: the slot and
   offset KVM wrote before it set DIRTY are visible once DIRTY is seen. */
static inline uint32_t ckvm_dirty_gfn_flags(const struct ckvm_dirty_gfn *gfn) {
    return __atomic_load_n(&gfn->flags, __ATOMIC_ACQUIRE);
}

/* Hands a harvested entry back to KVM (flags = RESET, 2) with release
   ordering, after its slot and offset were read. */
static inline void ckvm_dirty_gfn_set_reset(struct ckvm_dirty_gfn *gfn) {
    __atomic_store_n(&gfn->flags, 2u, __ATOMIC_RELEASE);
}

static inline int ckvm_ioctl_pointer(int fd, unsigned long request, void *argument) {
    extern int ioctl(int, unsigned long, ...);
    return ioctl(fd, request, argument);
}

static inline int ckvm_ioctl_value(int fd, unsigned long request, unsigned long argument) {
    extern int ioctl(int, unsigned long, ...);
    return ioctl(fd, request, argument);
}

#endif /* CKVM_H */
