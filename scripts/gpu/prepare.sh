#!/usr/bin/env bash
# Run on your own machine, once: fills the git-ignored .gpudata/ that a GPU machine without
# internet needs (the packed data and the PyHessian wheel, about 30 MB: carry [".gpudata"]).
#   scripts/gpu/prepare.sh DATA   # DATA: MNIST/raw/*.gz (torchvision layout) and cifar10-jpeg/{train,test}.tar.gz
set -euo pipefail
data=${1:?usage: scripts/gpu/prepare.sh DATA}
cd "$(git rev-parse --show-toplevel)"
mkdir -p .gpudata/mnistgz .gpudata/cifar10-jpeg .gpudata/whl
find "$data" -path "*MNIST/raw/*.gz" -exec cp {} .gpudata/mnistgz/ \;
cp "$data"/cifar10-jpeg/{train,test}.tar.gz .gpudata/cifar10-jpeg/
ls .gpudata/whl/*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --dest .gpudata/whl pyhessian==0.1
du -sh .gpudata
