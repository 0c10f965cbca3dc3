#!/usr/bin/env bash
# CI smoke test for the fuzz targets: build every target, then run each one for a bounded time
# from its committed seeds (fuzz/seeds/<target>/). Fails if a target does not build, or if any run
# finds a crash, a panic (a failed property assertion), a timeout or an out-of-memory.
#
#   fuzz/smoke.sh                        # 10 s per target
#   FUZZ_SMOKE_SECONDS=60 fuzz/smoke.sh  # longer
#
# Needs cargo-fuzz (installed here if missing). cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, ...); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

seconds="${FUZZ_SMOKE_SECONDS:-10}"
start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "smoke: no fuzz targets found" >&2
    exit 1
fi

# -a: debug assertions (and so integer-overflow checks) in the fuzzed code. Same flags as the runs
# below, so that `cargo fuzz run` finds everything built.
echo "smoke: building ${targets[*]}"
cargo fuzz build -a

# New corpus entries go to a scratch directory, never into the committed seeds.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    if cargo fuzz run -a "$target" "$work/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
        echo "smoke: $target ok: ${runs:-?} executions in ${seconds}s, ${cov:-cov: ?}"
    else
        failed+=("$target")
        echo "smoke: $target FAILED; last lines of its log:" >&2
        tail -n 60 "$log" >&2
        for artifact in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log"); do
            echo "smoke: $target reproducer $artifact (hex):" >&2
            od -An -v -tx1 "$artifact" | tr -d ' \n' >&2
            echo >&2
            echo "smoke: replay with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -a $target $artifact" >&2
        done
    fi
done

echo "smoke: ${#targets[@]} targets in $(($(date +%s) - start))s"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "smoke: all fuzz targets passed"
