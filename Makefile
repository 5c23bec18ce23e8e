# kvmcluster: `make demo` runs the formula on the built-in lab, `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := PYTHONPATH=test $(PY) -m lab
APT_PKGS := debootstrap qemu-system-x86 qemu-utils python3-venv python3-libvirt apt-utils \
	e2fsprogs iproute2 openssh-client iputils-ping sudo glusterfs-server glusterfs-client
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done

.PHONY: deps demo test test-unit test-functional test-mutation test-lab lab lab-up lab-down lab-status lint docs mutation bench

deps: $(STAMP_PIP)

$(STAMP_APT):
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@touch $@

# The venv is made from Debian's python3 so that python3-libvirt (apt) is importable in it.
$(STAMP_PIP): $(STAMP_APT) test/requirements.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r test/requirements.txt
	@touch $@

demo: deps
	$(LAB) demo

test: deps
	bash test/run-tests.sh

# Python (ruff), YAML (yamllint, template-formula's config), SLS (salt-lint) and the docs
# (rstcheck); the unit tier runs the same (test/unit/test_lint.py).
lint: deps
	$(PY) test/lint.py

# The pillar reference, generated from _utils/kvmcluster_schema.py and the defaults.
docs: deps
	$(PY) docs/gen_pillar.py

test-unit: deps
	bash test/run-tests.sh unit

test-functional: deps
	bash test/run-tests.sh functional

test-mutation: deps
	bash test/run-tests.sh mutation

test-lab: deps
	bash test/run-tests.sh lab

# ARGS reaches the lab CLI as one environment variable: make's shell never splits it, so
# `make lab ARGS='ssh kvm02 -- cmd1; cmd2'` runs both commands on kvm02.
lab: deps
	@ARGS="$$ARGS" $(LAB) --from-env

lab-up: deps
	$(LAB) up

lab-down: deps
	$(LAB) down

lab-status: deps
	$(LAB) status

# Mutation testing of the network transaction (not part of `make test`): six hand-made
# mutants that the fast tests must kill, then mutmut over the engine and the network state
# on a copy of the tree (mutmut rewrites the files it mutates).
MUT_RUNNER := env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONPATH=test $(abspath $(PY)) -m pytest -x -q -p no:cacheprovider
mutation: deps
	$(PY) -m pip install -q -r test/requirements-mutation.txt
	$(PY) test/mutation/named_mutants.py
	rm -rf /tmp/kvmcluster-mutmut && mkdir -p /tmp/kvmcluster-mutmut && git archive HEAD | tar -x -C /tmp/kvmcluster-mutmut
	cd /tmp/kvmcluster-mutmut && $(abspath $(VENV))/bin/mutmut run --no-progress \
	  --paths-to-mutate _modules/kvmcluster_nettxn.py,_states/kvmcluster_network.py \
	  --runner "$(MUT_RUNNER) test/unit/test_nettxn_engine.py test/unit/test_network_state.py" \
	  --tests-dir test/unit; $(abspath $(VENV))/bin/mutmut results

# The benchmark (not part of `make test`): kvmcluster beside Salt's floor, a bare apt-get
# and an Ansible playbook on the lab; prints the table, writes test/bench/results.json.
bench: deps
	PYTHONPATH=test $(PY) test/bench/bench.py $(ARGS)
