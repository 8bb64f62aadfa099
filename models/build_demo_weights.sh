#!/usr/bin/env bash
# The exact commands that made the shipped demo weights (models/cxr_models/weights/, 0.2.0-demo)
# and their metrics. Run from the repository root after `make up`; CPU-only (2 cores) is fine.
#
# Stage 1 is the PhantomCXR-only 0.1.0-demo set (commit cc559d2; its own commands are in that
# commit's copy of this script). Stage 2 starts every model from it and trains on the real
# radiographs of ../shared/realcxr (CXR_REALCXR) mixed with PhantomCXR, with the patient-hash
# split of cxr_models.train.data (validation fraction 0.2, split seed 0): the validation part is
# never trained on and chooses every threshold (fusion, reporting threshold, OOD limit).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
REAL="${CXR_REALCXR:-../shared/realcxr}"
NIH="$REAL/chestxray14,format=chestxray14"
COVID="$REAL/covid-chestxray-dataset,format=covidcxr"
VERSION=0.2.0-demo
INIT_COMMIT=cc559d2

MIX_DATA="cxr phantom generate --out data/mix --n-studies 400 --seed 1 --size-range 512 768 --no-progress"
TEST_DATA="cxr phantom generate --out data/test --n-studies 300 --seed 9001 --size-range 512 768 --no-progress"
[ -d data/mix ] || $MIX_DATA
[ -d data/test ] || $TEST_DATA

# Stage 1: the PhantomCXR-only weights, exactly as shipped in 0.1.0-demo.
mkdir -p runs/init
for name in view lungs detector_a detector_b opacity study; do
  [ -f "runs/init/$name.pt" ] || git show "$INIT_COMMIT:models/cxr_models/weights/$name.pt" > "runs/init/$name.pt"
done

# Stage 2: real + PhantomCXR. The lung model comes first: the detectors, the opacity model and
# the study model crop real images without lung masks with its predictions.
LUNGS=runs/real/lungs/weights_fp16.pt
OPACITY=runs/real/opacity/weights_fp16.pt
COMMON="--threads 2 --no-progress"
declare -A TRAIN=(
  [view]="cxr train view --data $NIH --data $COVID,weight=3 --data data/mix --init runs/init/view.pt --acquisition-jitter --epochs 6 --out runs/real/view $COMMON"
  [lungs]="cxr train lungs --data $COVID,weight=4 --data data/mix --init runs/init/lungs.pt --epochs 6 --out runs/real/lungs $COMMON"
  [detector_a]="cxr train detector-a --data $NIH,weight=3 --data data/mix --init runs/init/detector_a.pt --lungs-weights $LUNGS --acquisition-jitter --epochs 8 --cache-dir runs/real/detector_cache --out runs/real/detector_a $COMMON"
  [detector_b]="cxr train detector-b --data $NIH,weight=3 --data data/mix --init runs/init/detector_b.pt --lungs-weights $LUNGS --acquisition-jitter --epochs 8 --cache-dir runs/real/detector_cache --out runs/real/detector_b $COMMON"
  [opacity]="cxr train opacity --data $NIH,weight=3 --data data/mix --init runs/init/opacity.pt --lungs-weights $LUNGS --acquisition-jitter --epochs 6 --out runs/real/opacity $COMMON"
  [study]="cxr train study --data $NIH --data $COVID --data data/mix --init runs/init/study.pt --acquisition-jitter --lungs-weights $LUNGS --opacity-weights $OPACITY --epochs 8 --out runs/real/study $COMMON"
)
declare -A SOURCES=(
  [view]="$NIH $COVID,weight=3 data/mix"
  [lungs]="$COVID,weight=4 data/mix"
  [detector_a]="$NIH,weight=3 data/mix"
  [detector_b]="$NIH,weight=3 data/mix"
  [opacity]="$NIH,weight=3 data/mix"
  [study]="$NIH $COVID data/mix"
)
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

for name in lungs view detector_a detector_b opacity study; do
  [ -f "runs/real/$name/model_best.pt" ] || ${TRAIN[$name]}
done

for name in view lungs detector_a detector_b opacity study; do
  sources=()
  for spec in ${SOURCES[$name]}; do sources+=(--source "$spec"); done
  python -m cxr_models.weights.export --name "$name" --checkpoint "runs/real/$name/model_best.pt" \
    --training-command "${TRAIN[$name]}" --data-command "$MIX_DATA" --data-seed 1 --data-studies 400 \
    "${sources[@]}" --init-from "the PhantomCXR-only 0.1.0-demo weights (git show $INIT_COMMIT:models/cxr_models/weights/$name.pt)" \
    --architecture "${ARCH[$name]}" --input-size ${SIZE[$name]} --classes ${CLASSES[$name]} --manifest-version "$VERSION"
done

# Thresholds, all chosen on the validation part of the real sources (and PhantomCXR where it has the labels).
VAL="--data $NIH --data $COVID --data data/mix --split val"
python -m cxr_models.evaluation.tune_fusion $VAL --write-manifest
python -m cxr_models.evaluation.tune_threshold --data $NIH --split val --max-false-per-negative 0.5 --write-manifest
python -m cxr_models.evaluation.fit_ood --data $NIH --data $COVID --data data/mix --quantile 0.99 --write-manifest

# Metrics: the real validation part, and the unseen PhantomCXR seed-9001 test set.
EVAL_REAL="cxr evaluate --data $NIH --data $COVID --split val --out runs/eval_real --no-progress"
$EVAL_REAL
python -m cxr_models.weights.record --key metrics_real --metrics runs/eval_real/metrics.json --command "$EVAL_REAL"
EVAL="cxr evaluate --data data/test --out runs/eval --no-progress"
$EVAL
python -m cxr_models.weights.record --metrics runs/eval/metrics.json --command "$EVAL" \
  --data-seed 9001 --data-command "$TEST_DATA"
# Opacity % against every covid severity score (51; 45 in the training part of the lung, view and
# study models, none ever trained on a score): indicative only, not recorded in the manifest.
cxr evaluate --data $COVID --split all --out runs/eval_severity_all --no-progress
# The shipped weights against the PhantomCXR-only 0.1.0-demo ones on the real validation part
# (paired bootstrap intervals of each difference).
mkdir -p runs/weights_0.1.0 && cp runs/init/*.pt runs/weights_0.1.0/
git show "$INIT_COMMIT:models/cxr_models/weights/manifest.json" > runs/weights_0.1.0/manifest.json
cxr evaluate --data $NIH --data $COVID --split val --baseline-weights runs/weights_0.1.0 --out runs/eval_real_vs_0.1.0 --no-progress

# Transfer ablation (not shipped): PhantomCXR changes judged by the real-validation score of a
# lung model trained on synthetic data only.
if [ "${CXR_ABLATION:-0}" = 1 ]; then
  cxr train lungs --data data/mix --init runs/init/lungs.pt --epochs 6 --out runs/ablation/lungs_phantom --threads 1 --no-progress
  cxr train lungs --data data/mix --init runs/init/lungs.pt --acquisition-jitter --epochs 6 --out runs/ablation/lungs_phantom_acq --threads 1 --no-progress
  python -m cxr_models.evaluation.transfer --data "$COVID" --data "$NIH" --split val \
    --lungs "0.1.0 (old convention)=runs/init/lungs.pt" \
    --lungs "V7 convention=runs/ablation/lungs_phantom/weights_fp16.pt" \
    --lungs "V7 convention + acquisition jitter=runs/ablation/lungs_phantom_acq/weights_fp16.pt" \
    --view "0.1.0=runs/init/view.pt" --out models/evaluation_real/transfer_ablation.json
fi
