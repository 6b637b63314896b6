#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine with no GPU and no CUDA
# toolkit: the pinned CUDA 13.0 toolkit from PyPI wheels (scripts/ci/cuda-requirements.txt), a
# CUDA_HOME-shaped folder over it, and a stub libcuda.so.1 (every driver call returns
# CUDA_ERROR_STUB_LIBRARY) so that the cuda build links and its CPU-side tests run.
#
#   bash scripts/ci/setup_cuda.sh [DIR]     # default DIR: ${XDG_CACHE_HOME:-$HOME/.cache}/unveil-cuda
#   source DIR/env.sh                    # CUDA_HOME, NVCC, PATH, CUDA_COMPUTE_CAP, LIBRARY_PATH,
#                                        # LD_LIBRARY_PATH
#   cargo build --release --no-default-features --features cuda
#
# Idempotent: a second run checks the pins and the stub's symbol list and takes seconds.
# Needs Linux x86_64, python3 (with venv, or pip) and gcc; downloads ~650 MB once
# (~1.2 GB installed). Writes only under DIR (and, if cudarc's source is not yet in cargo's
# registry, runs `cargo fetch --locked` so the stub can cover every function cudarc binds).
#
# DIR/
#   venv/ (or site/)  the wheels                  toolkit/   CUDA_HOME: bin include nvvm lib64
#   stub/             libcuda.so(.1) + its source  env.sh     the exports
#
# After the toolkit changes (new pins), rebuild candle's kernels, whose PTX cargo does not
# rebuild by itself: cargo clean --release -p candle-kernels -p cudarc (scripts/ci/ci_cuda.sh
# does this when UNVEIL_CUDA_TOOLKIT_ID changes).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REQ="$REPO/scripts/ci/cuda-requirements.txt"
DIR="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil-cuda}"

die() {
    echo "setup_cuda.sh: error: $*" >&2
    exit 1
}
say() { echo "setup_cuda.sh: $*"; }
trap 'echo "setup_cuda.sh: error: line $LINENO failed: $BASH_COMMAND" >&2' ERR
t0=$SECONDS

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] ||
    die "only Linux x86_64 is supported (the pinned wheels are x86_64 builds); got $(uname -sm)"
[ -f "$REQ" ] || die "missing $REQ"
command -v gcc >/dev/null ||
    die "gcc not found: it builds the stub libcuda.so (and nvcc needs it as host compiler). Debian/Ubuntu: apt-get install gcc g++"
command -v g++ >/dev/null ||
    die "g++ not found: nvcc needs a C++ host compiler to build candle's kernels. Debian/Ubuntu: apt-get install g++"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
req_id="$(grep -v '^\s*#' "$REQ" | sha256sum | cut -c1-16)"

# --- 1. the wheels ------------------------------------------------------------------------
# The stamp holds the pins' hash and where they went (a venv, or a --target folder).
stamp="$DIR/.wheels"
site=""
if [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$req_id" ]; then
    site="$(sed -n 2p "$stamp")"
fi
if [ -n "$site" ] && [ -x "$site/nvidia/cu13/bin/nvcc" ]; then
    say "wheels: already installed ($site)"
else
    command -v python3 >/dev/null ||
        die "python3 not found: needed to install the CUDA wheels from PyPI. Debian/Ubuntu: apt-get install python3 python3-venv"
    rm -rf "$DIR/venv" "$DIR/site" "$stamp"
    t=$SECONDS
    target=()
    if python3 -m venv "$DIR/venv" >"$DIR/venv.log" 2>&1 && [ -x "$DIR/venv/bin/python" ]; then
        pip=("$DIR/venv/bin/python" -m pip)
        site="$("$DIR/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"
    elif python3 -m pip --version >/dev/null 2>&1; then
        say "python3 -m venv failed ($(tail -n1 "$DIR/venv.log")); using pip install --target"
        rm -rf "$DIR/venv"
        pip=(python3 -m pip)
        site="$DIR/site"
        target=(--target "$site")
    else
        rm -rf "$DIR/venv"
        die "python3 has neither a working venv nor pip ($(tail -n1 "$DIR/venv.log")). Debian/Ubuntu: apt-get install python3-venv (or python3-pip)"
    fi
    rm -f "$DIR/venv.log"
    say "wheels: installing the pinned CUDA 13.0 wheels (~650 MB download) into $site"
    # --no-deps + --require-hashes: exactly the files pinned in cuda-requirements.txt.
    PIP_ROOT_USER_ACTION=ignore "${pip[@]}" install --disable-pip-version-check --no-cache-dir --quiet \
        --no-deps --require-hashes --only-binary=:all: "${target[@]}" -r "$REQ" ||
        die "pip install of $REQ failed (network? PyPI must be reachable)"
    [ -x "$site/nvidia/cu13/bin/nvcc" ] || die "the wheels installed, but $site/nvidia/cu13/bin/nvcc is missing"
    printf '%s\n%s\n' "$req_id" "$site" >"$stamp"
    say "wheels: installed in $((SECONDS - t)) s ($(du -sh "$site/nvidia" | cut -f1))"
fi
CU="$site/nvidia/cu13"

# --- 2. the toolkit folder (CUDA_HOME) ------------------------------------------------------
TK="$DIR/toolkit"
mkdir -p "$TK/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU/$d" "$TK/$d"; done
for f in "$CU"/lib/*; do ln -sfn "$f" "$TK/lib64/$(basename "$f")"; done
# The unversioned names the linker looks for (-lcudart ...), as a toolkit's lib64 has them.
for lib in cudart cublas cublasLt nvrtc curand; do
    so="$(cd "$CU/lib" && ls "lib$lib.so."* 2>/dev/null | grep -E "^lib$lib\.so\.[0-9]+$" | head -n1)" ||
        true
    [ -n "$so" ] || die "no lib$lib.so.N in $CU/lib"
    ln -sfn "$so" "$TK/lib64/lib$lib.so"
done
ln -sfn "$DIR/stub/libcuda.so" "$TK/lib64/stubs/libcuda.so" # where toolkits keep theirs
ver="$("$TK/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
[ "$ver" = 13.0 ] || die "expected nvcc release 13.0, got '$ver' from $TK/bin/nvcc"

# --- 3. the stub libcuda.so.1 ---------------------------------------------------------------
# One function per driver entry point: those cuda.h 13.0 declares (after its macros, so the
# _v2.. names the driver exports) and every one cudarc's bindings name, whatever CUDA version
# its build picks. All return CUDA_ERROR_STUB_LIBRARY (34), as NVIDIA's own stub does, except
# cuGetErrorName/cuGetErrorString, which answer so that errors read well.
STUB="$DIR/stub"
mkdir -p "$STUB"
names="$(mktemp)"
trap 'rm -f "$names" "$names.c"' EXIT
echo '#include <cuda.h>' | gcc -E -P -I"$TK/include" -x c - |
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' >"$names"
cudarc_ver="$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO/Cargo.lock")"
bindings=""
if [ -n "$cudarc_ver" ]; then
    find_bindings() {
        local f
        for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_ver/src/driver/sys/mod.rs"; do
            if [ -f "$f" ]; then
                echo "$f"
                return 0
            fi
        done
        return 0
    }
    bindings="$(find_bindings)"
    if [ -z "$bindings" ] && command -v cargo >/dev/null; then
        say "stub: fetching crates (cudarc $cudarc_ver's source lists the driver functions it binds)"
        (cd "$REPO" && cargo fetch --locked --quiet) || say "warning: cargo fetch failed"
        bindings="$(find_bindings)"
    fi
fi
if [ -n "$bindings" ]; then
    grep -oE '^[[:space:]]+fn cu[A-Za-z0-9_]+\(' "$bindings" | sed -E 's/^[[:space:]]+fn //; s/\($//' >>"$names"
else
    say "warning: cudarc's source not found; the stub covers cuda.h 13.0's functions only"
fi
{
    echo "/* Generated by scripts/ci/setup_cuda.sh: a stand-in for the NVIDIA driver's libcuda.so.1,"
    echo "   for linking and for running CPU-side tests on machines without a GPU. */"
    echo "#include <stddef.h>"
    echo "#define STUB 34 /* CUDA_ERROR_STUB_LIBRARY */"
    echo "const char unveil_cuda_stub[] = \"unveil stub libcuda.so.1\";"
    cat <<'EOF'
static int describe(int e, const char **name, const char **text) {
    switch (e) {
    case 0: *name = "CUDA_SUCCESS"; *text = "no error"; return 0;
    case 3: *name = "CUDA_ERROR_NOT_INITIALIZED"; *text = "initialization error"; return 0;
    case 34: *name = "CUDA_ERROR_STUB_LIBRARY"; *text = "CUDA driver is a stub library"; return 0;
    case 100: *name = "CUDA_ERROR_NO_DEVICE"; *text = "no CUDA-capable device is detected"; return 0;
    default: return 1; /* CUDA_ERROR_INVALID_VALUE, as the driver answers unknown codes */
    }
}
int cuGetErrorName(int e, const char **p) {
    const char *n, *t;
    if (!p) return 1;
    if (describe(e, &n, &t)) { *p = NULL; return 1; }
    *p = n;
    return 0;
}
int cuGetErrorString(int e, const char **p) {
    const char *n, *t;
    if (!p) return 1;
    if (describe(e, &n, &t)) { *p = NULL; return 1; }
    *p = t;
    return 0;
}
#define F(name) int name(void) { return STUB; }
EOF
    sort -u "$names" | grep -vxE 'cuGetErrorName|cuGetErrorString' | sed 's/.*/F(&)/'
} >"$names.c"
if [ -f "$STUB/libcuda.so.1" ] && cmp -s "$names.c" "$STUB/libcuda_stub.c"; then
    say "stub: up to date ($STUB/libcuda.so.1)"
else
    cp "$names.c" "$STUB/libcuda_stub.c"
    gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so.1.tmp" "$STUB/libcuda_stub.c" ||
        die "gcc could not build the stub $STUB/libcuda.so.1"
    mv -f "$STUB/libcuda.so.1.tmp" "$STUB/libcuda.so.1"
    ln -sfn libcuda.so.1 "$STUB/libcuda.so"
    say "stub: built $STUB/libcuda.so.1 ($(grep -c '^F(' "$STUB/libcuda_stub.c") + 2 functions)"
fi

# --- 4. env.sh ------------------------------------------------------------------------------
cat >"$DIR/env.sh.tmp" <<EOF
# Generated by scripts/ci/setup_cuda.sh: \`source $DIR/env.sh\` (bash), then
#   cargo build --release --no-default-features --features cuda
_unveil_prepend() { # VAR DIR: put DIR first in the path list VAR, once
    eval "_unveil_v=\"\\\${\$1:-}\""
    case ":\$_unveil_v:" in *":\$2:"*) ;; *) export "\$1=\$2\${_unveil_v:+:\$_unveil_v}" ;; esac
    unset _unveil_v
}
export UNVEIL_CUDA_DIR="$DIR"
# Changes with the pinned toolkit: rebuild candle-kernels' PTX (and cudarc) then.
export UNVEIL_CUDA_TOOLKIT_ID="$req_id"
export CUDA_HOME="$TK"
export NVCC="$TK/bin/nvcc"
_unveil_prepend PATH "$TK/bin"
# candle-kernels asks nvidia-smi for the GPU's compute capability; with no GPU it reads this
# (90: Hopper; PTX for it loads on sm_90 and newer only: set it for your GPU to run there).
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
# Linking: the stub libcuda.so (the driver is not part of a toolkit) and the wheels' libraries.
_unveil_prepend LIBRARY_PATH "$TK/lib64"
_unveil_prepend LIBRARY_PATH "$STUB"
# Running: the wheels' libraries, and the stub only where no real driver is installed
# (UNVEIL_CUDA_STUB=1 forces it, 0 leaves it out).
_unveil_prepend LD_LIBRARY_PATH "$TK/lib64"
if [ "\${UNVEIL_CUDA_STUB:-auto}" = 1 ] || { [ "\${UNVEIL_CUDA_STUB:-auto}" = auto ] &&
    ! { PATH="\$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; } &&
    [ ! -e /usr/lib/wsl/lib/libcuda.so.1 ]; }; then
    _unveil_prepend LD_LIBRARY_PATH "$STUB"
    export UNVEIL_CUDA_STUB_ACTIVE=1
else
    export UNVEIL_CUDA_STUB_ACTIVE=0
fi
unset -f _unveil_prepend
EOF
if cmp -s "$DIR/env.sh.tmp" "$DIR/env.sh"; then rm -f "$DIR/env.sh.tmp"; else mv -f "$DIR/env.sh.tmp" "$DIR/env.sh"; fi

say "ready in $((SECONDS - t0)) s: nvcc $ver, toolkit $TK"
echo "  source $DIR/env.sh"
echo "  cargo build --release --no-default-features --features cuda"
