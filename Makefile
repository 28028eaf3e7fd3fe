# The front door: `make demo` and `make test` work on a fresh machine with only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/vgpu/api/v1/*.proto)

.PHONY: venv demo test test-gpu chaos lint proto proto-check bench bench-cluster bench-mig bench-replay bench-preempt bench-loss bench-jobs bench-flood bench-enforce security-check gpu-wheelhouse gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "make: installing vgpu and its dependencies (grpcio, etcd, Ray, ...) into $(VENV): once, a minute or two"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" -p no:cacheprovider -q tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The long fault-injection run (make test runs a short one): 3 daemons, a 3-member etcd, kill -9 faults.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.run --daemons 3 --seconds 120

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu -q tests

proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

# Regenerates into a scratch dir and fails if the committed code differs from the .proto files.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d); \
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) && \
	for f in $$tmp/vgpu/api/v1/*; do \
	  cmp -s $$f vgpu/api/v1/$$(basename $$f) || { echo "generated code is stale: $$(basename $$f) (run make proto)" >&2; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code matches proto/"

lint: $(STAMP) proto-check
	cd proto && ../$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/acquire.py

bench-cluster: $(STAMP)
	$(BIN)/python bench/cluster.py

# MIG placement quality: our choose next to first fit on one random create/destroy sequence (pure, ~10 s).
bench-mig: $(STAMP)
	$(BIN)/python bench/mig.py

# Preemption protocol latency against a real daemon (decision -> slices freed -> resumed), with a floor (~10 s).
bench-preempt: $(STAMP)
	$(BIN)/python bench/preempt.py

# Loss notice: vgpuctl evicts a held lease, time until on_lost runs (sync and asyncio, 20 each; p50, max) beside
# the old heartbeat-interval baseline and a GetLease floor. Needs root (vgpuctl evict is an admin command).
bench-loss: $(STAMP)
	$(BIN)/python bench/loss_latency.py

# A job on three nodes (RunJob over mutual TLS) beside starting the same command by hand.
bench-jobs: $(STAMP)
	$(BIN)/python bench/jobs.py

# Flood: 10,000 waiting acquires from 10 local users (root drops each process to its own uid); health-check
# p50/p99 during the flood beside the idle p99, daemon CPU, position messages, server cancellations (must be 0),
# cap refusals, and the queue back to 0 after the clients leave.
bench-flood: $(STAMP)
	$(BIN)/python bench/flood.py

# Compute-share accuracy, overhead at full share, memory-limit exactness (CuPy on a GPU, else NumPy).
bench-enforce: $(STAMP)
	$(BIN)/python bench/enforce.py

# Every attack of the tenancy issue tried as uid 65534 (must all be refused), and what authentication costs
# (throughput and p50/floor without and with it, interleaved). Needs root, like vgpud itself.
security-check: $(STAMP)
	$(BIN)/python bench/security_check.py

# Scheduler quality on the openb trace (FGD protocol, 10 seeds, every pod list): one JSON line per policy and trace,
# BestFit on the same samples and FGD's published figure beside ours. TRACES points at the trace folder.
TRACES ?= ../shared/traces/openb
bench-replay: $(STAMP)
	$(BIN)/python bench/replay.py --nodes $(TRACES)/openb_node_list_gpu_node.csv \
	  --pods $(wildcard $(TRACES)/openb_pod_list_*.csv) --seeds 10 --jobs 2

# The offline GPU acceptance check. On a machine with network: the cp311/cp312 wheels a CUDA host image lacks, and
# ours, into $(WHEELHOUSE) with a pinned requirements.txt (closure and size checked).
WHEELHOUSE ?= wheelhouse
gpu-wheelhouse: $(STAMP)
	$(BIN)/python tools/gpu_wheelhouse.py --dest $(WHEELHOUSE)

# On the GPU host (no network, no venv): installs the wheelhouse into a scratch dir, then proves the GPU paths;
# JSON into $(OUT) (default ./gpu-check-out). Never changes the GPU's settings.
gpu-check:
	bash tools/gpu-check.sh --python $(PYTHON) --wheelhouse $(WHEELHOUSE) $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
