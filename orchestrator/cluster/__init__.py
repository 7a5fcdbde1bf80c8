"""Sweeps on a Ray cluster: submission through Ray's job API, the cluster commands of the CLI,
and the one definition of each service (Ray head, Ray worker, MLflow server) that
docker-compose.yml, Kubernetes and the tests start."""
