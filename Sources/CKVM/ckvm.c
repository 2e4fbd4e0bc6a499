/*
 * CKVM is the KVM ABI: struct layouts and the ioctl shim, all in ckvm.h as
 * declarations and inline functions. SwiftPM builds a C target from at least
 * one source file; this is it, and it checks that the header compiles as C.
 */
#include "ckvm.h"
