#!/bin/sh
# Xcode > Build Phases > New Run Script Phase (before "Copy Bundle Resources"):
# copies the int8 models edgeship built for ios-arm64 into the app bundle.
# UNTESTED here: no Xcode or macOS machine was available to this project's test suite.
set -eu
OUT="${SRCROOT}/build/edgeship"
if [ ! -f "${OUT}/index.json" ]; then
  echo "error: run 'edgeship build' first: ${OUT}/index.json is missing" >&2
  exit 1
fi
DEST="${TARGET_BUILD_DIR}/${UNLOCALIZED_RESOURCES_FOLDER_PATH}/models"
mkdir -p "${DEST}"
for dir in "${OUT}"/*/ios-arm64; do
  model="$(basename "$(dirname "${dir}")")"
  for artifact in model.int8.pte model.int8.tflite model.int8.ort; do
    if [ -f "${dir}/${artifact}" ]; then
      cp "${dir}/${artifact}" "${DEST}/${model}.${artifact#model.}"
    fi
  done
done
