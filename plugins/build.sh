#!/usr/bin/env bash
# Builds every example plugin into plugins/dist/, so `patternd serve --plugins plugins/dist`
# serves them all:
#   - each Rust guest plugins/examples/NAME/Cargo.toml → dist/NAME.wasm (release, wasm32-wasip2);
#   - each Lua plugin plugins/examples/*/NAME.lua → dist/NAME.lua.
# Build artifacts go to $CARGO_TARGET_DIR when it is set (keep it outside the clone), else to
# plugins/examples/target. Both dist/ and that target/ are ignored by git.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
examples="$here/examples"
dist="$here/dist"
target_dir="${CARGO_TARGET_DIR:-$examples/target}"

# The guests need the wasm32-wasip2 standard library. Ask rustc where its libraries are rather
# than rustup, so a toolchain installed another way is judged the same.
sysroot="$(rustc --print sysroot)"
if [[ ! -d "$sysroot/lib/rustlib/wasm32-wasip2" ]]; then
  echo "error: the Rust target wasm32-wasip2 is not installed; the WebAssembly plugins need it." >&2
  echo "       Install it with:  rustup target add wasm32-wasip2" >&2
  exit 1
fi

mkdir -p "$dist"

# Copy through a temporary name and rename, so a test reading dist/ while another build runs
# never sees a half-written file.
install_file() {
  local src="$1" dest="$2"
  cp "$src" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
}

built=0
for manifest in "$examples"/*/Cargo.toml; do
  [[ -e "$manifest" ]] || continue
  dir="$(dirname "$manifest")"
  name="$(basename "$dir")"
  echo "plugins: building $name.wasm" >&2
  cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path "$manifest" --target-dir "$target_dir"
  # cargo names the artifact after the crate, with `-` turned into `_`.
  artifact="$target_dir/wasm32-wasip2/release/${name//-/_}.wasm"
  if [[ ! -f "$artifact" ]]; then
    echo "error: $manifest built no $artifact (is it a cdylib named $name?)" >&2
    exit 1
  fi
  install_file "$artifact" "$dist/$name.wasm"
  built=$((built + 1))
done

for lua in "$examples"/*/*.lua; do
  [[ -e "$lua" ]] || continue
  install_file "$lua" "$dist/$(basename "$lua")"
  built=$((built + 1))
done

echo "plugins: $built plugin(s) in $dist" >&2
