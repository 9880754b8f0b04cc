# The tutorial's pictures and outputs, from real runs (docs/tutorial.md pastes the outputs).

.PHONY: tutorial-pictures

##@ Documentation

tutorial-pictures: venv lab-images-present ## Run docs/tutorial.md's experiments for real: timelines into docs/img/*.svg, outputs into out/tutorial/
	@scripts/tutorial_pictures.sh $(VENV)/bin/echolab COMPOSE="$(COMPOSE)" \
	  COMPOSE_PROJECT_NAME=$(COMPOSE_PROJECT_NAME) ECHOLAB_HOST_PORT=$(ECHOLAB_HOST_PORT)
