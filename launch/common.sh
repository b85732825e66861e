# Shared by launch/pipeline.sh and slurm/pipeline.sh (sourced, not run), so that both read paths, pick the Python and
# check the stage list the same way. Expects CALLER (the directory the command was run from), ROOT (the repository) and
# ME (the script's name, for messages); sets PY (resolve_python).

die() { echo "$ME: $*" >&2; exit 2; }

# A command on one line, shell-quoted: a printed command can be pasted as it is, even with spaces or commas in a path.
quote() { local q; printf -v q '%q ' "$@"; printf '%s\n' "${q% }"; }

# The pipelines cd to the repository, so a path the user gave is made absolute first, against the directory the
# command was run from: `--output-dir out` is ./out there, not <repo>/out. A trailing slash is dropped (out/ = out).
caller_path() {
  local p=$1
  case "$p" in /*) ;; *) p=$CALLER/${p#./} ;; esac
  while [ "$p" != / ] && [ "${p%/}" != "$p" ]; do p=${p%/}; done
  printf '%s\n' "$p"
}

# A file the repository ships (a config, an accelerate config): the caller's file when there is one, else the
# repository's, so `--config launch/configs/tiny.yaml` works from any directory. Neither: the caller's path, so that the
# error names what the user meant.
shipped_path() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) if [ ! -e "$CALLER/$1" ] && [ -e "$ROOT/$1" ]; then printf '%s\n' "$ROOT/${1#./}"; else caller_path "$1"; fi ;;
  esac
}

# The one interpreter every step runs with, as an absolute path (sys.executable): $PYTHON, else python3 on PATH. A Slurm
# job gets it by name, so it runs the Python that submitted it whatever PATH the compute node gives it (a job's python3
# without the activated environment would lack our packages).
resolve_python() {
  local missing
  PY=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)') \
    || die "cannot run ${PYTHON:-python3}: set PYTHON to the interpreter where ToolGen is installed"
  missing=$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("yaml", "torch", "accelerate", "transformers", "peft") if u.find_spec(m) is None))')
  [ -z "$missing" ] || die "$PY has no $missing: activate the environment where ToolGen is installed, or set PYTHON"
}

# The config must load (toolgen/config.py prints the file and the key when it does not), before anything starts.
check_config() { "$PY" -m toolgen.config check "$1" || die "bad config $1: nothing started"; }

# check_stages OUTPUT_DIR EXTRA_WORDS STAGE...: each stage is one of the table in toolgen/config.py (the chain or a
# stage run on demand, `stages --all`; or one of the
# EXTRA_WORDS, e.g. eval), and each training stage's parent is earlier in the list or already complete in OUTPUT_DIR.
# Checked before the first step, so that a typo or a missing stage 1 fails now rather than after earlier stages ran.
check_stages() {
  local out=$1 extra=" $2 " names stage parent folder before=" "
  shift 2
  [ $# -gt 0 ] || die "--stages is empty"
  names=" $("$PY" -m toolgen.config stages --all)$extra"
  for stage in "$@"; do
    [ -n "$stage" ] || die "an empty name in --stages; nothing started"
    [[ "$names" == *" $stage "* ]] || die "unknown stage '$stage' in --stages (known:${names% }); nothing started"
    if [[ "$extra" == *" $stage "* ]]; then continue; fi
    parent=$("$PY" -m toolgen.config parent "$stage")
    if [ -n "$parent" ] && [[ "$before" != *" $parent "* ]]; then
      folder=$("$PY" -m toolgen.config folder "$parent")
      [ -f "$out/$folder/stage.json" ] || die "stage $stage starts from stage $parent, but $out/$folder is missing or" \
        "incomplete (no stage.json): add $parent to --stages or run it first; nothing started"
    fi
    before+="$stage "
  done
}
