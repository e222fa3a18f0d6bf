# Kosmos-2 grounding course: two commands do everything.
#   make run    create .venv (first time), then run the main job; results go to outputs/
#   make test   create .venv (first time), then run the test suite (tests/ and notebooks/)
# Other targets: make install, make lab, make clean, make distclean.
# GNU make.

PY ?= python3
VENV = .venv
VPY = $(VENV)/bin/python
VPIP = $(VENV)/bin/pip
# torch is installed first, on its own: a matching wheel may already be available
# locally, and a bare `torch` requirement could otherwise pull several GB of CUDA
# libraries. Override with e.g. `make TORCH_SPEC="torch>=2.2" test`.
TORCH_SPEC ?= torch==2.13.0

# Headless runs: no progress bars in logs or stored notebook outputs.
export KOSMOS2_PROGRESS = 0

.PHONY: run test install lab clean distclean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPIP) install "$(TORCH_SPEC)"
	$(VPIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VPY) -m helpers run --out outputs

# Tests never reach the network: the model hub is switched off for them.
test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VPY) -m pytest

lab: $(VENV)/.installed
	$(VPY) -m pip install jupyterlab
	$(VPY) -m jupyter lab notebooks

clean:
	rm -rf outputs

distclean: clean
	rm -rf $(VENV)
