# Sourced by benchmarks/device_*.sh: wheels carried to the GPU machine, which reaches no package index.

# install_wheels TARGET WHEEL...: install into TARGET offline, without dependencies (each carry names them all)
install_wheels() {
  local target=$1
  shift
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

# site_wheels: the carried .whl/*.whl (cp312: pycocotools, onnx_graphsurgeon) into /tmp/site, once per machine
site_wheels() {
  if [ ! -d /tmp/site ] && ls .whl/*.whl >/dev/null 2>&1; then
    install_wheels /tmp/site .whl/*.whl || exit 1
  fi
}

# bench_env EXTRA_SITE DEFAULT_OUT: a device bench phase's environment: the carried wheels, PYTHONPATH with src/,
# EXTRA_SITE (what a `take` phase installed) and /tmp/site, unbuffered Python, and $OUT (DEFAULT_OUT if unset) made
bench_env() {
  site_wheels
  export PYTHONPATH=$PWD/src:$1:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  OUT=${OUT:-$2}
  mkdir -p "$OUT"
}

# download_cp312 DIR REQUIREMENT...: (here) wheels for the device's CPython 3.12 into DIR, without dependencies
download_cp312() {
  local dir=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}

# py39_wheels: (here) what benchmarks/e2e_trt.py needs in the GPU machine's CPython 3.9 beside the TensorRT 8.6
# bundle (tensorrt, numpy 1.26, polygraphy): the package's base dependencies Pillow and OpenCV, and pycocotools.
#   .devcarry/py39  Pillow, simplejpeg and pycocotools, unpacked (17 MB: travels with the checkpoint)
#   .cvcarry        the opencv-python-headless wheel (50 MB: a call of its own, `device_e2e.sh take_cv`); 4.10 is
#                   the last release that takes numpy 1.x. Without it the runtime falls back to numpy resizes and
#                   mask pastes (run 17: letterbox 79-113 ms, postprocess 47-69 ms per image in that process).
py39_wheels() {
  local dl
  dl=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.9 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dl" \
    pycocotools==2.0.8 pillow==10.4.0 simplejpeg==1.9.0 opencv-python-headless==4.10.0.84 || return 1
  rm -rf .devcarry/py39 .cvcarry && mkdir -p .devcarry/py39 .cvcarry
  for w in "$dl"/pycocotools-*.whl "$dl"/pillow-*.whl "$dl"/simplejpeg-*.whl; do
    python3 -m zipfile -e "$w" .devcarry/py39/
  done
  mv "$dl"/opencv_python_headless-*.whl .cvcarry/
  rm -rf "$dl"
  libpython39_deb
  du -sh .devcarry .cvcarry
}

# libpython39_deb: (here) Debian bullseye's libpython3.9 (1.7 MB) into .cvcarry/debs (the .devcarry call is full):
# the shared libpython that Triton's Python-backend stub for 3.9 links (the trt86 bundle's interpreter is the
# static python3.9-minimal). device_e2e.sh take_cv copies it to /tmp/py39debs; device_serve.sh bench_trt unpacks it
# into /tmp/trt86/py39 to serve a TensorRT 8.6 engine from CPython 3.9.
libpython39_deb() {
  local a
  a=$(mktemp -d)
  mkdir -p "$a/lists" .cvcarry/debs
  echo "deb http://deb.debian.org/debian bullseye main" >"$a/sources.list"
  local o="-o Dir::Etc::sourcelist=$a/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$a/lists"
  # shellcheck disable=SC2086
  apt-get $o update -q >/dev/null && (cd .cvcarry/debs && apt-get $o download -q libpython3.9 >/dev/null 2>&1)
  rm -rf "$a"
  ls .cvcarry/debs/libpython3.9_*.deb
}

# nvimgcodec_carry: (here) nvImageCodec 0.9 and nvJPEG (CUDA 12) for the GPU machine's CPython 3.9, so the TensorRT
# process decodes JPEGs on the GPU (e2e_trt.py --gpu-decode; backends/tensorrt/gpu_pre.py). Only what CPython 3.9
# and JPEG need (the cp39 binding, the core library, the nvJPEG and libjpeg-turbo extensions, libnvjpeg.so.12),
# zipped into .nvimgcarry (git-ignored; a call of its own: `device_e2e.sh take_nvimg`).
nvimgcodec_carry() {
  local dl site
  dl=$(mktemp -d)
  site="$dl/site"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.9 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$dl" nvidia-nvimgcodec-cu12==0.9.0.20 nvidia-nvjpeg-cu12==12.4.0.76 || return 1
  mkdir -p "$site"
  for w in "$dl"/*.whl; do python3 -m zipfile -e "$w" "$site/"; done
  (cd "$site" && rm -f nvidia/nvimgcodec/nvimgcodec_impl.cpython-3[1-9][0-9]*.so nvidia/nvimgcodec/nvimgcodec_impl.cpython-38*.so \
    nvidia/nvimgcodec/extensions/lib{nvjpeg2k,nvtiff,opencv,tiff,nvbmp,nvpnm}_ext.so.* &&
    rm -rf nvidia/nvimgcodec/include nvidia/nvimgcodec/tools)
  rm -rf .nvimgcarry && mkdir -p .nvimgcarry
  (cd "$site" && python3 -m zipfile -c "$OLDPWD/.nvimgcarry/nvimgcodec_cp39.zip" nvidia)
  grep -qxF "/.nvimgcarry/" .git/info/exclude 2>/dev/null || echo "/.nvimgcarry/" >>.git/info/exclude
  rm -rf "$dl"
  nvimgcodec312_carry
  du -sh .nvimgcarry
}

# nvimgcodec312_carry: (here) nvImageCodec 0.9 and nvJPEG 13 for the GPU machine's python3 (3.12, torch with CUDA
# 13), so the PyTorch backend's GPU decoding (backends/torch_cuda.py GpuLetterbox) uses nvImageCodec there as a
# user who installed it would: the cp312 and cp39 bindings, the core library, the nvJPEG and libjpeg-turbo
# extensions and libnvjpeg.so.13, zipped beside the cp39 one (`device_e2e.sh take_nvimg` unpacks both;
# /tmp/site-nvimg312). Since session 19 the TensorRT process decodes with it too (device_e2e.sh bench).
nvimgcodec312_carry() {
  local dl site
  dl=$(mktemp -d)
  site="$dl/site"
  download_cp312 "$dl" nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43 || return 1
  mkdir -p "$site"
  for w in "$dl"/*.whl; do python3 -m zipfile -e "$w" "$site/"; done
  # the cp39 binding too: the TensorRT process can decode with this nvImageCodec (device_e2e.sh bench E2E_NVIMG=cu13)
  (cd "$site" && find nvidia/nvimgcodec -name 'nvimgcodec_impl.cpython-*.so' ! -name '*cpython-312-*' \
    ! -name '*cpython-39-*' -delete &&
    rm -f nvidia/nvimgcodec/extensions/lib{nvjpeg2k,nvtiff,opencv,tiff,nvbmp,nvpnm}_ext.so.* &&
    rm -rf nvidia/nvimgcodec/include nvidia/nvimgcodec/tools &&
    mkdir nvjpeg13 && mv nvidia/cu13/lib/libnvjpeg.so.13 nvjpeg13/ && rm -rf nvidia/cu13)  # not beside torch's cu13
  mkdir -p .nvimgcarry
  (cd "$site" && python3 -m zipfile -c "$OLDPWD/.nvimgcarry/nvimgcodec_cp312.zip" nvidia nvjpeg13)
  rm -rf "$dl"
}
