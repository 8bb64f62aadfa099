#!/usr/bin/env bash
# The exact commands that made the shipped demo weights (models/cxr_models/weights/) and their
# metrics. Run from the repository root after `make up`; CPU-only is fine (about an hour on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

TRAIN_DATA="cxr phantom generate --out data/train --n-studies 1200 --seed 1 --size-range 512 768 --no-progress"
TEST_DATA="cxr phantom generate --out data/test --n-studies 300 --seed 9001 --size-range 512 768 --no-progress"
VAL_DATA="cxr phantom generate --out data/val --n-studies 150 --seed 2 --size-range 512 768 --no-progress"
[ -d data/train ] || $TRAIN_DATA
[ -d data/test ] || $TEST_DATA
[ -d data/val ] || $VAL_DATA

declare -A TRAIN=(
  [view]="cxr train view --data data/train --out runs/view_final --threads 1 --no-progress"
  [lungs]="cxr train lungs --data data/train --out runs/lungs --epochs 3 --threads 1 --no-progress"
  [detector_a]="cxr train detector-a --data data/train --out runs/detector_a12 --epochs 12 --cache-dir runs/detector_a/cache --threads 2 --no-progress"
  [detector_b]="cxr train detector-b --data data/train --out runs/detector_b12 --epochs 12 --cache-dir runs/detector_b/cache --threads 2 --no-progress"
  [opacity]="cxr train opacity --data data/train --out runs/opacity --threads 1 --no-progress"
  [study]="cxr train study --data data/train --out runs/study --lungs-weights runs/lungs/weights_fp16.pt --opacity-weights runs/opacity/weights_fp16.pt --threads 1 --no-progress"
)
declare -A RUN=([view]=runs/view_final [lungs]=runs/lungs [detector_a]=runs/detector_a12 [detector_b]=runs/detector_b12 [opacity]=runs/opacity [study]=runs/study)
declare -A ARCH=(
  [view]="residual CNN (cxr_models.nets.view)"
  [lungs]="U-Net, half-width ResNet18 encoder to layer3 (segmentation-models-pytorch)"
  [detector_a]="Faster R-CNN, small ResNet-like FPN backbone (torchvision, two-stage)"
  [detector_b]="FCOS, small ResNet-like FPN backbone (torchvision, one-stage anchor-free)"
  [opacity]="U-Net, half-width ResNet18-like encoder to layer3 (segmentation-models-pytorch)"
  [study]="residual CNN over crop, lung mask, opacity map and coordinates; mean over frontal images"
)
declare -A SIZE=([view]="128 128" [lungs]="256 256" [detector_a]="320 320" [detector_b]="320 320" [opacity]="256 256" [study]="128 128")
declare -A CLASSES=(
  [view]="frontal lateral other" [lungs]="lung" [detector_a]="opacity" [detector_b]="opacity"
  [opacity]="opacity" [study]="negative typical indeterminate atypical"
)

# The study model is trained on the lung and opacity models' predictions, so it comes last.
for name in view lungs detector_a detector_b opacity study; do
  [ -f "${RUN[$name]}/model_best.pt" ] || ${TRAIN[$name]}
done

for name in view lungs detector_a detector_b opacity study; do
  python -m cxr_models.weights.export --name "$name" --checkpoint "${RUN[$name]}/model_best.pt" \
    --training-command "${TRAIN[$name]}" --data-command "$TRAIN_DATA" --data-seed 1 --data-studies 1200 \
    --architecture "${ARCH[$name]}" --input-size ${SIZE[$name]} --classes ${CLASSES[$name]}
done

# The WBF weights, IoU and confidence rule are chosen on the validation set (seed 2), never the test set.
python -m cxr_models.evaluation.tune_fusion --data data/val --write-manifest

EVAL="cxr evaluate --data data/test --out runs/eval --no-progress"
$EVAL
python -m cxr_models.weights.record --metrics runs/eval/metrics.json --command "$EVAL" \
  --data-seed 9001 --data-command "$TEST_DATA"
