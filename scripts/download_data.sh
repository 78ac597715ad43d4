#!/usr/bin/env bash
# Fetch the corpora the shipped recipes use and check them byte for byte.
#
#   scripts/download_data.sh [DEST]        (DEST defaults to $LMTRAIN_DATA, else ./data)
#   export LMTRAIN_DATA=$PWD/data           then run the configs in configs/
#
# `lmtrain download CORPUS [DEST]` does the same from an installed lmtrain (lmtrain/download.py,
# exit 2 on a mismatch); this script needs only bash, curl or wget, and unzip for the archives.
# tests/test_recipes.py checks that the two pin the same URLs and checksums.
#
#   scripts/download_data.sh [DEST]                 WikiText-2 and Tiny Shakespeare (small)
#   scripts/download_data.sh DEST CORPUS...         only those, among: wikitext-2 tinyshakespeare
#                                                   wikitext-103 wikitext-103-raw enwik8
#
# Sources (pinned commits, so the bytes cannot change under a recipe):
#   WikiText-2 (Merity et al. 2016, CC BY-SA 3.0), tokenised v1 files as used by
#     pytorch/examples word_language_model, commit 77f55b912142e11fcfdf5b530231fb9c52f181e8.
#   Tiny Shakespeare (public domain), karpathy/char-rnn data/tinyshakespeare/input.txt,
#     commit 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e.
#   WikiText-103 (tokenised v1; raw v1 for BPE) and enwik8 (Hutter Prize) are zip archives from
#     their authors' sites. Their sha256 values were not computed here: they are those the
#     Hugging Face `datasets` library publishes for the same URLs (huggingface/datasets,
#     datasets/wikitext/dataset_infos.json and datasets/enwik8/dataset_infos.json, commit
#     040102f100964a33fd334e2695f1c493fa6b92db). enwik8 is cut at the customary 90 / 5 / 5 M bytes.
# Each file is downloaded to a temporary name, its sha256 compared with the value recorded here,
# and only then moved into place; a mismatch deletes the download and exits 1.
set -euo pipefail

DEST="${1:-${LMTRAIN_DATA:-data}}"
shift || true
WANT=("$@")
[[ ${#WANT[@]} -gt 0 ]] || WANT=(wikitext-2 tinyshakespeare)
KNOWN=" wikitext-2 tinyshakespeare wikitext-103 wikitext-103-raw enwik8 "
for corpus in "${WANT[@]}"; do
  if [[ "$KNOWN" != *" $corpus "* ]]; then
    echo "error: unknown corpus $corpus; choose from:$KNOWN" >&2
    exit 1
  fi
done
wanted() { [[ " ${WANT[*]} " == *" $1 "* ]]; }
# A mirror may be named with WIKITEXT2_URL / TINYSHAKESPEARE_URL; the checksums still apply.
EXAMPLES="${WIKITEXT2_URL:-https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2}"
CHARRNN="${TINYSHAKESPEARE_URL:-https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare}"
WT103="${WIKITEXT103_URL:-https://s3.amazonaws.com/research.metamind.io/wikitext}"
WT103RAW="${WIKITEXT103_RAW_URL:-https://s3.amazonaws.com/research.metamind.io/wikitext}"
ENWIK8="${ENWIK8_URL:-http://mattmahoney.net/dc}"

# corpus | archive URL | sha256 | target=member[@start+length] ... (start, length: whole MB)
ARCHIVES=(
  "wikitext-103|$WT103/wikitext-103-v1.zip|242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590|train.txt=wikitext-103/wiki.train.tokens valid.txt=wikitext-103/wiki.valid.tokens test.txt=wikitext-103/wiki.test.tokens"
  "wikitext-103-raw|$WT103RAW/wikitext-103-raw-v1.zip|91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794|train.txt=wikitext-103-raw/wiki.train.raw valid.txt=wikitext-103-raw/wiki.valid.raw test.txt=wikitext-103-raw/wiki.test.raw"
  "enwik8|$ENWIK8/enwik8.zip|547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc|train.txt=enwik8@0+90000000 valid.txt=enwik8@90000000+5000000 test.txt=enwik8@95000000+5000000"
)

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
  wanted "${rel%%/*}" || continue
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
for entry in "${ARCHIVES[@]}"; do
  IFS='|' read -r corpus url want parts <<<"$entry"
  wanted "$corpus" || continue
  dir="$DEST/$corpus"
  stamp="$dir/.$(basename "$url").sha256"
  mkdir -p "$dir"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "ok       $dir (already extracted, checksum matched)"
    continue
  fi
  command -v unzip >/dev/null 2>&1 || { echo "error: unzip is not installed; install it" >&2; exit 1; }
  zip="$dir/$(basename "$url")"
  if [[ ! -f "$zip" || "$(sha256_of "$zip")" != "$want" ]]; then
    echo "fetching $url"
    if ! fetch "$url" "$zip.part"; then
      rm -f "$zip.part"
      echo "error: download of $url failed; check your connection and rerun" >&2
      exit 1
    fi
    got="$(sha256_of "$zip.part")"
    if [[ "$got" != "$want" ]]; then
      rm -f "$zip.part"
      echo "error: checksum mismatch for $corpus/$(basename "$url")" >&2
      echo "  expected sha256 $want" >&2
      echo "  got      sha256 $got" >&2
      echo "  from $url; the download was deleted, nothing was replaced." >&2
      exit 1
    fi
    mv "$zip.part" "$zip"
  fi
  rm -f "$stamp"
  for part in $parts; do
    target="${part%%=*}"
    member="${part#*=}"
    if [[ "$member" == *@* ]]; then
      range="${member#*@}"
      member="${member%@*}"
      start="${range%+*}"
      length="${range#*+}"
      # dd on the extracted member: no pipe whose reader stops early (SIGPIPE under pipefail).
      [[ -f "$dir/.member" ]] || unzip -p "$zip" "$member" >"$dir/.member"
      dd if="$dir/.member" of="$dir/$target.part" bs=1000000 skip=$((start / 1000000)) \
        count=$((length / 1000000)) 2>/dev/null
    else
      unzip -p "$zip" "$member" >"$dir/$target.part"
    fi
    mv "$dir/$target.part" "$dir/$target"
    echo "ok       $dir/$target"
  done
  echo "$want" >"$stamp"
  rm -f "$zip" "$dir/.member"
done
echo "done: export LMTRAIN_DATA=$(cd "$DEST" && pwd)"
