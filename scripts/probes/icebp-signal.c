/* Which signal ICEBP (0xf1), int3, ud2 and int $1 raise in userspace, and where RIP stands.
 * Real CPUs: ICEBP gives SIGTRAP (#DB, trapno 1) after the instruction. QEMU TCG before 9.1
 * gives SIGILL (#UD, trapno 6) at the instruction. Build: gcc -static -O1 icebp-signal.c -o icebp-signal
 * Run in the lab: kestrel lab run --kernel 7.2 --add icebp-signal -- ./icebp-signal */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <setjmp.h>
static sigjmp_buf jb;
static volatile unsigned long insn_addr;
static void h(int sig, siginfo_t *si, void *uc_) {
  ucontext_t *uc = uc_;
  printf("  signal %d (%s) si_code=%d rip=%#llx trapno=%lld err=%lld insn=%#lx delta=%lld\n",
    sig, strsignal(sig), si->si_code, (unsigned long long)uc->uc_mcontext.gregs[REG_RIP],
    (long long)uc->uc_mcontext.gregs[REG_TRAPNO], (long long)uc->uc_mcontext.gregs[REG_ERR],
    insn_addr, (long long)(uc->uc_mcontext.gregs[REG_RIP]-insn_addr));
  siglongjmp(jb, 1);
}
extern char l_icebp[], l_int3[], l_ud2[], l_int1cd[];
int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  struct sigaction sa; memset(&sa,0,sizeof sa); sa.sa_sigaction=h; sa.sa_flags=SA_SIGINFO|SA_NODEFER;
  sigaction(SIGTRAP,&sa,0); sigaction(SIGILL,&sa,0); sigaction(SIGSEGV,&sa,0);
  printf("icebp (0xf1):\n"); insn_addr=(unsigned long)l_icebp;
  if (!sigsetjmp(jb,1)) { asm volatile("l_icebp: .byte 0xf1; nop"); printf("  no signal\n"); }
  printf("int3 (0xcc):\n"); insn_addr=(unsigned long)l_int3;
  if (!sigsetjmp(jb,1)) { asm volatile("l_int3: int3; nop"); printf("  no signal\n"); }
  printf("ud2:\n"); insn_addr=(unsigned long)l_ud2;
  if (!sigsetjmp(jb,1)) { asm volatile("l_ud2: ud2; nop"); printf("  no signal\n"); }
  printf("int $1 (cd 01):\n"); insn_addr=(unsigned long)l_int1cd;
  if (!sigsetjmp(jb,1)) { asm volatile("l_int1cd: int $1; nop"); printf("  no signal\n"); }
  return 0;
}
