# Both targets do all their own set-up on a fresh Debian machine: venv, project, system packages.
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
SYS_PKGS  := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 \
             libgl1 libegl1 libfontconfig1 libdbus-1-3 libxcb-shape0 libxcb-randr0 \
             libxcb-render-util0 libxcb-xinerama0 libxcb-image0
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test test-quick demo install venv sysdeps lint benchmarks screenshots dist clean

$(STAMP): pyproject.toml scripts/install_torch.py
	@[ -x $(PY) ] || $(MAKE) --no-print-directory venv
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first, the build this machine wants (the CPU build without an NVIDIA GPU), so the
	@# range in pyproject.toml never pulls the CUDA build; it says which build it installed.
	$(PY) scripts/install_torch.py
	$(PY) -m pip install --quiet -e ".[napari,test,export,ray]"
	@touch $(STAMP)

# python3 -m venv needs Debian's python3-venv (ensurepip); installed here when missing.
venv:
	@python3 -c "import sys; sys.exit(sys.version_info < (3, 10))" || \
		{ echo "napari-mtssl needs Python 3.10 or newer; python3 is $$(python3 --version)"; exit 1; }
	@python3 -c "import ensurepip, venv" 2>/dev/null || { \
		echo "python3 -m venv needs the python3-venv package: installing it"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv >/dev/null; }
	python3 -m venv $(VENV)

install: $(STAMP)

sysdeps:
	@missing=""; for p in $(SYS_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages for napari under Xvfb:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

test: $(STAMP) sysdeps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest $(PYTEST_ARGS)

# Day-to-day: the tests not marked slow (no real data, no training beyond a few steps), on
# every core; a module's tests stay in one process, so its shared fixture is built once.
test-quick: $(STAMP) sysdeps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -m "not slow" -n auto \
		--dist loadscope $(PYTEST_ARGS)

# With a display: napari opens with the sample study and the docks. Without: the headless
# pipeline on the built-in sample (quick profile).
demo: $(STAMP) sysdeps
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
		$(PY) -m napari_mtssl.cli demo --gui; \
	else \
		$(PY) -m napari_mtssl.cli demo; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# Speed and memory on ../shared/data/acdc (minutes); the accuracy sweep is a separate, long
# command (docs/benchmarks.md).
benchmarks: $(STAMP) sysdeps
	nice -n 10 $(PY) benchmarks/speed/run.py train infer memory threads
	xvfb-run -a -s "-screen 0 1600x1000x24" nice -n 10 $(PY) benchmarks/speed/run.py viewer

# Every screenshot in docs/images, written in place (ACDC from MTSSL_ACDC, else
# ../shared/data/acdc; the built-in sample otherwise); about 40 minutes on 2 cores, most of it
# training on ACDC (docs/make_screenshots.py says what each part takes; SCREENSHOTS_ARGS="--only
# dock" redoes one part).
screenshots: $(STAMP) sysdeps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/make_screenshots.py $(SCREENSHOTS_ARGS)

# The wheel for a package index: the README's links absolute and project.urls, from the
# project's public address (make dist URL=https://...); refused without one.
dist: $(STAMP)
	$(PY) scripts/release.py --url "$(URL)" --out dist

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
