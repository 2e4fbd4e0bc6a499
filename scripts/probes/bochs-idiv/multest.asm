; Bare-metal 64-bit MUL/IMUL/MULX/DIV/IDIV test. Booted as El Torito no-emulation image (loaded at 0x7C00).
; Output to COM1 (0x3F8) and port 0xE9. Build: nasm -f bin -o multest.bin multest.asm
bits 16
org 0x7c00
start:
    cli
    xor ax,ax
    mov ds,ax
    mov es,ax
    mov ss,ax
    mov sp,0x7c00
    in al,0x92
    or al,2
    out 0x92,al
    mov di,0x1000
    mov cx,0x1800
    xor ax,ax
    rep stosw                      ; zero 0x1000..0x3fff
    mov dword [0x1000],0x2003
    mov dword [0x2000],0x3003
    mov dword [0x3000],0x83        ; identity 2MB page
    lgdt [gdtr]
    mov eax,cr4
    or eax,0x620                   ; PAE | OSFXSR | OSXMMEXCPT
    mov cr4,eax
    mov eax,0x1000
    mov cr3,eax
    mov ecx,0xC0000080
    rdmsr
    or eax,0x100
    wrmsr
    mov eax,cr0
    or eax,0x80000001
    mov cr0,eax
    jmp 0x08:long_start

align 8
gdt: dq 0, 0x00209A0000000000, 0x00CF92000000FFFF
gdtr: dw 23
      dd gdt

bits 64
long_start:
    mov ax,0x10
    mov ds,ax
    mov es,ax
    mov ss,ax
    mov rsp,0x90000
    ; serial init
    mov dx,0x3f9
    xor al,al
    out dx,al
    mov dx,0x3fb
    mov al,0x80
    out dx,al
    mov dx,0x3f8
    mov al,1
    out dx,al
    mov dx,0x3f9
    xor al,al
    out dx,al
    mov dx,0x3fb
    mov al,3
    out dx,al
    ; IDT: vectors 0 (#DE) and 6 (#UD) -> fault_handler
    mov rdi,idt
    xor eax,eax
    mov ecx,512
    rep stosq
    mov rax,fault_handler
    mov rdi,idt
    call set_gate
    mov rdi,idt+6*16
    call set_gate
    lidt [idtr]

    mov rsi,s_hello
    call puts
    ; CPUID: vendor, leaf 1 eax, leaf 7 ebx (BMI2 = bit 8)
    xor eax,eax
    cpuid
    mov [vendor],ebx
    mov [vendor+4],edx
    mov [vendor+8],ecx
    mov rsi,s_vendor
    call puts
    mov rsi,vendor
    call puts
    mov eax,1
    cpuid
    mov rsi,s_leaf1
    call puts
    call puthex64
    mov eax,7
    xor ecx,ecx
    cpuid
    mov [leaf7ebx],ebx
    mov eax,ebx
    mov rsi,s_leaf7
    call puts
    call puthex64
    mov rsi,s_nl
    call puts

%macro TBEGIN 2
    mov qword [cur_name],%%nm
    mov qword [resume],%2
    mov byte [faulted],0
    jmp %%go
%%nm: db %1,0
%%go:
%endmacro

    TBEGIN "mul r64   0x0123456789abcdef*0xfedcba9876543210", lbl1
    mov rax,0x0123456789abcdef
    mov rbx,0xfedcba9876543210
    mul rbx
lbl1: call report
    TBEGIN "mul r64   0xffffffffffffffff*0xffffffffffffffff", lbl2
    mov rax,-1
    mov rbx,-1
    mul rbx
lbl2: call report
    TBEGIN "imul r64  -0x123456789abcdef*0x7edcba9876543210", lbl3
    mov rax,-0x123456789abcdef
    mov rbx,0x7edcba9876543210
    imul rbx
lbl3: call report
    TBEGIN "imul r64,r64 0x0123456789abcdef*0x10 (rax only)", lbl4
    mov rax,0x0123456789abcdef
    mov rbx,0x10
    xor edx,edx
    imul rax,rbx
lbl4: call report
    TBEGIN "imul r64,r64,imm 0x0123456789abcdef*1000 (rax only)", lbl5
    mov rbx,0x0123456789abcdef
    xor edx,edx
    imul rax,rbx,1000
lbl5: call report
    test dword [leaf7ebx],0x100
    jz no_bmi2
    TBEGIN "mulx r64  0x0123456789abcdef*0xfedcba9876543210 (rax=lo rdx=hi)", lbl6
    mov rdx,0x0123456789abcdef
    mov rbx,0xfedcba9876543210
    mulx rcx,rax,rbx
    mov rdx,rcx
lbl6: call report
    jmp bmi2_done
no_bmi2:
    mov rsi,s_nobmi2
    call puts
bmi2_done:
    TBEGIN "mul r32   0x89abcdef*0xfedcba98 (edx:eax)", lbl7
    mov eax,0x89abcdef
    mov ebx,0xfedcba98
    mul ebx
lbl7: call report
    TBEGIN "imul r32  0x89abcdef*0x7edcba98 (edx:eax)", lbl8
    mov eax,0x89abcdef
    mov ebx,0x7edcba98
    imul ebx
lbl8: call report
    TBEGIN "div r64   0:1193307 / 250", lbl9
    xor edx,edx
    mov rax,1193307
    mov rbx,250
    div rbx
lbl9: call report
    TBEGIN "div r64   1:5 / 7", lbl10
    mov edx,1
    mov rax,5
    mov rbx,7
    div rbx
lbl10: call report
    TBEGIN "idiv r64  1193307 / 250 (cqo)", lbl11
    mov rax,1193307
    cqo
    mov rdi,250
    idiv rdi
lbl11: call report
    TBEGIN "idiv r64  1193307 / 500 (cqo)", lbl12
    mov rax,1193307
    cqo
    mov rdi,500
    idiv rdi
lbl12: call report
    TBEGIN "idiv r64  -1193307 / 250 (cqo)", lbl13
    mov rax,-1193307
    cqo
    mov rdi,250
    idiv rdi
lbl13: call report
    TBEGIN "idiv r64  1:0 / 3", lbl14
    mov edx,1
    xor eax,eax
    mov rdi,3
    idiv rdi
lbl14: call report
    TBEGIN "idiv r64  100 / -7 (cqo)", lbl15
    mov rax,100
    cqo
    mov rdi,-7
    idiv rdi
lbl15: call report
    TBEGIN "idiv r64  0x7fffffffffffffff / 1 (cqo)", lbl16
    mov rax,0x7fffffffffffffff
    cqo
    mov rdi,1
    idiv rdi
lbl16: call report
    TBEGIN "idiv r32  1193307 / 250 (cdq)", lbl17
    mov eax,1193307
    cdq
    mov edi,250
    idiv edi
lbl17: call report
    TBEGIN "div r32   1193307 / 250", lbl18
    xor edx,edx
    mov eax,1193307
    mov edi,250
    div edi
lbl18: call report
    TBEGIN "idiv m64  1193307 / [250] (cqo)", lbl19
    mov rax,1193307
    cqo
    idiv qword [c250]
lbl19: call report
    TBEGIN "register_refined_jiffies sequence -> rax=shift_hz/cpt", lbl20
    mov rdi,1193182
    mov rax,rdi
    lea rsi,[rax+0x7d]
    shl rax,8
    mov edi,500
    mov rcx,rax
    mov rax,rsi
    cqo
    idiv rdi
    mov edi,250
    add rcx,rax
    mov rax,rsi
    cqo
    idiv rdi
    xor edx,edx
    mov esi,eax
    mov rax,rcx
    div rsi
lbl20: call report
    TBEGIN "idiv r64  1193307 / 250 again", lbl21
    mov rax,1193307
    cqo
    mov rdi,250
    idiv rdi
lbl21: call report
    mov rsi,s_done
    call puts
.halt:
    hlt
    jmp .halt

; rdi = gate address, rax = handler
set_gate:
    mov word [rdi],ax
    mov word [rdi+2],0x08
    mov byte [rdi+4],0
    mov byte [rdi+5],0x8E
    mov rbx,rax
    shr rbx,16
    mov word [rdi+6],bx
    shr rbx,16
    mov dword [rdi+8],ebx
    mov dword [rdi+12],0
    ret

fault_handler:
    mov byte [faulted],1
    push rax
    mov rax,[resume]
    mov [rsp+8],rax
    pop rax
    iretq

; prints "name: rax=.. rdx=.." or "name: FAULT(#DE/#UD)"
report:
    mov [sv_rax],rax
    mov [sv_rdx],rdx
    mov rsi,[cur_name]
    call puts
    mov rsi,s_colon
    call puts
    cmp byte [faulted],0
    jne .f
    mov rsi,s_rax
    call puts
    mov rax,[sv_rax]
    call puthex64
    mov rsi,s_rdx
    call puts
    mov rax,[sv_rdx]
    call puthex64
    mov rsi,s_nl
    call puts
    ret
.f: mov rsi,s_fault
    call puts
    ret

; rsi = zero-terminated string
puts:
    push rax
.l: lodsb
    test al,al
    jz .d
    call putc
    jmp .l
.d: pop rax
    ret

putc:
    push rdx
    push rax
    mov dx,0x3fd
.w: in al,dx
    test al,0x20
    jz .w
    pop rax
    mov dx,0x3f8
    out dx,al
    out 0xe9,al
    pop rdx
    ret

puthex64:
    push rcx
    push rax
    mov rcx,16
.l: rol rax,4
    push rax
    and al,0xf
    add al,'0'
    cmp al,'9'
    jbe .p
    add al,7
.p: call putc
    pop rax
    dec rcx
    jnz .l
    pop rax
    pop rcx
    ret

align 8
c250: dq 250
s_hello: db 13,10,"MULTEST start",13,10,0
s_vendor: db "CPUID vendor=",0
s_leaf1: db " leaf1.eax=",0
s_leaf7: db " leaf7.ebx=",0
s_nobmi2: db "mulx: skipped, no BMI2",13,10,0
s_colon: db ": ",0
s_rax: db "rax=",0
s_rdx: db " rdx=",0
s_fault: db "FAULT (#DE or #UD)",13,10,0
s_nl: db 13,10,0
s_done: db "MULTEST done",13,10,0
vendor: times 16 db 0
leaf7ebx: dd 0
faulted: db 0
align 8
cur_name: dq 0
resume: dq 0
sv_rax: dq 0
sv_rdx: dq 0
idtr: dw 4095
      dq idt
times 8192-($-$$) db 0
idt equ 0x20000
