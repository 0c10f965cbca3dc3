#!/usr/bin/env python3
"""Compare pqkms-envelope's wrap and unwrap with the sum of their primitives.

Reads criterion's results from target/criterion/**/new/estimates.json (the mean point estimate,
in nanoseconds, unless --stat says otherwise) together with the sibling benchmark.json that names
each benchmark, so run `cargo bench --bench envelope` first. Standard library only.

On a shared machine one statistic can be skewed by a burst of load, so each ratio is also shown
computed from the median and from criterion's slope estimate: trust a verdict that all three agree
on, and re-run when they do not.

Target (from the issue): wrap and unwrap each cost at most 1.15x the sum of their primitives
measured in the same run.

Usage: python3 benches/ratio.py [--criterion-dir target/criterion] [--stat mean] [--markdown]
"""

import argparse
import json
import os
import sys

TARGET = 1.15

# The primitive lists: (label, benchmark id).
WRAP = [
    ("ML-KEM-768 encaps (libcrux)", "mlkem768/encaps/libcrux"),
    ("X25519 base mult (ct_X)", "x25519/keygen"),
    ("X25519 DH, pk_X's table (key in heavy use)", "x25519/dh_table"),
    ("SHA3-256, 134 B (combiner)", "sha3/sha3_256/134"),
    ("HKDF-SHA256, 32 B out", "hkdf_sha256/extract_expand/32"),
    ("AES-256-GCM seal, 32 B", "aes256gcm/seal/32"),
    ("getrandom 64 B (encaps seed)", "getrandom/fill/64"),
    ("getrandom 12 B (nonce)", "getrandom/fill/12"),
]
UNWRAP = [
    ("ML-KEM-768 decaps (libcrux)", "mlkem768/decaps/libcrux"),
    ("X25519 DH", "x25519/dh"),
    ("SHA3-256, 134 B (combiner)", "sha3/sha3_256/134"),
    ("HKDF-SHA256, 32 B out", "hkdf_sha256/extract_expand/32"),
    ("AES-256-GCM open, 32 B", "aes256gcm/open/32"),
]
# Work both operations do that the list leaves out; shown as an explanation only.
EXTRA = [
    ("AES-256 key schedule + GHASH key", "aes256gcm/key_init"),
    ("context digest (SHA-256, empty)", "composite/context_digest_empty"),
]
COMPOSITES = [
    ("wrap", "composite/wrap", WRAP, "inline/wrap_primitives"),
    ("unwrap", "composite/unwrap", UNWRAP, "inline/unwrap_primitives"),
]
OTHER_COMPOSITES = [
    "composite/generate_data_key",
    "composite/field/encrypt_64B",
    "composite/field/decrypt_64B",
    "composite/envelope/seal_1KiB",
    "composite/envelope/open_1KiB",
    "composite/unseal_tenant_key",
]
MLKEM_OPS = ["keygen", "encaps", "decaps"]
STATS = ["mean", "median", "slope"]


def load(root):
    """Map benchmark full id -> {statistic: point estimate in ns}."""
    results = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in filenames:
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            estimates = json.load(f)
        stats = {k: v["point_estimate"] for k, v in estimates.items() if v and k in STATS}
        bench_json = os.path.join(dirpath, "benchmark.json")
        if os.path.exists(bench_json):
            with open(bench_json) as f:
                full_id = json.load(f)["full_id"]
        else:  # fall back on the directory path (criterion replaces '/' in names with '_')
            full_id = os.path.relpath(os.path.dirname(dirpath), root).replace(os.sep, "/")
        results[full_id] = stats
    return results


def fmt_ns(ns):
    if ns is None:
        return "missing"
    if ns >= 1e6:
        return f"{ns / 1e6:.3f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3f} µs"
    return f"{ns:.1f} ns"


class Table:
    def __init__(self, markdown, headers, align):
        self.markdown = markdown
        self.headers = headers
        self.align = align  # "l" or "r" per column
        self.rows = []

    def row(self, *cells):
        self.rows.append([str(c) for c in cells])

    def render(self):
        if self.markdown:
            out = ["| " + " | ".join(self.headers) + " |"]
            out.append("|" + "|".join(":---" if a == "l" else "---:" for a in self.align) + "|")
            out += ["| " + " | ".join(r) + " |" for r in self.rows]
            return "\n".join(out)
        widths = [max(len(x) for x in col) for col in zip(self.headers, *self.rows)]

        def line(cells):
            return "  ".join(
                c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, self.align)
            )

        out = [line(self.headers), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion-dir", default=None)
    parser.add_argument("--stat", choices=STATS, default="mean", help="statistic for the tables")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    root = args.criterion_dir or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion"
    )
    results = load(root)
    if not results:
        sys.exit(f"no criterion results under {root}; run `cargo bench --bench envelope` first")

    def get(bench_id, stat=args.stat):
        return results.get(bench_id, {}).get(stat)

    failed = False
    h = "###" if args.markdown else "==="

    def note(text):
        print(f"- {text}" if args.markdown else text)

    for name, composite_id, primitives, inline_id in COMPOSITES:
        print(f"{h} {name}: `{composite_id}` vs the sum of its primitives\n")
        t = Table(args.markdown, ["primitive", "benchmark", args.stat, "share"], "llrr")
        times = [get(b) for _, b in primitives]
        total = sum(x for x in times if x is not None)
        for (label, bench_id), x in zip(primitives, times):
            t.row(label, f"`{bench_id}`", fmt_ns(x), f"{100 * x / total:.1f} %" if x else "")
        t.row("**sum of primitives**" if args.markdown else "SUM OF PRIMITIVES", "", fmt_ns(total), "")
        composite = get(composite_id)
        t.row(f"composite `{name}`", f"`{composite_id}`", fmt_ns(composite), "")
        inline = get(inline_id)
        t.row("same primitives, back to back", f"`{inline_id}`", fmt_ns(inline), "")
        print(t.render())
        missing = [b for (_, b), x in zip(primitives, times) if x is None]
        if composite is None:
            missing.append(composite_id)
        if missing:
            print()
            note(f"missing results: {', '.join(missing)}")
            failed = True
            print()
            continue
        ratio = composite / total
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        failed |= ratio > TARGET
        print()
        note(f"ratio {name} / sum = {ratio:.3f}  (target <= {TARGET}, {args.stat})  {verdict}")
        by_stat = []
        for stat in STATS:
            parts = [get(b, stat) for _, b in primitives]
            comp = get(composite_id, stat)
            if comp is not None and all(x is not None for x in parts):
                by_stat.append(f"{stat} {comp / sum(parts):.3f}")
        note(f"same ratio by statistic: {', '.join(by_stat)}")
        if inline is not None:
            note(f"ratio {name} / back-to-back primitives = {composite / inline:.3f}")
            note(f"ratio back-to-back / sum = {inline / total:.3f}")
        extra = [(label, b, get(b)) for label, b in EXTRA]
        if all(x is not None for _, _, x in extra):
            with_extra = total + sum(x for _, _, x in extra)
            parts = " + ".join(f"{label} {fmt_ns(x)}" for label, _, x in extra)
            note(f"with unlisted work ({parts}): sum {fmt_ns(with_extra)}, "
                 f"ratio {composite / with_extra:.3f}")
        print()

    print(f"{h} ML-KEM-768: libcrux vs RustCrypto ml-kem\n")
    t = Table(args.markdown, ["operation", "libcrux", "rustcrypto", "rustcrypto / libcrux"], "lrrr")
    for op in MLKEM_OPS:
        lc, rc = get(f"mlkem768/{op}/libcrux"), get(f"mlkem768/{op}/rustcrypto")
        t.row(op, fmt_ns(lc), fmt_ns(rc), f"{rc / lc:.2f}x" if lc and rc else "")
    print(t.render())
    print()
    unpacked = [(op, get(f"mlkem768/{op}/libcrux"), get(f"mlkem768/{op}/libcrux_unpacked"))
                for op in ["encaps", "decaps"]]
    if any(u is not None for _, _, u in unpacked):
        print("libcrux serialized-key API (used by pqkms-envelope) vs its unpacked API (AVX2):\n")
        t = Table(args.markdown, ["operation", "libcrux", "libcrux_unpacked", "libcrux / unpacked"],
                  "lrrr")
        for op, lc, u in unpacked:
            t.row(op, fmt_ns(lc), fmt_ns(u), f"{lc / u:.2f}x" if lc and u else "")
        print(t.render())
        print()

    print(f"{h} Other composites\n")
    t = Table(args.markdown, ["benchmark", args.stat], "lr")
    for bench_id in OTHER_COMPOSITES:
        t.row(f"`{bench_id}`", fmt_ns(get(bench_id)))
    print(t.render())
    print()

    print(f"{h} All results\n")
    t = Table(args.markdown, ["benchmark"] + STATS, "l" + "r" * len(STATS))
    for bench_id in sorted(results):
        t.row(f"`{bench_id}`", *(fmt_ns(results[bench_id].get(s)) for s in STATS))
    print(t.render())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
