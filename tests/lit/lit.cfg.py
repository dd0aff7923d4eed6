# lit configuration for nnc: every .nn file under tests/lit is a test; RUN lines use
# %nnc (the compiler of this build), FileCheck and not from LLVM 19, and %examples.
import os
import sys
import lit.formats

config.name = "nnc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".nn"]
config.excludes = ["Inputs"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.nnc_build_dir, "tests", "lit")
config.substitutions.append(("%nnc", os.path.join(config.nnc_build_dir, "nnc")))
config.substitutions.append(("%examples", os.path.join(config.nnc_source_dir, "examples")))
config.substitutions.append(("%python", sys.executable))
config.substitutions.append(("%golden", os.path.join(config.nnc_source_dir, "tests", "golden")))
# C and C++ compilers for programs that embed a model (--emit=header), with the flags that
# match a sanitized build's objects.
link_flags = getattr(config, "nnc_link_flags", "")
config.substitutions.append(("%cxx", " ".join(["g++", link_flags]).strip()))
config.substitutions.append(("%cc", " ".join(["cc", link_flags]).strip()))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "Inputs")))
config.environment["PATH"] = os.pathsep.join([config.llvm_tools_dir, config.environment.get("PATH", os.environ.get("PATH", ""))])
for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "HOME", "TMPDIR"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
# Debian's dataset-fashion-mnist: tests on real images need it (tests/lit/Inputs/fashion_slice.py)
if os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
    config.available_features.add("fashion-mnist")
# A CPU with AVX-512 VNNI (vpdpbusd): nnc's int8 tiles need it (tests/lit/embed/int8-tiles.nn)
try:
    with open("/proc/cpuinfo") as cpuinfo:
        if "avx512_vnni" in cpuinfo.read():
            config.available_features.add("avx512vnni")
except OSError:
    pass
