# The two commands of the README: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/gdmix demo

# Horovod is part of the tests (DeText's 2-rank run must not be skipped): built once, then cached.
test: setup horovod
	GDMIX_REQUIRE_HOROVOD=1 $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info demo-output

# Image names come from gdmix/images.py: $$GDMIX_IMAGE_REGISTRY/gdmix-<role>:$$GDMIX_IMAGE_TAG (default
# localhost/gdmix-<role>:<version>). REGISTRY=... TAG=... set those two for `make images`, `make push`
# and `make compile`, so the images built, the images pushed and the images the compiled pipelines
# pull have the same names: make images push compile REGISTRY=ghcr.io/acme/gdmix TAG=0.1.0
REGISTRY ?=
TAG ?=
IMAGE_ENV = $(if $(REGISTRY),GDMIX_IMAGE_REGISTRY=$(REGISTRY)) $(if $(TAG),GDMIX_IMAGE_TAG=$(TAG))

# Container images (docker/build-images.sh; IMAGES="launcher trainer" make images for a subset).
# Needs a Docker daemon in DOCKER_HOST: eval "$$(docker/start-dockerd.sh)".
.PHONY: images push
images: setup
	$(IMAGE_ENV) PYTHON=$(abspath $(BIN))/python docker/build-images.sh

# Tag (when built under the default names) and push the images to REGISTRY (docker/push-images.sh).
push: setup
	$(IMAGE_ENV) PYTHON=$(abspath $(BIN))/python docker/push-images.sh

# A local kind cluster with KFP, the training/MPI/Spark operators and the gdmix images
# (manifests/kind/kind-up.sh), then one pipeline run on it (CONFIG=... to choose the config).
.PHONY: kind-up kind-e2e
kind-up: setup
	PYTHON=$(abspath $(BIN))/python manifests/kind/kind-up.sh

kind-e2e: setup
	GDMIX=$(abspath $(BIN))/gdmix manifests/kind/kind-e2e.sh $(CONFIG)

# The cluster rehearsal (rehearsal/README.md): the MovieLens-shaped example compiled with
# backend: kubernetes, every step in its image as the KFP driver's pod, the jobs run by a fake API
# server and fake operators as containers, the data in an S3 container. Needs a Docker daemon in
# DOCKER_HOST and the spark, trainer and launcher images (make images). Its report:
# $(REHEARSAL_DIR)/rehearsal-report.json.
REHEARSAL_DIR ?= /var/tmp/gdmix-rehearsal
.PHONY: rehearsal
rehearsal: setup
	rm -rf $(REHEARSAL_DIR)
	$(BIN)/python -m rehearsal.pipeline --workdir $(REHEARSAL_DIR)

# Regenerate the checked-in compiled YAML (components/*/component.yaml, pipelines/compiled/), with the
# image names of REGISTRY/TAG when given (see above).
.PHONY: compile
compile: setup
	$(IMAGE_ENV) $(BIN)/python -m gdmix_pipelines.compile_all

# Optional Horovod (TensorFlow + Gloo) for DeText distributed training: scripts/horovod/install.sh
# builds the wheel once into $${GDMIX_CACHE:-~/.cache/gdmix}/wheels (~5-6 min on 2 cores; later runs
# reuse it) and installs it plus its pinned run-time deps into .venv. tests/test_horovod.py uses it.
.PHONY: horovod
horovod: setup
	PYTHON=$(abspath $(BIN))/python scripts/horovod/install.sh
