# garminsync developer tasks. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
# The one source of truth for the dependency: the PEP 723 header of garminsync.py.
DEPS   := $(shell sed -n '/^# \/\/\/ script/,/^# \/\/\/$$/p' garminsync.py | grep -o '"garminconnect[^"]*"' | tr -d '"')

.PHONY: test lint venv clean bench soak

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

# What a run costs Garmin, the network and the machine (not part of `make test`).
bench: venv
	$(VPY) bench/bench.py

# The kill -9 campaign, longer: 200 kills instead of 20 (FAULT_SEED=n reproduces one).
soak: venv
	KILL_TRIALS=$${KILL_TRIALS:-200} $(VPY) -m pytest tests/test_crash.py -s -o timeout=3600

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# ---------------------------------------------------------------------------------------
# `make install`: run garminsync for the current user under systemd, no root needed;
# `make install DEST=/path` for a DEST other than ~/fit. Everything goes below $(HOME)
# (HOME=/tmp/x works). Re-running upgrades in place, keeping the env file and the DEST
# drop-in. `make uninstall` keeps the FIT files, the session and an env file you edited.
APP   := $(HOME)/.local/share/garminsync
UNITS := $(HOME)/.config/systemd/user
CONF  := $(HOME)/.config/garminsync
STATE := $(HOME)/.local/state/garminsync
DROPIN = $(UNITS)/garminsync.service.d/dest.conf
# Talk to the user manager only if it is the one of this HOME: HOME=/tmp/x leaves yours be.
MANAGER_HERE = systemctl --user show-environment 2>/dev/null | grep -qxF 'HOME=$(HOME)'

.PHONY: install uninstall

install:
	$(if $(HOME),,$(error HOME is not set))$(if $(word 2,$(DEST)),$(error DEST has a space))
	$(if $(DEST),$(if $(filter /%,$(DEST)),,$(error DEST must be an absolute path, e.g. /mnt/nas/fit)))
	$(APP)/venv/bin/python -c '' 2>/dev/null || $(PYTHON) -m venv --clear $(APP)/venv
	$(APP)/venv/bin/python -m pip install --quiet --disable-pip-version-check '$(DEPS)'
	install -D -m 0644 garminsync.py $(APP)/garminsync.py
	install -D -m 0644 -t $(UNITS) garminsync.service garminsync.timer
	install -d -m 0700 $(CONF) $(STATE)
	test -e $(CONF)/env || install -m 0600 garminsync.env $(CONF)/env
ifneq ($(DEST),)
	mkdir -p $(abspath $(DEST)) $(dir $(DROPIN))
	printf '%s\n' '# Written by `make install DEST=...`.' '[Service]' \
	  'Environment=GARMINSYNC_DEST=$(abspath $(DEST))' \
	  'ReadWritePaths=$(abspath $(DEST))' >$(DROPIN)
endif
	if $(MANAGER_HERE); then systemctl --user daemon-reload; fi
	@echo
	@echo 'Installed in $(APP). Next:'
	@echo '  $(APP)/venv/bin/python $(APP)/garminsync.py --login'
	@echo '      log in once (MFA too); the session is saved in $(STATE)'
	@echo '  systemctl --user enable --now garminsync.timer'
	@echo '      sync every 6 hours to $(or $(abspath $(DEST)),~/fit (or the DEST installed before))'
	@echo '  loginctl enable-linger $$USER'
	@echo '      keep the timer running while you are logged out'
	@echo '  journalctl --user -t garminsync'
	@echo '      the log (-p warning: problems only); settings in $(CONF)/env'

uninstall:
	$(if $(HOME),,$(error HOME is not set))
	if $(MANAGER_HERE); then systemctl --user stop garminsync.timer garminsync.service || :; fi
	rm -f $(UNITS)/garminsync.service $(UNITS)/garminsync.timer $(DROPIN) \
	  $(UNITS)/timers.target.wants/garminsync.timer \
	  $(HOME)/.local/share/systemd/timers/stamp-garminsync.timer
	rm -rf $(APP)
	if cmp -s garminsync.env $(CONF)/env; then rm $(CONF)/env; fi
	rmdir $(dir $(DROPIN)) $(UNITS)/timers.target.wants $(CONF) 2>/dev/null || :
	if $(MANAGER_HERE); then systemctl --user daemon-reload && \
	  systemctl --user reset-failed garminsync.service garminsync.timer 2>/dev/null || :; fi
	@echo 'Uninstalled. Kept: the FIT files, the session in $(STATE), an env file you edited.'
