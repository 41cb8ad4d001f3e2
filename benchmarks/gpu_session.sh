# The measurements still owed on the GPU, as parts of at most ~9 minutes each. Run on the GPU
# machine after the two carry calls of ../shared/DEVICE.md (call 2 carries .carry/b, plus
# .carry/export/whl for compressed-tensors, loguru and psutil):
#
#   RQ_COMMIT=$(sha) bash benchmarks/gpu_session.sh PART [PART ...]   # PART: check speed export seeds learned
#
# (RQ_COMMIT: the commit the working tree holds; the machine's copy of .git may be older.)
#
# Everything a part writes goes to /root/rq/out/PART/ and is packed into ONE file,
# $OUT/PART.tgz: the device returns at most 8 files from $OUT (a run that wrote more lost its
# seed results on 2026-12-03). Each step has its own timeout, so a slow step costs only itself.
#   check    GPU kernel tests (GPTQ/W4A16/int8/fake-quant kernels vs their torch references)
#   checkpar check + the w4tc GPU tests + the quantizer tests with ieee division, four concurrent processes (one ~8-minute call)
#   speed    pipeline_bench eval + learn with op profiles, and the 7B-layer GPTQ section
#   export   export_bench: the LLaMA-7B layer's linears, the 7B-shaped model, SmolLM2
#   seeds    seed_sweep default vs noclip (3 seeds), the llm-compressor parity rows
#   parity   the llm-compressor parity rows alone, one concurrent process per row
#   learned  seed_sweep default-learned, the three seeds as concurrent processes (kl: kl-learned);
#            RQ_SWEEP_ARGS adds seed_sweep flags (e.g. "--learn-lr 4 --steps 150")
#   zs       zero-shot table of the learned rotation file $RQ_ROTATION
#   proflearn  op profile of 4 learning steps, then 12 steps timed without the profiler
#   hadamard hadamard_bench (rows x n grid vs copy, dense, fast-hadamard-transform built from ../shared/bench)
#   fsdp     optimize on 1 GPU vs torchrun on 2 GPUs with --fsdp (needs a 2-GPU machine)
#   recheck  the GPTQ/int8/W4A16/fake-quant/Hadamard kernel tests, then .carry/gpu/debug.py if carried
#   int8     the int8mm kernel and QuantLinear GPU tests alone
#   layer    pipeline_bench's 7B-layer GPTQ section;  linears: export_bench's linears part only
#   tests    the clip-search, W4A16, int8mm, QuantLinear and CUDA-graph perplexity GPU tests
#   evallearn  pipeline_bench eval (graphed and eager) + learn sections, no profile
#   ncuw4    ncu --set full on one W4A16 decode kernel;  hostpath: host time per Hadamard call, layer by layer
#   hadfold  Hadamard grid rows 2048/16384 with 0-3 Sylvester bits folded into the core (tuning sweep)
#   newtests the GPU tests of stop 21's code that has not run on a GPU yet
#   fusedsweep  tile/warp sweep of the fused Hadamard + quantizer and fake-quant kernels
#   fusedeval   the evaluation with fusedsweep's fastest settings
#   fmadiv   GPU tests and sweep of the quantizers' IEEE division (ROTAQUANT_QUANT_DIV=ieee) vs the default fma
#   w4tc     GPU tests and tile sweep of the W4A16 decode kernel's tc mode
#   evalnext the evaluation after the in-graph mask fix; evaluation and learning with SDPA's cuDNN backend off
#   ncuhad   ncu --set full on the Hadamard kernel at 16384 x 1536
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
source benchmarks/device_setup.sh
for whl in .carry/export/whl/*.whl; do
  [ -f "$whl" ] && [ ! -f /tmp/site/.rq-export ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site \
    .carry/export/whl/*.whl && touch /tmp/site/.rq-export
  break
done
export RQ_COMMIT=${RQ_COMMIT:-}
t0=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to the part's folder
  local name=$1 secs=$2; shift 2
  timeout -s INT -k 20 "$secs" "$@" > "$dir/$name.log" 2>&1
  echo "$name rc=$? at $(( $(date +%s) - t0 )) s"
  grep -v "Loading weights\|Converting\|it/s\]" "$dir/$name.log" | tail -15 | cut -c1-300
}
for part in "$@"; do
  dir=/root/rq/out/$part
  mkdir -p "$dir"
  case $part in
    check)  # two steps of ~4.5 minutes (one 240 s step no longer reached the end, stop 22)
      step kernels 270 python3 -m pytest -m gpu tests/kernels --ignore=tests/kernels/test_w4a16_triton.py -k "not flex" \
        -q -rf --tb=short -p no:cacheprovider
      step w4_qlinear 270 python3 -m pytest -m gpu tests/kernels/test_w4a16_triton.py tests/quant/test_qlinear.py \
        tests/eval/test_perplexity.py -k "not flex" -q -rf --tb=short -p no:cacheprovider ;;
    checkpar)  # check + the w4tc GPU tests + the quantizer tests with IEEE division as four concurrent processes (correctness only: the
      # steps are bound by Triton's compiles on the host, so four fit in the time of one; nothing here is timed)
      step kernels 480 python3 -m pytest -m gpu tests/kernels --ignore=tests/kernels/test_w4a16_triton.py -k "not flex" \
        -q -rf --tb=short -p no:cacheprovider > "$dir/kernels.sum" &
      step w4_qlinear 480 python3 -m pytest -m gpu tests/quant/test_qlinear.py tests/eval/test_perplexity.py \
        -k "not flex" -q -rf --tb=short -p no:cacheprovider > "$dir/w4_qlinear.sum" &
      step w4tc_tests 480 python3 -m pytest -m gpu tests/kernels/test_w4a16_triton.py -q -rf --tb=short \
        -p no:cacheprovider > "$dir/w4tc_tests.sum" &
      ROTAQUANT_QUANT_DIV=ieee step ieee_tests 480 python3 -m pytest -m gpu tests/kernels/test_fake_quant_triton.py \
        tests/kernels/test_hadamard_triton.py tests/kernels/test_int8_linear.py -k "quant or fused or int8" -q -rf \
        --tb=short -p no:cacheprovider > "$dir/ieee_tests.sum" &
      wait
      cat "$dir"/*.sum ;;
    speed)
      step eval_learn 200 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 3 \
        --sections eval learn --profile "$dir/profile" --json "$dir/pipeline_eval_learn.json"
      step layer 120 python3 benchmarks/pipeline_bench.py --device cuda --repeats 3 --sections layer kernel \
        --json "$dir/pipeline_layer.json" ;;
    export)
      step export 420 python3 benchmarks/export_bench.py --model "$RQ_MODEL" --json "$dir/export_bench.json" ;;
    seeds)  # the default preset with and without clipping over 3 seeds, then the llm-compressor parity rows
      step noclip 300 python3 benchmarks/seed_sweep.py --model "$RQ_MODEL" --rows default-random noclip-random \
        --out-dir "$dir" --json "$dir/noclip.json"
      step seeds 280 python3 benchmarks/seed_sweep.py --model "$RQ_MODEL" --rows \
        llmc-rtn-restricted llmc-rtn-full llmc-w4a16 llmc-w4a16-restricted --out-dir "$dir" \
        --json "$dir/seed_sweep.json" ;;
    parity)  # the llm-compressor parity rows of issue 13, one concurrent process per row (3 seeds each)
      for row in llmc-rtn-restricted llmc-rtn-full llmc-w4a16 llmc-w4a16-restricted; do
        timeout ${RQ_LEARN_TIMEOUT:-480} python3 benchmarks/seed_sweep.py --model "$RQ_MODEL" --rows $row \
          --out-dir "$dir" --json "$dir/$row.json" > "$dir/$row.log" 2>&1 &
      done
      wait
      echo "parity done at $(( $(date +%s) - t0 )) s"; tail -n 6 "$dir"/llmc-*.log | cut -c1-300 ;;
    learned|kl)  # the seeds of a learned row as concurrent processes (kl: the KL-top loss); RQ_SEEDS
      # (default "0 1 2") picks them, RQ_TAG names the files (several variants in one call)
      row=default-learned; [ "$part" = kl ] && row=kl-learned
      for s in ${RQ_SEEDS:-0 1 2}; do
        timeout ${RQ_LEARN_TIMEOUT:-480} python3 benchmarks/seed_sweep.py --model "$RQ_MODEL" --rows $row --seeds $s \
          --out-dir "$dir" --json "$dir/learned${RQ_TAG:-}_$s.json" ${RQ_SWEEP_ARGS:-} \
          > "$dir/learned${RQ_TAG:-}_$s.log" 2>&1 &
      done
      wait
      echo "$part done at $(( $(date +%s) - t0 )) s"; tail -n 4 "$dir"/learned_*.log | cut -c1-300 ;;
    zs)  # zero-shot + PPL of the learned rotation in $RQ_ROTATION (default preset, W4A4KV4)
      step zs 560 python3 benchmarks/zeroshot_table.py --model "$RQ_MODEL" --device cuda --settings w4a4kv4-learned \
        --rotation-path "$RQ_ROTATION" --json "$dir/zs_learned.json" ;;
    proflearn)  # op profile of a few learning steps, then the step time without the profiler
      step proflearn 200 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 1 \
        --sections learn --learn-steps 4 --profile "$dir/profile" --json "$dir/pipeline_learn_profiled.json"
      step learn 150 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 1 \
        --sections learn --learn-steps 12 --json "$dir/pipeline_learn.json" ;;
    recheck)  # the kernel tests touched since the last full check, and the carried debug script
      step kernels 180 python3 -m pytest -m gpu tests/kernels/test_gptq_triton.py tests/kernels/test_fake_quant_triton.py \
        tests/kernels/test_hadamard_triton.py::test_fused_quant_matches_reference_quantizer \
        tests/kernels/test_int8_linear.py tests/kernels/test_w4a16_triton.py tests/quant/test_qlinear.py \
        -k "not flex" -q -rf --tb=short -p no:cacheprovider
      [ -f .carry/gpu/debug.py ] && step debug 45 python3 .carry/gpu/debug.py ;;
    int8)  # the int8mm kernels and QuantLinear on the GPU (the fused Triton GEMM is the default since 8d5a69d)
      step kernels 240 python3 -m pytest -m gpu tests/kernels/test_int8_linear.py tests/quant/test_qlinear.py \
        -q -rf --tb=short -p no:cacheprovider ;;
    tests)  # two steps: one 420 s step did not reach test_qlinear's last tests (stop 20)
      step kernels 270 python3 -m pytest -m gpu tests/kernels/test_clip_search.py tests/kernels/test_w4a16_triton.py \
        tests/kernels/test_int8_linear.py -q -rf --tb=short -p no:cacheprovider
      step qlinear 270 python3 -m pytest -m gpu tests/quant/test_qlinear.py tests/eval/test_perplexity.py -q -rf \
        --tb=short -p no:cacheprovider ;;
    newtests)  # the GPU tests of stop 21's unmeasured code: sign flip on load, folded plans, fast path, graph default
      step newtests 280 python3 -m pytest -m gpu tests/kernels/test_hadamard_triton.py tests/kernels/test_launch_cache.py \
        tests/eval/test_perplexity.py -k "sign or folded or plan or fast or launch or graph or 14336 or 1536" \
        -q -rf --tb=short -p no:cacheprovider ;;
    evallearn)
      step evallearn 230 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 3 \
        --sections eval learn --json "$dir/pipeline_eval_learn.json" ;;
    fsdp)  # learning on 1 GPU vs 2 GPUs with FSDP2 (run on the nvidia-h200-x2 kind): 12 steps each, one seed
      step one 300 python3 -m rotaquant optimize --model "$RQ_MODEL" --iterations 12 --output "$dir/one.safetensors" \
        --json "$dir/one.json" --overwrite
      step two 300 python3 -m torch.distributed.run --nproc-per-node 2 -m rotaquant optimize --model "$RQ_MODEL" \
        --iterations 12 --fsdp --output "$dir/two.safetensors" --json "$dir/two.json" --overwrite
      step compare 60 python3 benchmarks/compare_rotations.py "$dir/one.safetensors" "$dir/two.safetensors" \
        --json "$dir/one.json" "$dir/two.json" ;;
    hadamard)  # fast-hadamard-transform built from ../shared/bench (~2 min), then the Hadamard grid
      # the source travels as .carry/fht/ (carry it; ../shared is not copied to the machine)
      src=$(ls .carry/fht/fast-hadamard-transform-1.1.0-src.tar.gz ../shared/bench/fast-hadamard-transform-1.1.0-src.tar.gz 2>/dev/null | head -1)
      if [ ! -d /tmp/fht/fast_hadamard_transform ] && [ -n "$src" ]; then
        mkdir -p /root/rq/fht && tar -xzf "$src" -C /root/rq/fht &&
        (cd /root/rq/fht/fast-hadamard-transform && FAST_HADAMARD_TRANSFORM_FORCE_BUILD=TRUE MAX_JOBS=16 \
          python3 -m pip install -q --no-build-isolation --no-deps --no-index -t /tmp/fht .) > "$dir/fht_build.log" 2>&1
      fi
      PYTHONPATH=/tmp/fht:$PYTHONPATH step hadamard 400 python3 benchmarks/hadamard_bench.py --commit "$RQ_COMMIT" \
        --out "$dir/hadamard.json" ;;
    hadfold)  # the Hadamard kernel with 0-3 Sylvester bits folded into the core (ROTAQUANT_HADAMARD_FOLD)
      for f in 0 1 2 3; do
        ROTAQUANT_HADAMARD_FOLD=$f step fold$f 120 python3 benchmarks/hadamard_bench.py --rows 2048,16384 \
          --sizes 576,896,1536,4864,5120,14336 --commit "$RQ_COMMIT" --out "$dir/fold$f.json"
      done ;;
    layer)
      step layer 130 python3 benchmarks/pipeline_bench.py --device cuda --repeats 2 --sections layer kernel \
        --profile "$dir/profile" --json "$dir/pipeline_layer.json" ;;
    ncuw4)  # Nsight Compute on one W4A16 decode kernel (4096x4096, fast mode, the best tile of stop 19)
      step ncu 240 ncu --clock-control none --kernel-name _w4_mm_kernel --launch-skip 8 --launch-count 1 --set full \
        python3 benchmarks/w4_decode_sweep.py --copies 2 --shapes 4096x4096 --modes fast --no-autotuned --tiles 64:8:2:4 ;;
    hostpath)  # where the host time of one Hadamard call goes (alone on the GPU)
      step hostpath 120 python3 benchmarks/host_path_gpu.py --json "$dir/host_path.json" --profile "$dir/host_profile.txt" ;;
    fusedsweep)  # tile/warp settings of the fused Hadamard + quantizer and fake-quant kernels (one process each)
      # Hadamard tile, warps, Sylvester bits folded into the core; fake-quant tile, warps (0: default rule)
      for cfg in "0 0 0 0 0" "2048 4 0 1024 2" "2048 8 0 1024 4" "4096 4 0 2048 2" "4096 8 0 2048 4" "8192 8 0 2048 8" \
          "8192 16 0 4096 2" "16384 8 0 4096 8" "16384 16 0 8192 4" "4096 2 0 8192 8" "2048 2 0 16384 8" \
          "16384 4 0 1024 1" "0 0 2 0 0" "4096 8 2 0 0" "2048 8 2 0 0"; do
        read -r ht hw hf ft fw <<< "$cfg"
        ROTAQUANT_HADAMARD_TILE=$ht ROTAQUANT_HADAMARD_WARPS=$hw ROTAQUANT_HADAMARD_FOLD=$hf ROTAQUANT_FAKEQUANT_TILE=$ft \
          ROTAQUANT_FAKEQUANT_WARPS=$fw step "sweep_${ht}_${hw}_${hf}_${ft}_${fw}" 90 python3 benchmarks/fused_quant_sweep.py \
          --out "$dir/sweep.jsonl"
      done ;;
    fusedeval)  # after fusedsweep: the evaluation with the sweep's fastest settings next to the defaults
      best=$(python3 benchmarks/fused_quant_sweep.py --out /root/rq/out/fusedsweep/sweep.jsonl --pick 16384x1536 16384x576)
      echo "fastest settings: $best" | tee "$dir/best.txt"
      ( [ -n "$best" ] && export $best
        step evalbest 200 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 3 \
          --sections eval --json "$dir/pipeline_eval_best.json" ) ;;
    fmadiv)  # the quantizers' IEEE division (ROTAQUANT_QUANT_DIV=ieee; fma is the default): GPU tests, sweeps
      ROTAQUANT_QUANT_DIV=ieee step tests 240 python3 -m pytest -m gpu tests/kernels/test_fake_quant_triton.py \
        tests/kernels/test_hadamard_triton.py tests/kernels/test_int8_linear.py -k "quant or fused or int8" -q -rf \
        --tb=short -p no:cacheprovider
      ROTAQUANT_QUANT_DIV=ieee step sweep_ieee 60 python3 benchmarks/fused_quant_sweep.py --out "$dir/sweep.jsonl"
      ROTAQUANT_QUANT_DIV=fma step sweep_fma 60 python3 benchmarks/fused_quant_sweep.py --out "$dir/sweep.jsonl" ;;
    w4tc)  # the W4A16 decode kernel's "tc" mode (tensor cores on the codes; inline PTX unpacking): GPU tests, tiles
      step tests 200 python3 -m pytest -m gpu tests/kernels/test_w4a16_triton.py -q -rf --tb=short -p no:cacheprovider
      step sweep 200 python3 benchmarks/w4_decode_sweep.py --modes fast,tc --no-autotuned --json "$dir/w4_sweep.json" ;;
    evalnext)  # stop 22's open questions: the graphed evaluation without the in-graph mask; SDPA without cuDNN
      step eval 230 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 3 --sections eval \
        --json "$dir/pipeline_eval.json"
      step eval_nocudnn 230 python3 benchmarks/pipeline_bench.py --model "$RQ_MODEL" --device cuda --repeats 3 \
        --sections eval learn --no-cudnn-sdpa --json "$dir/pipeline_eval_learn_nocudnn.json" ;;
    ncuhad)  # Nsight Compute on the Hadamard kernel at 16384 x 1536 (12.6 SASS per element cannot explain 61 us)
      step ncu 240 ncu --clock-control none --kernel-name _hadamard_kernel --launch-skip 6 --launch-count 1 --set full \
        python3 benchmarks/hadamard_bench.py --rows 16384 --sizes 1536 --runs 1 --reps 2 ;;
    linears)
      step linears 170 python3 benchmarks/export_bench.py --parts linears --json "$dir/export_linears.json" ;;
    *) echo "unknown part $part (check checkpar speed export seeds parity learned kl zs proflearn hadamard fsdp recheck int8 layer linears tests evallearn ncuw4 hostpath hadfold newtests fusedsweep fusedeval fmadiv w4tc evalnext ncuhad)"; continue ;;
  esac
  tar -czf "$OUT/$part.tgz" -C /root/rq/out "$part" && echo "packed $OUT/$part.tgz ($(du -h "$OUT/$part.tgz" | cut -f1))"
done
