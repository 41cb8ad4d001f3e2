# Source this on the GPU machine (see ../shared/DEVICE.md) after the two carry calls:
#   call 1 (carry .carry/a): mkdir -p /root/rq && cp .carry/a/model.part0 /root/rq/
#   call 2 (carry .carry/b): source benchmarks/device_setup.sh && <work>
# It assembles the default model, installs the gguf wheel and points rotaquant at both.
set -e
if [ ! -f /root/rq/smollm2.gguf ]; then
  cat /root/rq/model.part0 .carry/b/model.part1 > /root/rq/smollm2.gguf
fi
if [ ! -f /tmp/site/.rq-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/b/whl/*.whl && touch /tmp/site/.rq-wheels
fi
if [ -d .carry/b/data ]; then mkdir -p /root/rq/data && cp -r .carry/b/data/. /root/rq/data/; fi
export PYTHONPATH=/tmp/site:$PWD/src ROTAQUANT_DATA_DIR=/root/rq/data PYTHONUNBUFFERED=1
export ROTAQUANT_CACHE_DIR=/root/rq/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RQ_MODEL=/root/rq/smollm2.gguf
set +e
