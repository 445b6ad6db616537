# Sourced first in every call on the GPU machine: PyHessian for the eigen-solver benchmark, MNIST
# unpacked as torchvision's download would, and the library on the path.
export PYTHONPATH=$PWD/lib:/tmp/site PYTHONUNBUFFERED=1 HESSBATCH_CACHE=/tmp/hbc
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpudata/whl/*.whl >/dev/null 2>&1
mkdir -p .gpudata/MNIST/raw
for f in .gpudata/mnistgz/*.gz; do gunzip -c "$f" > ".gpudata/MNIST/raw/$(basename "${f%.gz}")"; done
