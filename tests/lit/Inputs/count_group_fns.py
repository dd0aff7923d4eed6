"""Reads a module (nnc --emit=llvm) and checks that its group functions are shared: that the
kernels call them at least RATIO times as often as there are functions (lower_llvm.c makes
one function per distinct loop group, so the steps of an unrolled scan call the same ones)."""
import re
import sys

ratio = float(sys.argv[1])
text = sys.stdin.read()
defined = len(re.findall(r"^define internal .*@nn\.group", text, re.M))
calls = len(re.findall(r"call .*@nn\.group", text))
print(f"{defined} group functions, {calls} calls")
if not defined or calls < ratio * defined:
    sys.exit(f"error: expected at least {ratio:g} calls per group function")
