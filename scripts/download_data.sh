#!/usr/bin/env bash
# Fetch the corpora the shipped recipes use and check them byte for byte.
#
#   scripts/download_data.sh [DEST]        (DEST defaults to $LMTRAIN_DATA, else ./data)
#   export LMTRAIN_DATA=$PWD/data           then run the configs in configs/
#
# `lmtrain download wikitext-2|tinyshakespeare [DEST]` does the same from an installed lmtrain
# (lmtrain/download.py, exit 2 on a mismatch); this script needs only bash and curl or wget.
# tests/test_recipes.py checks that the two pin the same URLs and checksums.
#
# Sources (pinned commits, so the bytes cannot change under a recipe):
#   WikiText-2 (Merity et al. 2016, CC BY-SA 3.0), tokenised v1 files as used by
#     pytorch/examples word_language_model, commit 77f55b912142e11fcfdf5b530231fb9c52f181e8.
#   Tiny Shakespeare (public domain), karpathy/char-rnn data/tinyshakespeare/input.txt,
#     commit 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e.
# Each file is downloaded to a temporary name, its sha256 compared with the value recorded here,
# and only then moved into place; a mismatch deletes the download and exits 1.
set -euo pipefail

DEST="${1:-${LMTRAIN_DATA:-data}}"
# A mirror may be named with WIKITEXT2_URL / TINYSHAKESPEARE_URL; the checksums still apply.
EXAMPLES="${WIKITEXT2_URL:-https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2}"
CHARRNN="${TINYSHAKESPEARE_URL:-https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare}"

# path under DEST | URL | sha256
FILES=(
  "wikitext-2/train.txt|$EXAMPLES/train.txt|9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"
  "wikitext-2/valid.txt|$EXAMPLES/valid.txt|f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"
  "wikitext-2/test.txt|$EXAMPLES/test.txt|d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"
  "tinyshakespeare/input.txt|$CHARRNN/input.txt|86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
)

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1  # macOS
  fi
}

fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl --fail --location --silent --show-error --retry 3 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget --quiet --tries=3 -O "$2" "$1"
  else
    echo "error: neither curl nor wget is installed; install one of them" >&2
    exit 1
  fi
}

for entry in "${FILES[@]}"; do
  IFS='|' read -r rel url want <<<"$entry"
  target="$DEST/$rel"
  mkdir -p "$(dirname "$target")"
  if [[ -f "$target" && "$(sha256_of "$target")" == "$want" ]]; then
    echo "ok       $target (already present, checksum matches)"
    continue
  fi
  tmp="$target.part"
  echo "fetching $url"
  if ! fetch "$url" "$tmp"; then
    rm -f "$tmp"
    echo "error: download of $url failed; check your connection and rerun" >&2
    exit 1
  fi
  got="$(sha256_of "$tmp")"
  if [[ "$got" != "$want" ]]; then
    rm -f "$tmp"
    echo "error: checksum mismatch for $rel" >&2
    echo "  expected sha256 $want" >&2
    echo "  got      sha256 $got" >&2
    echo "  from $url; the download was deleted, nothing was replaced." >&2
    exit 1
  fi
  mv "$tmp" "$target"
  echo "ok       $target"
done
echo "done: export LMTRAIN_DATA=$(cd "$DEST" && pwd)"
