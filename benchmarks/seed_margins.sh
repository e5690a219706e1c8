#!/usr/bin/env bash
# How much the test suite depends on the training seed of the zoo models (digits-cnn, digits-cnn-at, digits-mlp):
# the suite runs once per seed, each with an empty model cache, so every pretrained model is retrained with that
# seed (ADVERSE_ZOO_SEED). A test that fails for some seed asserts a margin the models do not keep.
# Usage: bash benchmarks/seed_margins.sh [SEED ...]   (default: 1 2; seed 0 is the recipes' own, run by CI)
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seeds=("${@:-1 2}")
[ $# -eq 0 ] && seeds=(1 2)
for seed in "${seeds[@]}"; do
    cache=$(mktemp -d)
    start=$(date +%s)
    ADVERSE_ZOO_SEED=$seed ADVERSE_CACHE=$cache python -m pytest -q -p no:cacheprovider -rf \
        > "seed-$seed.log" 2>&1
    echo "seed $seed: $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "seed-$seed.log" | tail -1) in $(( $(date +%s) - start )) s"
    grep -E '^FAILED' "seed-$seed.log" || true
    rm -rf "$cache"
done
