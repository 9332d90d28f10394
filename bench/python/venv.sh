# bench/python/venv.sh: sourced by the bench setup scripts. make_venv DIR REQS...
# creates (or reuses) the virtual environment DIR under the repository root and installs the
# pinned requirements REQS into it. A stamp file holding the requirement list makes a second run
# a no-op; a changed list reinstalls into the same venv. Needs python3 >= 3.10 with venv and pip.
make_venv() {
    local dir=$1
    shift
    local want stamp
    want=$(printf '%s\n' "$@")
    stamp=$dir/.bench-requirements
    if [[ -x $dir/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        echo "bench setup: $dir is up to date" >&2
        return 0
    fi
    [[ -x $dir/bin/python ]] || python3 -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    "$dir/bin/python" -m pip install --quiet "$@"
    printf '%s\n' "$want" > "$stamp"
    echo "bench setup: installed into $dir:" >&2
    "$dir/bin/python" -m pip freeze | sed 's/^/  /' >&2
}
