#!/usr/bin/env bash
# Proves the GPU path in one run, on a machine with an NVIDIA GPU, a CUDA PyTorch 2.x (its libtorch
# and cmake config), nvcc, cmake and ninja, and no network. Run from the repository root:
#   tools/gpu-check.sh            # the GPU machine (needs gpu-deps/ from tools/gpu-fetch-deps.sh)
#   tools/gpu-check.sh --cpu      # dry run of the same steps on the CPU machine: against the torch2
#                                 # build's CUDA wheel (.venv-torch2) when present, else Debian's libtorch
#   NNX_GPU_BINARIES=build tools/gpu-check.sh --cpu   # ... configuring only, then build/'s binaries
# Steps: extract the carried Debian packages into a prefix; configure and build with all cores;
# run tests/cuda (cuda_tests); train the Fashion-MNIST CNN on cuda for 300 steps with saves, a
# SIGKILL at step 150 and a resume, and compare with an uninterrupted run; run nnx-bench's GPU
# rows (training against a PyTorch eager loop, MFU; checkpoints); data parallel: 2 ranks on the one GPU over NCCL (SIGKILL of rank 1, nnx-launch's
# restart, bit-exact; restores at world size 1 on the GPU and the CPU; the same with ZeRO-1; 2 ranks
# over Gloo with CUDA tensors). Logs go to $OUT (or build-gpu/out); a summary table is printed last. Exits
# non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mode=gpu
[[ "${1:-}" == "--cpu" ]] && mode=cpu
carry=${NNX_GPU_DEPS:-$root/gpu-deps}
out=${OUT:-$root/build-gpu/out}
build=${NNX_GPU_BUILD:-$root/build-gpu}
prefix=${NNX_GPU_PREFIX:-/tmp/nnx-gpu-deps}  # outside the build tree (CMake refuses include paths in it)
mkdir -p "$out" "$build"
t0=$(date +%s)
names=(); verdicts=(); notes=(); secs=()
failed=0

summary() {
  if [[ -f "$out/bench.md" ]]; then echo; echo "== nnx-bench rows =="; grep -E "^\|" "$out/bench.md"; fi
  echo
  echo "== tools/gpu-check.sh summary ($mode, $(( $(date +%s) - t0 )) s) =="
  printf '| %-34s | %-6s | %6s | %s\n' step result s note
  printf '|%s|%s|%s|%s\n' "------------------------------------" "--------" "--------" "------"
  for i in "${!names[@]}"; do
    printf '| %-34s | %-6s | %6s | %s\n' "${names[$i]}" "${verdicts[$i]}" "${secs[$i]}" "${notes[$i]}"
  done
}
trap 'summary | tee "$out/summary.txt"' EXIT

# step NAME COMMAND...: runs the command with its output in $out/NAME.log and records ok or FAIL,
# with the `note` the command may set.
step() {
  local name=$1; shift
  local s=$(date +%s)
  echo ">> $name" >&2
  if "$@" >"$out/$name.log" 2>&1; then
    verdicts+=(ok)
  else
    verdicts+=(FAIL); failed=1
    tail -n 25 "$out/$name.log" >&2
  fi
  names+=("$name"); secs+=($(( $(date +%s) - s ))); notes+=("${note:-}"); note=
}

env_report() {
  echo "date: $(date -u)"; uname -a; nproc; free -g | head -2; df -h "$build" | tail -1
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  g++ --version | head -1; cmake --version | head -1; ninja --version; command -v nvcc && nvcc --version | tail -1
  command -v dpkg-deb || echo "no dpkg-deb (ar + tar are used)"
  command -v pkg-config || echo "no pkg-config"
  python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), torch.utils.cmake_prefix_path)' || true
  python3 -c 'import torch,os;d=os.path.join(os.path.dirname(torch.__file__),"include");print("gloo headers in torch:", os.path.isdir(os.path.join(d,"gloo")))' || true
}

# extract_deb FILE DEST: a package's files under DEST (dpkg-deb, or ar and tar without it).
extract_deb() {
  if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"
  else (t=$(mktemp -d); cd "$t" && ar x "$1" && tar -xf data.tar.* -C "$2"; rm -rf "$t"); fi
}

extract_debs() {
  rm -rf "$prefix"; mkdir -p "$prefix"
  for d in "$carry"/debs/*.deb; do extract_deb "$d" "$prefix"; done
  # Runtime libraries HDF5 needs (libcurl, libssl and theirs), linked in only where the machine lacks them.
  local fb=$prefix-fallback; rm -rf "$fb" "$prefix/missing"; mkdir -p "$fb" "$prefix/missing"
  for d in "$carry"/fallback-debs/*.deb; do extract_deb "$d" "$fb"; done
  export LD_LIBRARY_PATH="$libdirs"
  for pass in 1 2 3; do
    for so in $(ldd "$prefix"/usr/lib/x86_64-linux-gnu/hdf5/serial/libhdf5.so "$prefix"/missing/* 2>/dev/null | awk '/not found/{print $1}' | sort -u); do
      src=$(find "$fb" -name "$so" | head -1)
      [[ -n "$src" ]] && ln -sf "$(readlink -f "$src")" "$prefix/missing/$so" && echo "fallback: $so"
    done
  done
  ldd "$prefix"/usr/lib/x86_64-linux-gnu/hdf5/serial/libhdf5.so | grep "not found" && return 1
  echo "extracted $(ls "$carry"/debs | wc -l) packages into $prefix"
}

# The Torch package root (above torch.utils.cmake_prefix_path), first on CMAKE_PREFIX_PATH as in the
# torch2 preset: the GPU machine's PyTorch there; in the dry run the torch2 build's PyPI wheel when
# tools/setup-torch2.sh made it (the same CUDA-on configuration), else Debian's libtorch.
torch_root() {
  local py=python3
  [[ $mode == cpu ]] && { [[ -x $root/.venv-torch2/bin/python ]] || return 0; py=$root/.venv-torch2/bin/python; }
  "$py" -c 'import os, torch.utils; print(os.path.dirname(os.path.dirname(torch.utils.cmake_prefix_path)))'
}

configure() {
  local torch; torch=$(torch_root) || return 1
  local p=$prefix/usr l=$prefix/usr/lib/x86_64-linux-gnu
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNNX_USE_CCACHE=OFF \
    -DCMAKE_PREFIX_PATH="${torch:+$torch;}$p" -DTORCH_CUDA_ARCH_LIST=9.0 -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON \
    -DHDF5_C_COMPILER_EXECUTABLE=/nonexistent -DHDF5_C_INCLUDE_DIR="$p/include/hdf5/serial" \
    -DHDF5_C_LIBRARY_hdf5="$l/hdf5/serial/libhdf5.so" -DCMAKE_CXX_FLAGS="-isystem $p/include" || return 1
  note="torch: ${torch:-Debian libtorch}"
  if [[ -n $torch ]]; then grep -q "NNX_WITH_CUDA=1" "$build/build.ninja" || { echo "the Torch found has no CUDA"; return 1; }; fi
}

# What the GPU checks need first; the rest of the project (every test binary) after them.
compile() { cmake --build "$build" -j "$(nproc)" --target cuda_tests nnx-train nnx-ckpt nnx-bench -- -k 0; }
compile_rest() { cmake --build "$build" -j "$(nproc)" -- -k 0; }

cuda_tests() {
  "$build/tests/cuda_tests" | tee "$out/cuda_tests.txt"
  local rc=${PIPESTATUS[0]}
  note="$(grep -E '^\[  (PASSED|FAILED)  \]|^\[  SKIPPED \] [0-9]+ test' "$out/cuda_tests.txt" | tr -s ' ' | tr '\n' ' ')"
  [[ $rc -eq 0 ]] || return 1
  # On the GPU machine a skipped test is a failure: nothing may pass by not running.
  [[ $mode == cpu ]] || ! grep -q "^\[  SKIPPED \]" "$out/cuda_tests.txt"
}

# A few CPU suites of the same build: the CUDA libtorch 2.x build keeps the CPU behaviour.
cpu_suites() {
  local f=$build/tests
  local rc=0
  "$f/framework_tests" --gtest_brief=1 || rc=1
  "$f/optim_tests" --gtest_brief=1 || rc=1
  "$f/checkpoint_tests" --gtest_brief=1 --gtest_filter='-*Sigkill*:*Fuzz*' || rc=1
  return $rc
}

train_cfg() {  # run dir, extra args
  local dir=$1; shift
  local dev=cuda; [[ $mode == cpu ]] && dev=cpu
  "$build/bin/nnx-train" --config "$root/configs/fashion_mnist_cnn.yaml" "run.dir=$dir" "device=$dev" \
    "data.root=$carry/fashion-mnist" train.max_steps=300 train.log_every=50 checkpoint.save_interval_steps=50 \
    eval.every_steps=0 eval.max_batches=2 threads=4 "$@"
}

train_resume() {
  local a=$build/run-a b=$build/run-b
  rm -rf "$a" "$b"
  train_cfg "$a" || return 1
  train_cfg "$b" --crash-after-step 150; local rc=$?
  [[ $rc -eq 137 ]] || { echo "expected SIGKILL (137) at step 150, got $rc"; return 1; }
  "$build/bin/nnx-ckpt" list "$b"
  train_cfg "$b" | tee "$out/resume.txt" || return 1
  grep -q "resumed from step" "$out/resume.txt" || { echo "the second run did not resume"; return 1; }
  "$build/bin/nnx-ckpt" diff "$a" "$b" | tee "$out/diff.txt"
  if grep -q "differs" "$out/diff.txt"; then note="resume NOT bit-exact (see diff.txt)"; return 1; fi
  note="SIGKILL after step 150, $(grep -o "resumed from step [0-9]*" "$out/resume.txt"): bit-exact at step 300"
}

# --- Data parallel: 2 ranks on the one GPU over NCCL (the dry run: the same steps on Gloo and the CPU,
# with NNX_GPU_CHECK_DP_STEPS fewer steps). Fashion-MNIST CNN, cuDNN deterministic (the config's).
dp_steps=${NNX_GPU_CHECK_DP_STEPS:-300}
dp_every=$(( dp_steps / 6 ))
dp_crash=$(( 3 * dp_every ))  # a (sync) save step: the restarted ranks resume there, past the crash flag
dp_dev=cuda dp_backend=nccl
[[ $mode == cpu ]] && dp_dev=cpu dp_backend=gloo

# Two ranks on one GPU: NCCL >= 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1; an older NCCL runs them as
# two hosts, a distinct NCCL_HOSTID per rank (socket transport; rank.sh sets it).
nccl_setup() {
  write_rank_sh
  if [[ $mode == cpu ]]; then note="dry run: Gloo on the CPU"; return 0; fi
  local v; v=$(python3 -c 'import torch; print(".".join(map(str, torch.cuda.nccl.version())))') || return 1
  if [[ "$(printf '%s\n2.30.0\n' "$v" | sort -V | head -1)" == 2.30.0 ]]; then
    export NCCL_MULTI_RANK_GPU_ENABLE=1; note="NCCL $v: NCCL_MULTI_RANK_GPU_ENABLE=1"
  else
    export NNX_NCCL_HOSTID_PER_RANK=1; note="NCCL $v (< 2.30): NCCL_HOSTID per rank"
  fi
  nccl_note=$note
}
write_rank_sh() {
  cat > "$build/rank.sh" <<'SH'
#!/usr/bin/env bash
# One rank under nnx-launch; a host id of its own where NCCL cannot put two ranks on one GPU.
[[ -n "${NNX_NCCL_HOSTID_PER_RANK:-}" ]] && export NCCL_HOSTID="gpu-check-rank-$RANK"
exec "$@"
SH
  chmod +x "$build/rank.sh"
}

dp_args() {  # run dir, device, backend, zero stage -> the array args
  args=(--config "$root/configs/fashion_mnist_cnn.yaml" "run.dir=$1" "device=$2" "distributed.backend=$3"
        "distributed.zero_stage=$4" "data.root=$carry/fashion-mnist" "train.max_steps=$dp_steps" train.log_every=50
        "checkpoint.save_interval_steps=$dp_every" checkpoint.async=false eval.every_steps=0 eval.max_batches=2 threads=4)
}
launch2() {  # max restarts, nnx-train args...
  local restarts=$1; shift
  "$build/bin/nnx-launch" --nproc 2 --max-restarts "$restarts" -- "$build/rank.sh" "$build/bin/nnx-train" "$@"
}
seconds_of() { grep -o "done: step [0-9]* ([0-9]* this run, [0-9]* skipped) in [0-9.]*s" "$1" | grep -o "[0-9.]*s$" | tail -1; }

dp_resume() {  # zero stage: uninterrupted against SIGKILL of rank 1 and nnx-launch's restart
  local z=$1 a=$build/dp$1-a b=$build/dp$1-b
  rm -rf "$a" "$b"
  dp_args "$a" "$dp_dev" "$dp_backend" "$z"
  launch2 0 "${args[@]}" | tee "$out/dp$z-a.txt"; [[ ${PIPESTATUS[0]} -eq 0 ]] || return 1
  dp_args "$b" "$dp_dev" "$dp_backend" "$z"
  launch2 1 "${args[@]}" --crash-after-step "$dp_crash" --crash-rank 1 | tee "$out/dp$z-b.txt"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || return 1
  local resumed; resumed=$(grep -o "rank 0\] nnx-train: resumed from step [0-9]*" "$out/dp$z-b.txt" | grep -o "[0-9]*$" | head -1)
  [[ -n $resumed ]] || { echo "the restarted ranks did not resume"; return 1; }
  "$build/bin/nnx-ckpt" diff "$a" "$b" | tee "$out/dp$z-diff.txt"
  if grep -q "differs" "$out/dp$z-diff.txt"; then note="2 ranks, resume NOT bit-exact"; return 1; fi
  note="2 ranks on $dp_backend: rank 1 SIGKILLed after step $dp_crash, resumed from $resumed: bit-exact at $dp_steps ($(seconds_of "$out/dp$z-a.txt") for $dp_steps steps)"
}

# The 2-rank step restored at world size 1 on DEVICE, then one step at learning_rate 0: the params
# it saves are the restored ones, bitwise equal to the saved global arrays (nnx-ckpt diff).
dp_restore_ws1() {  # zero stage, device
  local src=$build/dp$1-b c=$build/dp$1-ws1-$2 next=$(( dp_steps + 1 ))
  [[ -d "$src/checkpoints/$dp_steps" ]] || { echo "no step $dp_steps in $src: its 2-rank run failed"; return 1; }
  rm -rf "$c"; cp -r "$src" "$c"
  dp_args "$c" "$2" auto 0
  "$build/bin/nnx-train" "${args[@]}" "train.max_steps=$next" optimizer.learning_rate=0 | tee "$out/ws1-$1-$2.txt"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || return 1
  grep -q "resumed from step $dp_steps" "$out/ws1-$1-$2.txt" || { echo "did not resume from step $dp_steps"; return 1; }
  "$build/bin/nnx-ckpt" diff "$c/checkpoints/$dp_steps" "$c/checkpoints/$next" | tee "$out/ws1-$1-$2-diff.txt"
  if grep -q "^differs: params/" "$out/ws1-$1-$2-diff.txt"; then note="restored params differ from the saved ones"; return 1; fi
  grep -q "^differs: optimizer/step" "$out/ws1-$1-$2-diff.txt" || { echo "no step ran after the restore"; return 1; }
  note="zero_stage $1 checkpoint of 2 ranks restored at world size 1 on $2: params bitwise equal to the saved ones"
}

# 2 ranks over Gloo with CUDA tensors: the same run as dp0-a on another backend (a sum of two
# values does not depend on the backend, so the checkpoints should be equal bitwise).
dp_gloo_cuda() {
  local g=$build/dp-gloo-cuda
  rm -rf "$g"
  dp_args "$g" "$dp_dev" gloo 0
  launch2 0 "${args[@]}" | tee "$out/dp-gloo.txt"; [[ ${PIPESTATUS[0]} -eq 0 ]] || return 1
  local same="bitwise equal to the NCCL run"
  "$build/bin/nnx-ckpt" diff "$build/dp0-a" "$g" > "$out/dp-gloo-diff.txt"
  grep -q differs "$out/dp-gloo-diff.txt" && same="differs from the NCCL run (dp-gloo-diff.txt)"
  note="2 ranks on Gloo, device $dp_dev: $same; $(seconds_of "$out/dp-gloo.txt") for $dp_steps steps"
}

# Step time of 2 ranks sharing the GPU against 1 rank (reported only: the ranks share its compute).
dp_step_time() {
  local one two
  # train_sigkill_resume.log: its first run is the uninterrupted one (300 steps, 1 rank).
  one=$(grep -o "done: step 300 (300 this run, [0-9]* skipped) in [0-9.]*s" "$out/train_sigkill_resume.log" | head -1 | grep -o "[0-9.]*s$")
  two=$(seconds_of "$out/dp0-a.txt")
  note="1 rank: ${one:-?} for 300 steps; 2 ranks sharing the device: ${two:-?} for $dp_steps steps (the same global batch, split between them)"
}

bench() {
  local only=(gpu)
  # The dry run: the checkpoint rows, and the GPU training rows small on the CPU.
  [[ $mode == cpu ]] && only=(checkpoint gpu) && export NNX_BENCH_GPU_DEVICE=cpu NNX_BENCH_PYTHON=/usr/bin/python3
  rm -rf "$build/bench"
  NNX_BENCH_MNIST="$carry/fashion-mnist" "$build/bin/nnx-bench" --only "${only[@]}" --reps 3 --dir "$build/bench" | tee "$out/bench.md"
  local rc=${PIPESTATUS[0]}
  rm -rf "$build/bench"
  return "$rc"
}

note="" ; step environment env_report
libdirs="$prefix/usr/lib/x86_64-linux-gnu:$prefix/usr/lib/x86_64-linux-gnu/hdf5/serial:$prefix/missing${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ ! -d "$carry/debs" ]]; then
  names+=(extract); verdicts+=(FAIL); secs+=(0); notes+=("no $carry/debs: run tools/gpu-fetch-deps.sh on the CPU machine"); exit 1
fi
step extract extract_debs
export LD_LIBRARY_PATH="$libdirs"
# torch 2.11's libtorch.so exports std::filesystem functions whose remove_all jumps to address 0;
# the build lists libstdc++ first (CMakeLists.txt), and libstdc++ is preloaded here as well so that
# the checks below run where a linker ignored that order (link_order records what the build did).
[[ $mode == gpu ]] && export LD_PRELOAD="$(g++ -print-file-name=libstdc++.so.6)"
if [[ -n "${NNX_GPU_BINARIES:-}" ]]; then  # dry runs: binaries of an existing build
  step configure configure
  build=$(cd "$NNX_GPU_BINARIES" && pwd)
else
  step configure configure
  [[ ${verdicts[-1]} == ok ]] || exit 1  # nothing below can run without a build
  step build compile
fi
link_order() { readelf -d "$build/bin/nnx-train" | grep NEEDED | head -3; note="first NEEDED: $(readelf -d "$build/bin/nnx-train" | grep -m1 NEEDED | grep -o '\[.*\]')"; }
step link_order link_order
step cuda_tests cuda_tests
step train_sigkill_resume train_resume
step bench_gpu_checkpoint bench
nccl_note=""
step dp_setup nccl_setup
step dp_nccl_sigkill_resume dp_resume 0
step dp_restore_ws1_gpu dp_restore_ws1 0 "$dp_dev"
step dp_restore_ws1_cpu dp_restore_ws1 0 cpu
step dp_zero1_sigkill_resume dp_resume 1
step dp_zero1_restore_ws1 dp_restore_ws1 1 "$dp_dev"
[[ $mode == gpu ]] && step dp_gloo_cuda_tensors dp_gloo_cuda
step dp_step_time dp_step_time
# The whole project and three CPU suites under this libtorch, while the 8-minute budget lasts.
if [[ -z "${NNX_GPU_BINARIES:-}" ]]; then
  if (( $(date +%s) - t0 < 300 )); then step build_all compile_rest; else names+=(build_all); verdicts+=(skipped); secs+=(0); notes+=("over the time budget"); fi
fi
if (( $(date +%s) - t0 < 400 )); then step cpu_suites cpu_suites; else names+=(cpu_suites); verdicts+=(skipped); secs+=(0); notes+=("over the time budget"); fi
exit $failed
