#!/usr/bin/env bash
# The GPU run that issue 15's open line waits on (a base G wide enough to draw glasses rims and curls), prepared so
# a session lent a device spends its 15 minutes of device time on one call of the device tool, not on set-up.
#
#   here, once:   bash scripts/device_world_g.sh prepare        # .devrun/: the demo's 12 photos + the lpips wheel
#   device tool:  run  command="bash scripts/device_world_g.sh run"  carry=[".devrun"]  timeout_s=590
#   (what travels: the tracked tree, 58 MB on 2026-12-07 with assets/world64, + .devrun 0.15 MB, of the 64 MiB allowed)
#
# On the device (python3 there holds torch; of our dependencies only lpips is missing, carried as a wheel):
#   1. with GPU_TEST=1, tests/test_world.py's GPU test (G/D and encoders train on cuda, their files load on the CPU);
#   2. a fresh G/D of CHANNELS (default 64) channels and its encoders on a copy of assets/world64, every other
#      instrument unchanged, then the instrument report (on the CPU, on the full run's held-out sets). A rerun of
#      generator,encoders gets 0.70 of --budget-min (G 0.55, encoders 0.09, report 0.06): BUDGET_MIN 10 (default)
#      gives G ~330 s and E_w+ ~55 s; with rendering and the report the command takes ~8 min of the call's 10;
#   3. scripts/reconstruction_sheet.py: the shipped folder's and the new folder's reconstructions of the demo photos.
# Back under $OUT: log.txt, instruments.md, sheet.png and world64_gpu.tgz (the new folder's G, encoders, report and
# manifest). Judge by the sheet and the report's G and E_w+ rows against assets/world64's; if better, unpack over
# assets/world64 (the manifest lists this rerun's command and machine), then `make demo` and the study.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}        # PYTHON and DEVICE=cpu (with a small BUDGET_MIN) rehearse `run` on a machine without a GPU

case "${1:-}" in
prepare)
    photos=${PHOTOS:-demo-out/inputs/photos}
    ls "$photos"/*.png >/dev/null 2>&1 || { echo "$photos: no *.png; run \`make demo\` first or set PHOTOS" >&2; exit 2; }
    mkdir -p .devrun/photos .devrun/whl
    cp "$photos"/*.png .devrun/photos/
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .devrun/whl lpips==0.1.4
    du -sh .devrun
    ;;
run)
    : "${OUT:?OUT is the folder the device tool brings back; this mode runs on the device machine}"
    [ -d .devrun/whl ] || { echo ".devrun/ did not travel: run \`$0 prepare\` here and carry .devrun" >&2; exit 2; }
    export PYTHONUNBUFFERED=1
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devrun/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    log=$OUT/log.txt
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"; } 2>&1 | tee "$log"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tee -a "$log"
    if [ "${GPU_TEST:-0}" = 1 ]; then    # ~90 s; the run below exercises the same path (cuda training, CPU loading)
        "$py" -m pytest -q -p no:cacheprovider tests/test_world.py -k gpu 2>&1 | tee -a "$log" \
            || echo "!! the GPU test failed (above); the run goes on so the device time still yields a G" | tee -a "$log"
    fi
    rm -rf /tmp/W && cp -r assets/world64 /tmp/W
    "$py" -m fstrain.world.pretrain /tmp/W --stages generator,encoders --generator-channel-max "${CHANNELS:-64}" \
        --budget-min "${BUDGET_MIN:-10}" --size 64 --seed 0 --reference-autoencoder none --device "${DEVICE:-cuda}" 2>&1 | tee -a "$log"
    cp /tmp/W/instruments.md "$OUT/"
    # what the two stages and the report rewrote (the folder's other instruments are assets/world64's, unchanged)
    tar -czf "$OUT/world64_gpu.tgz" -C /tmp/W generator.pt generator.pt.json encoder_wplus.pt encoder_zplus.pt \
        generator_samples.png generator_samples_grid.png encoders_preview.png instruments.json instruments.md \
        models.json manifest.json
    "$py" scripts/reconstruction_sheet.py "$OUT/sheet.png" --photos .devrun/photos \
        --folder assets/world64 --folder /tmp/W 2>&1 | tee -a "$log"
    ls -la "$OUT" | tee -a "$log"
    ;;
*)
    echo "usage: $0 prepare|run  (see the comment at the top)" >&2
    exit 2
    ;;
esac
