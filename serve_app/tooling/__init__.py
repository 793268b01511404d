"""Tools around the service, not part of it: serve_config.yaml rendered into the KubeRay overlays.
May import: every serve_app layer and deployments/."""
