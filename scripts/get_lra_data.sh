#!/usr/bin/env bash
# Get the Long Range Arena release (lra_release.gz) and lay out its files where the loaders look.
#
# Usage:
#   scripts/get_lra_data.sh [--archive PATH] [--data-dir DIR] [--only LIST] [--checksums FILE]
#
#   --archive PATH    an already downloaded lra_release.gz: nothing is downloaded. Without it the archive
#                     (https://storage.googleapis.com/long-range-arena/lra_release.gz, about 7.7 GB, a gzipped
#                     tar) is downloaded to DIR/downloads/lra_release.gz, or reused from there.
#   --data-dir DIR    where the files go (default: $LRA_DATA, else data)
#   --only LIST       comma-separated subset of listops,retrieval,pathfinder32,pathfinder64,pathfinder128,
#                     pathfinder256 (default: all of them)
#   --checksums FILE  SHA-256 list the files are checked against (default: lra_release.sha256 beside this script)
#
# Layout written (only the members needed are extracted, in one pass over the archive):
#   DIR/listops/basic_{train,val,test}.tsv               from lra_release/.../listops-1000/
#   DIR/retrieval/new_aan_pairs.{train,eval,test}.tsv    from lra_release/.../tsv_data/
#   DIR/pathfinderN/curv_*/{imgs,metadata}/              from lra_release/.../pathfinderN/   (N = 32, 64, 128, 256)
# Existing files and curv_* folders of the selected tasks are replaced; nothing else in DIR is touched.
#
# Checks, in order; any failure exits nonzero before anything is laid out:
#   1. the archive starts with the gzip magic bytes (an HTML error page saved as lra_release.gz fails here);
#   2. its size, when known: the official size was not available offline, so it is reported as unchecked
#      unless LRA_RELEASE_SIZE=<bytes> is set;
#   3. gzip integrity: the extraction pass decompresses the whole archive, and gzip's CRC/length check at its end
#      must pass (a truncated or corrupt download fails here);
#   4. every expected member of the selected tasks is present (each missing one is named);
#   5. SHA-256 of the extracted files listed in the checksum file (sha256sum format, paths relative to DIR, e.g.
#      `<sha256>  listops/basic_train.tsv`). A mismatch prints the file, the expected and the found sum.
#      The official checksums were not available offline when this script was written: the shipped
#      scripts/lra_release.sha256 lists none yet, so the files are reported as unchecked. Record them with
#      `cd DIR && sha256sum listops/*.tsv retrieval/*.tsv >> .../scripts/lra_release.sha256` once a trusted
#      copy has been unpacked.
# Offline: download the URL above on another machine, copy it here, and run with --archive PATH.
# LRA_RELEASE_URL overrides the download URL (a mirror).
set -euo pipefail

URL=${LRA_RELEASE_URL:-https://storage.googleapis.com/long-range-arena/lra_release.gz}
EXPECTED_SIZE=${LRA_RELEASE_SIZE:-}
ALL_TASKS="listops retrieval pathfinder32 pathfinder64 pathfinder128 pathfinder256"
DIFFICULTIES="curv_baseline curv_contour_length_9 curv_contour_length_14"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ARCHIVE=""
DATA_DIR=${LRA_DATA:-data}
ONLY=""
CHECKSUMS="$HERE/lra_release.sha256"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"; }
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --archive) need "$@"; ARCHIVE=$2; shift 2 ;;
    --archive=*) ARCHIVE=${1#*=}; shift ;;
    --data-dir) need "$@"; DATA_DIR=$2; shift 2 ;;
    --data-dir=*) DATA_DIR=${1#*=}; shift ;;
    --only) need "$@"; ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --checksums) need "$@"; CHECKSUMS=$2; shift 2 ;;
    --checksums=*) CHECKSUMS=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

TASKS=""
for t in ${ONLY//,/ }; do
  case " $ALL_TASKS " in
    *" $t "*) TASKS="$TASKS $t" ;;
    *) die "unknown task '$t' in --only; valid: ${ALL_TASKS// /,}" ;;
  esac
done
TASKS=${TASKS:-$ALL_TASKS}
TASKS=${TASKS# }
[[ -e $DATA_DIR && ! -d $DATA_DIR ]] && die "--data-dir $DATA_DIR is a file, not a folder: name a folder (it is \
created if missing)"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum -- "$1" | cut -d' ' -f1
  else shasum -a 256 -- "$1" | cut -d' ' -f1
  fi
}

# --------------------------------------------------------------------------- the archive

OWN_DOWNLOAD=0
if [[ -z $ARCHIVE ]]; then
  ARCHIVE="$DATA_DIR/downloads/lra_release.gz"
  OWN_DOWNLOAD=1
  if [[ -f $ARCHIVE ]]; then
    echo "using the previously downloaded $ARCHIVE"
  else
    mkdir -p "$DATA_DIR/downloads"
    echo "downloading $URL (about 7.7 GB) to $ARCHIVE"
    offline="could not download $URL. Offline? Download it on a machine with network access, copy it here and run:
    $(printf '%q' "$0") --archive PATH/lra_release.gz --data-dir $(printf '%q' "$DATA_DIR")"
    if command -v curl >/dev/null 2>&1; then
      curl -fL --connect-timeout 30 --retry 3 -C - -o "$ARCHIVE.part" "$URL" || die "$offline"
    elif command -v wget >/dev/null 2>&1; then
      wget -c --timeout=30 --tries=3 -O "$ARCHIVE.part" "$URL" || die "$offline"
    else
      die "neither curl nor wget is installed. $offline"
    fi
    mv -f -- "$ARCHIVE.part" "$ARCHIVE"
  fi
fi
[[ -f $ARCHIVE ]] || die "archive not found: $ARCHIVE (download $URL, or check --archive)"
# What to do with a bad archive: our own earlier download is reused by every run until it is deleted.
if [[ $OWN_DOWNLOAD == 1 ]]; then
  again="Delete it (rm '$ARCHIVE') and run this command again to download it anew."
else
  again="Download $URL again."
fi

magic=$(head -c 2 -- "$ARCHIVE" | od -An -tx1 | tr -d ' \n')
[[ $magic == 1f8b ]] || die "$ARCHIVE is not a gzip file (first bytes '$magic', expected '1f8b'): \
an interrupted download or an error page? $again"
size=$(wc -c < "$ARCHIVE" | tr -d ' ')
if [[ -n $EXPECTED_SIZE ]]; then
  [[ $size == "$EXPECTED_SIZE" ]] || die "$ARCHIVE has $size bytes, expected $EXPECTED_SIZE: truncated or another \
file. $again"
  echo "archive size: $size bytes, as expected"
else
  echo "archive size: $size bytes (unchecked: the official size was not available offline; set LRA_RELEASE_SIZE)"
fi

# --------------------------------------------------------------------------- extraction into a staging folder

mkdir -p "$DATA_DIR"
STAGE=$(mktemp -d "$DATA_DIR/.lra_release.staging.XXXXXX")
trap 'rm -rf -- "$STAGE"' EXIT
mkdir "$STAGE/x"

patterns=()
for t in $TASKS; do
  case $t in
    listops) for s in train val test; do patterns+=("*listops-1000/basic_$s.tsv"); done ;;
    retrieval) for s in train eval test; do patterns+=("*tsv_data/new_aan_pairs.$s.tsv"); done ;;
    pathfinder*) patterns+=("*$t/curv_*") ;;
  esac
done
tar_opts=(--no-same-owner)
if tar --version 2>/dev/null | grep -q 'GNU tar'; then tar_opts+=(--wildcards); fi

echo "extracting [$TASKS] from $ARCHIVE into a staging folder (one pass over the whole archive)"
set +e
gzip -dc -- "$ARCHIVE" 2> "$STAGE/gzip.log" | tar -x -f - -C "$STAGE/x" "${tar_opts[@]}" -- "${patterns[@]}" \
  2> "$STAGE/tar.log"
statuses=("${PIPESTATUS[@]}")
set -e
if [[ ${statuses[0]} != 0 ]]; then
  die "gzip integrity check failed for $ARCHIVE ($(tr '\n' ' ' < "$STAGE/gzip.log")): the file is corrupt or \
truncated. $again"
fi

# Folder of the staged tree that holds a member folder named $1 (the archive's prefix may vary).
staged_dir() { find "$STAGE/x" -maxdepth 5 -type d -name "$1" -print -quit; }

missing=()
for t in $TASKS; do
  case $t in
    listops)
      src=$(staged_dir listops-1000)
      for s in train val test; do
        [[ -n $src && -f $src/basic_$s.tsv ]] || missing+=("lra_release/.../listops-1000/basic_$s.tsv")
      done ;;
    retrieval)
      src=$(staged_dir tsv_data)
      for s in train eval test; do
        [[ -n $src && -f $src/new_aan_pairs.$s.tsv ]] || missing+=("lra_release/.../tsv_data/new_aan_pairs.$s.tsv")
      done ;;
    pathfinder*)
      src=$(staged_dir "$t")
      for d in $DIFFICULTIES; do
        for sub in imgs metadata; do
          [[ -n $src && -d $src/$d/$sub ]] || missing+=("lra_release/.../$t/$d/$sub/")
        done
      done ;;
  esac
  printf -v "SRC_$t" '%s' "$src"
done
if [[ ${#missing[@]} -gt 0 ]]; then
  {
    echo "error: $ARCHIVE lacks expected member(s):"
    printf '  %s\n' "${missing[@]}"
    echo "Is it the complete official lra_release.gz? Nothing was laid out."
  } >&2
  exit 1
fi
if [[ ${statuses[1]} != 0 ]]; then
  die "tar failed on $ARCHIVE: $(tr '\n' ' ' < "$STAGE/tar.log")"
fi

# Staged file of a layout path relative to DATA_DIR (empty when the path is not one of the selected tasks').
staged_path() {
  local rel=$1 task=${1%%/*} var
  case " $TASKS " in *" $task "*) ;; *) return 0 ;; esac
  var="SRC_$task"
  case $task in
    listops) [[ $rel == listops/basic_*.tsv ]] && printf '%s' "${!var}/${rel#listops/}" ;;
    retrieval) [[ $rel == retrieval/new_aan_pairs.*.tsv ]] && printf '%s' "${!var}/${rel#retrieval/}" ;;
    pathfinder*) printf '%s' "${!var}/${rel#*/}" ;;
  esac
  return 0
}

# --------------------------------------------------------------------------- checksums (on the staged files)

bad=0
checked=()
if [[ -f $CHECKSUMS ]]; then
  lineno=0
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}  # a file written on Windows
    read -r expected rel _ <<< "$line"
    [[ -z ${expected:-} || $expected == \#* ]] && continue
    expected=${expected,,}  # sha256sum -c accepts upper-case digits too
    rel=${rel#\*}; rel=${rel#./}
    if [[ ! $expected =~ ^[0-9a-f]{64}$ || -z $rel ]]; then
      echo "checksum file $CHECKSUMS line $lineno: not '<sha256>  <path>': $line" >&2
      bad=1
      continue
    fi
    src=$(staged_path "$rel")
    if [[ -z $src ]]; then
      case " $TASKS " in
        *" ${rel%%/*} "*)  # a selected task, but not a file this script lays out
          echo "checksum file $CHECKSUMS line $lineno: $rel is not a file this script lays out" >&2
          bad=1 ;;
      esac
      continue  # otherwise a task that was not selected
    fi
    if [[ ! -f $src ]]; then
      echo "checksum: $rel is listed in $CHECKSUMS but is not in the archive" >&2
      bad=1
      continue
    fi
    found=$(sha256_of "$src")
    if [[ $found != "$expected" ]]; then
      printf 'checksum mismatch: %s\n  expected %s\n  found    %s\n' "$rel" "$expected" "$found" >&2
      bad=1
    else
      checked+=("$rel")
    fi
  done < "$CHECKSUMS"
else
  echo "checksum file $CHECKSUMS not found: no file is checked"
fi
[[ $bad == 0 ]] || die "checksum verification failed ($CHECKSUMS); nothing was laid out"

is_checked() { local c; for c in ${checked[@]+"${checked[@]}"}; do [[ $c == "$1" ]] && return 0; done; return 1; }
count_checked() { local c n=0; for c in ${checked[@]+"${checked[@]}"}; do [[ $c == "$1"/* ]] && n=$((n + 1)); done
  echo "$n"; }

# --------------------------------------------------------------------------- layout

lay_file() {  # staged file, path relative to DATA_DIR
  mkdir -p "$(dirname "$DATA_DIR/$2")"
  mv -f -- "$1" "$DATA_DIR/$2"
  if is_checked "$2"; then echo "  $DATA_DIR/$2 (sha256 ok)"; else echo "  $DATA_DIR/$2 (unchecked: no checksum recorded)"; fi
}

echo "laying out into $DATA_DIR:"
for t in $TASKS; do
  case $t in
    listops) for s in train val test; do lay_file "$(staged_path "listops/basic_$s.tsv")" "listops/basic_$s.tsv"; done ;;
    retrieval)
      for s in train eval test; do
        lay_file "$(staged_path "retrieval/new_aan_pairs.$s.tsv")" "retrieval/new_aan_pairs.$s.tsv"
      done ;;
    pathfinder*)
      var="SRC_$t"
      mkdir -p "$DATA_DIR/$t"
      for d in "${!var}"/curv_*; do
        name=$(basename "$d")
        n=$(find "$d" -type f | wc -l | tr -d ' ')
        k=$(count_checked "$t/$name")
        if [[ -e $DATA_DIR/$t/$name ]]; then mv -- "$DATA_DIR/$t/$name" "$STAGE/old.$t.$name"; fi
        mv -- "$d" "$DATA_DIR/$t/$name"
        echo "  $DATA_DIR/$t/$name/ ($n files; $k checked, $((n - k)) unchecked: no checksum recorded)"
      done ;;
  esac
done
echo "done."
