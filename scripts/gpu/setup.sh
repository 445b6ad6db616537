# Sourced first in every call on the GPU machine: PyHessian for the eigen-solver benchmark, MNIST
# unpacked as torchvision's download would, and the library on the path.
# GPUDATA: the packed data (default .gpudata).
g=${GPUDATA:-.gpudata}
export PYTHONPATH=$PWD/lib:/tmp/site PYTHONUNBUFFERED=1 HESSBATCH_CACHE=${HESSBATCH_CACHE:-/tmp/hbc}
ls "$g"/whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site "$g"/whl/*.whl >/dev/null 2>&1
mkdir -p "$g/MNIST/raw"
for f in "$g"/mnistgz/*.gz; do [ -e "$f" ] && gunzip -c "$f" > "$g/MNIST/raw/$(basename "${f%.gz}")"; done
