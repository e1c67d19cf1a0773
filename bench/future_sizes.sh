#!/usr/bin/env bash
# usage: bash bench/future_sizes.sh
# The sizes of the futures every gated call is made of, from rustc's type layouts (needs a
# nightly toolchain: `rustup toolchain install nightly`). hyper moves the outermost one into
# place on every request, so each byte here is copied, cold, per call. Layouts are computed
# before LLVM: a debug build gives the same sizes as a release build, faster. Incremental
# builds print nothing for code they reuse, so it is off.
set -eu
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}/future-sizes
out=$(mktemp)
touch src/lib.rs
CARGO_INCREMENTAL=0 RUSTFLAGS=-Zprint-type-sizes CARGO_TARGET_DIR="$target" cargo +nightly build --lib --quiet > "$out"
grep -E '^print-type-size type: `(\{async (fn body of (decide::decide|decide::ask|gate::exchange|body::read)\(\)|block@src/(server|webhook/mod|gate|engine)\.rs)|futures_util::future::Either<std::future::Ready<http::Response)' "$out" \
  | sed -E 's/^print-type-size type: `//; s/`: ([0-9]+) bytes.*/\t\1/' | sort -u \
  | sed -E 's/^futures_util::future::Either<std::future::Ready<http::Response.*\t/handle_public: the future hyper moves into place per request\t/' \
  | awk -F'\t' '{printf "%6d  %s\n", $2, substr($1, 1, 100)}' | sort -rn
rm -f "$out"
