#!/usr/bin/env python3
"""Size of a binary's code by crate, from its symbol table (like `cargo
bloat --crates`, without rebuilding): sums the sizes of code symbols by the
crate of each demangled symbol (its first path segment; for `<A as B>::f`
the crate of A, or of B when A is a generic parameter). Generic code is
counted where it is defined (`core`, `alloc` include instantiations made by
other crates), as cargo bloat does.

    scripts/size-by-crate.py BINARY [NM] [N]      (NM e.g. aarch64-linux-gnu-nm)

then the same sums by group (tract and its dependencies, Rust's standard
library, the HTTP/gRPC stack, ...), the groups named in docs/boards.md.
"""
import collections, re, subprocess, sys

binary = sys.argv[1]
nm = sys.argv[2] if len(sys.argv) > 2 else "nm"
top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
out = subprocess.run([nm, "-S", "--size-sort", "-C", binary], capture_output=True, text=True, check=True).stdout
by = collections.Counter()
total = 0
for line in out.splitlines():
    parts = line.split(" ", 3)
    if len(parts) < 4 or parts[2] not in "tTwW":
        continue
    size, name = int(parts[1], 16), parts[3]
    total += size
    n = name.lstrip("<&*")
    n = re.sub(r"^(dyn |mut |const )", "", n)
    g = re.match(r"([A-Z][A-Za-z0-9_]*|\(.*?\)|\[.*?\]) as ([a-z_][a-z0-9_]*)::", n)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", n)
    if g:  # <K as tract_linalg::...>::f with K a generic: the trait's crate
        crate = g.group(2)
    elif "libunwind::" in n:
        crate = "[libunwind]"
    elif m:
        crate = m.group(1)
    elif re.match(r"^[a-z_][a-z0-9_]*$", n) or n.startswith("_"):
        crate = "[C/asm: " + ("tract kernels" if "arm64" in n or "fma" in n or "avx" in n or "armv7" in n else "libc/other") + "]"
    else:
        crate = "[other]"
    by[crate] += size
print(f"{binary}: {total / 2**20:.2f} MB of sized code symbols")
print(f"{'crate':<40} {'KB':>9} {'%':>6}")
for c, s in by.most_common(top):
    print(f"{c:<40} {s / 1024:>9.0f} {100 * s / total:>6.1f}")

GROUPS = [  # (group, crate-name prefixes); first match wins
    ("tract + ndarray, rustfft, num, smallvec (inference)",
     ("tract_", "ndarray", "rustfft", "transpose", "primal", "strength_reduce", "num_", "smallvec", "matrixmultiply", "half", "dyn_clone", "dyn_hash", "downcast_rs", "[C/asm: tract")),
    ("Rust std (core, alloc, std, hashbrown; generics instantiated by all)", ("core", "alloc", "std", "hashbrown", "[libunwind]")),
    ("HTTP + gRPC (tokio, hyper, h2, axum, tonic, tower, http, prost)",
     ("tokio", "hyper", "h2", "axum", "tonic", "tower", "http", "prost", "bytes", "futures", "matchit", "mio", "socket2", "slab", "indexmap", "tracing", "pin_project", "percent_encoding", "form_urlencoded", "want", "atomic_waker", "sync_wrapper")),
    ("regex (env_logger's default `regex` feature)", ("regex", "aho_corasick", "memchr")),
    ("config + JSON (serde, yaml_serde, libyaml, erased_serde)", ("serde", "yaml_serde", "libyaml", "erased_serde", "itoa", "ryu", "zmij")),
    ("images (image, zune_jpeg, png, deflate)", ("image", "zune_", "png", "fdeflate", "miniz_oxide", "flate2", "crc32fast", "adler", "simd_adler32")),
    ("CLI + logging (clap, env_logger, indicatif)", ("clap", "env_logger", "env_filter", "anstream", "anstyle", "indicatif", "console", "unicode_", "jiff", "strsim", "humantime")),
    ("adaptivenet's own crates", ("adaptivenet_", "adaptived")),
]
groups = collections.Counter()
for c, s in by.items():
    g = next((name for name, pre in GROUPS if c.startswith(pre)), "everything else")
    groups[g] += s
print(f"\n{'group':<72} {'KB':>9} {'%':>6}")
for g, s in groups.most_common():
    print(f"{g:<72} {s / 1024:>9.0f} {100 * s / total:>6.1f}")
