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

# download_cp312 DIR REQUIREMENT...: (here) wheels for the device's CPython 3.12 into DIR, without dependencies
download_cp312() {
  local dir=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
