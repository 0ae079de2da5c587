# garminsync developer tasks. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
# The one source of truth for the dependency: the PEP 723 header of garminsync.py.
DEPS   := $(shell sed -n '/^# \/\/\/ script/,/^# \/\/\/$$/p' garminsync.py | grep -o '"garminconnect[^"]*"' | tr -d '"')

.PHONY: test lint venv clean bench soak test-matrix test-oldest test-newest

$(VENV)/.installed: garminsync.py tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet '$(DEPS)' -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VPY) -m pytest

# Both ends of the supported range, each in its own venv (what CI runs): the oldest pair,
# Python 3.10 with the lowest garminconnect the header allows, and the newest, Python 3.13
# with the newest garminconnect the package index serves for it. Interpreters are looked up
# under `pyenv root`, then on PATH.
OLDEST_PY := 3.10
NEWEST_PY := 3.13
OLDEST_DEP = $(subst >=,==,$(firstword $(subst $(comma), ,$(DEPS))))
comma := ,
find_python = py=$$(ls -d "$$(pyenv root 2>/dev/null)"/versions/$(1).*/bin/python$(1) 2>/dev/null \
	| sort -V | tail -n 1); py=$${py:-$$(command -v python$(1))}; \
	[ -n "$$py" ] || { echo "make: no Python $(1): install it (pyenv install $(1)) or put python$(1) on PATH" >&2; exit 1; }

.venv-$(OLDEST_PY)/.installed: garminsync.py tests/requirements.txt
	@$(call find_python,$(OLDEST_PY)); echo "oldest end: $$py with $(OLDEST_DEP)"; \
	  $$py -m venv --clear .venv-$(OLDEST_PY)
	.venv-$(OLDEST_PY)/bin/python -m pip install --quiet --disable-pip-version-check \
	  '$(OLDEST_DEP)' -r tests/requirements.txt
	touch $@

.venv-$(NEWEST_PY)/.installed: garminsync.py tests/requirements.txt
	@$(call find_python,$(NEWEST_PY)); echo "newest end: $$py with the newest $(DEPS)"; \
	  $$py -m venv --clear .venv-$(NEWEST_PY)
	.venv-$(NEWEST_PY)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade \
	  '$(DEPS)' -r tests/requirements.txt
	touch $@

test-oldest: .venv-$(OLDEST_PY)/.installed
	@.venv-$(OLDEST_PY)/bin/python -c 'import sys, importlib.metadata as m; print("testing on Python", sys.version.split()[0], "with garminconnect", m.version("garminconnect"))'
	.venv-$(OLDEST_PY)/bin/python -m pytest -q

test-newest: .venv-$(NEWEST_PY)/.installed
	@.venv-$(NEWEST_PY)/bin/python -c 'import sys, importlib.metadata as m; print("testing on Python", sys.version.split()[0], "with garminconnect", m.version("garminconnect"))'
	.venv-$(NEWEST_PY)/bin/python -m pytest -q

# Side by side (the tests wait on network and processes more than on the CPU); each end's
# output is printed whole when it ends. The one test that listens on a fixed port (9321)
# takes a lock for it.
test-matrix: lint
	$(MAKE) -j2 --output-sync=target test-oldest test-newest

# What a run costs Garmin, the network and the machine (not part of `make test`).
bench: venv
	$(VPY) bench/bench.py

# The kill -9 campaign, longer: 200 kills instead of 20 (FAULT_SEED=n reproduces one).
soak: venv
	KILL_TRIALS=$${KILL_TRIALS:-200} $(VPY) -m pytest tests/test_crash.py -s -o timeout=3600

clean:
	rm -rf $(VENV) .venv-$(OLDEST_PY) .venv-$(NEWEST_PY) .pytest_cache .ruff_cache .hypothesis

# ---------------------------------------------------------------------------------------
# `make install`: run garminsync for the current user under systemd, no root needed;
# `make install DEST=/path` for a DEST other than ~/fit. Everything goes below $(HOME)
# (HOME=/tmp/x works). Re-running upgrades in place, keeping the env file and the DEST
# drop-in. `make uninstall` keeps the FIT files, the session and an env file you edited.
APP   := $(HOME)/.local/share/garminsync
UNITS := $(HOME)/.config/systemd/user
CONF  := $(HOME)/.config/garminsync
STATE := $(HOME)/.local/state/garminsync
BIN   := $(HOME)/.local/bin
# `make install PROFILE=NAME` prepares a profile (one more Garmin account) for the
# template units garminsync@.service/.timer; with DEST=... the DEST is that profile's.
DROPIN = $(UNITS)/garminsync$(if $(PROFILE),@$(PROFILE)).service.d/dest.conf
# Talk to the user manager only if it is the one of this HOME: HOME=/tmp/x leaves yours be.
MANAGER_HERE = systemctl --user show-environment 2>/dev/null | grep -qxF 'HOME=$(HOME)'

.PHONY: install uninstall

install:
	$(if $(HOME),,$(error HOME is not set))$(if $(word 2,$(DEST)),$(error DEST has a space))
	$(if $(PROFILE),$(if $(shell echo '$(PROFILE)' | grep -xE '[A-Za-z0-9][A-Za-z0-9_.-]{0,31}'),,$(error PROFILE must be letters, digits, . _ or -)))
	$(if $(DEST),$(if $(filter /%,$(DEST)),,$(error DEST must be an absolute path, e.g. /mnt/nas/fit)))
	$(APP)/venv/bin/python -c '' 2>/dev/null || $(PYTHON) -m venv --clear $(APP)/venv
	$(APP)/venv/bin/python -m pip install --quiet --disable-pip-version-check '$(DEPS)'
	install -D -m 0644 garminsync.py $(APP)/garminsync.py
	$(APP)/venv/bin/python -m compileall -q $(APP)/garminsync.py
	install -D -m 0644 README.md $(APP)/README.md
	install -D -m 0644 -t $(APP)/docs docs/*.md docs/report.png
	install -D -m 0755 garminsync.sh $(BIN)/garminsync
	install -D -m 0644 -t $(UNITS) garminsync.service garminsync.timer \
	  garminsync@.service garminsync@.timer
	install -d -m 0700 $(CONF) $(STATE)
	test -e $(CONF)/env || install -m 0600 garminsync.env $(CONF)/env
ifneq ($(PROFILE),)
	install -d -m 0700 $(STATE)/$(PROFILE)
	test -e $(CONF)/$(PROFILE).env || install -m 0600 garminsync.env $(CONF)/$(PROFILE).env
endif
ifneq ($(DEST),)
ifneq ($(PROFILE),)
	# A profile's DEST goes in its settings file too, which its hand runs read.
	sed -i '/^GARMINSYNC_DEST=/d' $(CONF)/$(PROFILE).env
	echo 'GARMINSYNC_DEST=$(abspath $(DEST))' >>$(CONF)/$(PROFILE).env
endif
	mkdir -p $(abspath $(DEST)) $(dir $(DROPIN))
	printf '%s\n' '# Written by `make install DEST=...`.' '[Service]' \
	  'Environment=GARMINSYNC_DEST=$(abspath $(DEST))' \
	  'ReadWritePaths=$(abspath $(DEST))' >$(DROPIN)
endif
	if $(MANAGER_HERE); then systemctl --user daemon-reload; fi
	@echo
	@echo 'Installed in $(APP), and the command $(BIN)/garminsync. Next:'
	@echo '  $(BIN)/garminsync$(if $(PROFILE), --profile $(PROFILE)) --login'
	@echo '      log in once (MFA too); the session is saved in $(STATE)$(if $(PROFILE),/$(PROFILE))'
	@echo '  systemctl --user enable --now garminsync$(if $(PROFILE),@$(PROFILE)).timer'
	@echo '      sync every 6 hours to $(or $(abspath $(DEST)),~/fit$(if $(PROFILE),/$(PROFILE)) (or the DEST installed before))'
	@echo '  loginctl enable-linger $$USER'
	@echo '      keep the timer running while you are logged out'
	@echo '  journalctl --user -t garminsync'
	@echo '      the log (-p warning: problems only); settings in $(CONF)/$(if $(PROFILE),$(PROFILE).env,env)'
	@systemctl --user show-environment >/dev/null 2>&1 || { echo; \
	  echo 'Note: no systemd user manager answers here (WSL, a container, some NAS):'; \
	  echo 'the timer cannot run. Use cron instead: see "Without systemd" in README.md.'; }

uninstall:
	$(if $(HOME),,$(error HOME is not set))
	if $(MANAGER_HERE); then systemctl --user stop garminsync.timer garminsync.service \
	  'garminsync@*.timer' 'garminsync@*.service' || :; fi
	rm -f $(UNITS)/garminsync.service $(UNITS)/garminsync.timer $(DROPIN) $(BIN)/garminsync \
	  $(UNITS)/garminsync@.service $(UNITS)/garminsync@.timer $(UNITS)/garminsync@*.service.d/dest.conf \
	  $(UNITS)/timers.target.wants/garminsync.timer $(UNITS)/timers.target.wants/garminsync@*.timer \
	  $(HOME)/.local/share/systemd/timers/stamp-garminsync*.timer
	rm -rf $(APP)
	for f in $(CONF)/env $(CONF)/*.env; do \
	  if grep -v '^GARMINSYNC_DEST=' "$$f" 2>/dev/null | cmp -s garminsync.env -; then rm "$$f"; fi; done
	rmdir $(dir $(DROPIN)) $(UNITS)/garminsync@*.service.d $(UNITS)/timers.target.wants $(CONF) 2>/dev/null || :
	if $(MANAGER_HERE); then systemctl --user daemon-reload && \
	  systemctl --user reset-failed garminsync.service garminsync.timer 2>/dev/null || :; fi
	@echo 'Uninstalled. Kept: the FIT files, the session in $(STATE), an env file you edited.'
