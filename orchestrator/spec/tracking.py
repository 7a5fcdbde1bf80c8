"""The spec's ``tracking:`` section: the MLflow store and experiment a sweep is logged to."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from orchestrator.spec.base import StrictModel
from orchestrator.store.uri import DEFAULT_TRACKING_URI  # noqa: F401 (the spec's default)


class TrackingSpec(StrictModel):
    uri: Annotated[
        str | None,
        Field(
            description=(
                "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db). "
                "Credentials never go here: use MLFLOW_TRACKING_USERNAME/PASSWORD."
            )
        ),
    ] = None
    experiment: Annotated[
        str | None, Field(description="MLflow experiment (default: the spec's name).")
    ] = None

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).password is not None:
            raise ValueError(
                "holds a password; specs are logged and shared, so set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead"
            )
        return value
