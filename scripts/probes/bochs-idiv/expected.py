# Python reference values for multest.asm
M=2**64
def s(x): return x-M if x>=2**63 else x
def h(x): return '%016X'%(x%M)
def mul(a,b): p=a*b; return h(p), h(p>>64)
def imul(a,b): p=s(a)*s(b); return h(p), h(p>>64)
def idiv(hi,lo,d):
    n=(hi<<64)|lo
    if n>=2**127: n-=2**128
    q=abs(n)//abs(d); r=abs(n)%abs(d)
    if (n<0)!=(d<0): q=-q
    if n<0: r=-r
    return h(q), h(r)
def div(hi,lo,d): n=(hi<<64)|lo; return h(n//d), h(n%d)
print('mul', mul(0x0123456789abcdef,0xfedcba9876543210))
print('mul', mul(M-1,M-1))
print('imul', imul((-0x123456789abcdef)%M,0x7edcba9876543210))
print('imul2', h(0x0123456789abcdef*0x10))
print('imul3', h(0x0123456789abcdef*1000))
p=0x89abcdef*0xfedcba98; print('mul32', '%08X %08X'%(p&0xffffffff,p>>32))
p=(0x89abcdef-2**32)*0x7edcba98; print('imul32', '%08X %08X'%(p&0xffffffff,(p>>32)&0xffffffff))
print('div', div(0,1193307,250), div(1,5,7))
print('idiv', idiv(0,1193307,250), idiv(0,1193307,500), idiv(M-1,(-1193307)%M,250), idiv(1,0,3), idiv(0,100,-7), idiv(0,2**63-1,1))
cps=1193182; sh=(cps<<8)+(cps+125)//500; cpt=(cps+125)//250; print('rrj', h(sh//cpt), h(sh%cpt))
